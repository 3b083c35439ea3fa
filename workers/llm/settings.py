"""Configuration of the LLM client pools (see workers.settings)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from workers.settings import env_str

__all__ = ["LLMSettings"]


@dataclass(frozen=True)
class LLMSettings:
    """LLM endpoints, limits, budgets and cache (extended by the LLM issue)."""

    # Empty means "no LLM configured": every LLM path falls back at once.
    base_url: str = ""

    @classmethod
    def from_mapping(cls, env: Mapping[str, str]) -> LLMSettings:
        return cls(base_url=env_str(env, "LLM_BASE_URL", cls.base_url))
