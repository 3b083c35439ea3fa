"""Configuration of the LLM client pools (built by :mod:`workers.settings`).

Endpoints are tried in order: the first is the primary, the rest are
fallbacks. Two ways to configure them from the environment:

* one endpoint: ``RECSTREAM_LLM_BASE_URL``, ``RECSTREAM_LLM_MODEL``,
  ``RECSTREAM_LLM_API_KEY`` and optionally ``RECSTREAM_LLM_RPM``/``_TPM``/...
* several: ``RECSTREAM_LLM_ENDPOINTS`` as a JSON list of objects whose keys
  are :class:`EndpointSettings` fields, e.g.::

      [{"name": "primary", "base_url": "https://api.example/v1", "model": "big",
        "api_key_env": "PRIMARY_KEY", "rpm": 500, "tpm": 200000},
       {"name": "cheap", "base_url": "http://vllm:8000/v1", "model": "small"}]

  ``api_key_env`` names another variable holding the key, so the JSON itself
  carries no secret (``api_key`` is accepted too, for local use).

Pool-wide knobs (budgets, cache, safety) are ``RECSTREAM_LLM_*`` variables;
see docs/llm.md for the full table.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import orjson

from workers.env import PREFIX, Secret, env_bool, env_float, env_int, env_secret, env_str
from workers.errors import ConfigError

__all__ = ["EndpointSettings", "LLMSettings"]


@dataclass(frozen=True)
class EndpointSettings:
    """One OpenAI-compatible chat-completions endpoint and its limits."""

    name: str = "default"
    # Base URL up to and including the version, e.g. "https://api.openai.com/v1".
    base_url: str = ""
    model: str = "test-model"
    api_key: Secret = field(default_factory=lambda: Secret(""))
    # Provider limits over ``window_s`` (60 s = the providers' per-minute limits;
    # tests shorten the window). 0 disables a limit.
    rpm: int = 60
    tpm: int = 100_000
    window_s: float = 60.0
    # Requests reach the provider a little after we admit them; counting our
    # window this much longer keeps jitter in transit from crossing its window.
    window_margin_s: float = 0.5
    concurrency: int = 64
    connect_timeout_s: float = 3.0
    read_timeout_s: float = 30.0
    # Attempts per call on this endpoint (1 = no retry), then the next endpoint.
    max_attempts: int = 3
    backoff_base_s: float = 0.25
    backoff_cap_s: float = 8.0
    breaker_failures: int = 5
    breaker_cooldown_s: float = 30.0
    breaker_half_open_probes: int = 1
    # USD per 1000 tokens, for the cost budget and the cost metric.
    price_in_per_1k: float = 0.0
    price_out_per_1k: float = 0.0
    # A response body larger than this is refused while being read.
    max_response_bytes: int = 256 * 1024

    def __post_init__(self) -> None:
        if not self.base_url:
            raise ConfigError(f"LLM endpoint {self.name!r}: base_url is required")
        if self.max_attempts < 1 or self.concurrency < 1:
            raise ConfigError(f"LLM endpoint {self.name!r}: max_attempts, concurrency must be >= 1")
        if self.window_s <= 0:
            raise ConfigError(f"LLM endpoint {self.name!r}: window_s must be > 0")

    @classmethod
    def from_json_object(cls, raw: Mapping[str, Any], env: Mapping[str, str]) -> EndpointSettings:
        known = {f.name: f for f in fields(cls)}
        values: dict[str, Any] = {}
        for key, value in raw.items():
            if key == "api_key_env":
                values["api_key"] = Secret(env.get(str(value), ""))
            elif key == "api_key":
                values["api_key"] = Secret(str(value))
            elif key in known:
                values[key] = value
            else:
                raise ConfigError(f"{PREFIX}LLM_ENDPOINTS: unknown endpoint field {key!r}")
        try:
            return cls(**values)
        except TypeError as exc:
            raise ConfigError(f"{PREFIX}LLM_ENDPOINTS: {exc}") from None


@dataclass(frozen=True)
class LLMSettings:
    """LLM endpoints, budgets, cache and safety switches."""

    # Empty means "no LLM configured": every LLM path falls back at once.
    endpoints: tuple[EndpointSettings, ...] = ()
    # Budgets shared by all endpoints; 0 = unlimited.
    budget_tokens_per_minute: int = 0
    budget_tokens_per_hour: int = 0
    budget_cost_per_minute: float = 0.0
    budget_cost_per_hour: float = 0.0
    cache_enabled: bool = True
    # One day: catalog text and prompts change slowly; explanations stay fresh enough.
    cache_ttl_s: int = 86_400
    # Key prefix for limits, budgets and the cache inside the shared Redis.
    key_prefix: str = "rs:llm"
    # Per-call prompt budget; prompts are compressed to fit it.
    max_prompt_tokens: int = 3_000
    max_output_tokens: int = 512
    temperature: float = 0.0
    # A canary token placed in every system prompt; output containing it is refused.
    canary: Secret = field(default_factory=lambda: Secret(""))
    # Deployment-specific text prepended to every system prompt (never user text).
    system_preamble: str = ""
    # Batching of small tasks (feature extraction, intent) into one call.
    batch_max_items: int = 8
    batch_max_wait_ms: int = 20
    # Listwise reranking: shuffled permutations aggregated to cancel position bias.
    rerank_permutations: int = 3

    @property
    def base_url(self) -> str:
        """The primary endpoint's URL, or "" when no LLM is configured."""
        return self.endpoints[0].base_url if self.endpoints else ""

    @classmethod
    def from_mapping(cls, env: Mapping[str, str]) -> LLMSettings:
        return cls(
            endpoints=_endpoints_from_env(env),
            budget_tokens_per_minute=env_int(env, "LLM_BUDGET_TOKENS_PER_MINUTE", 0, minimum=0),
            budget_tokens_per_hour=env_int(env, "LLM_BUDGET_TOKENS_PER_HOUR", 0, minimum=0),
            budget_cost_per_minute=env_float(env, "LLM_BUDGET_COST_PER_MINUTE", 0.0),
            budget_cost_per_hour=env_float(env, "LLM_BUDGET_COST_PER_HOUR", 0.0),
            cache_enabled=env_bool(env, "LLM_CACHE", cls.cache_enabled),
            cache_ttl_s=env_int(env, "LLM_CACHE_TTL_S", cls.cache_ttl_s, minimum=1),
            key_prefix=env_str(env, "LLM_KEY_PREFIX", cls.key_prefix),
            max_prompt_tokens=env_int(
                env, "LLM_MAX_PROMPT_TOKENS", cls.max_prompt_tokens, minimum=64
            ),
            max_output_tokens=env_int(
                env, "LLM_MAX_OUTPUT_TOKENS", cls.max_output_tokens, minimum=16
            ),
            temperature=env_float(env, "LLM_TEMPERATURE", cls.temperature),
            canary=Secret(env_str(env, "LLM_CANARY", "")),
            system_preamble=env_str(env, "LLM_SYSTEM_PREAMBLE", ""),
            batch_max_items=env_int(env, "LLM_BATCH_MAX_ITEMS", cls.batch_max_items, minimum=1),
            batch_max_wait_ms=env_int(
                env, "LLM_BATCH_MAX_WAIT_MS", cls.batch_max_wait_ms, minimum=0
            ),
            rerank_permutations=env_int(
                env, "LLM_RERANK_PERMUTATIONS", cls.rerank_permutations, minimum=1
            ),
        )


def _endpoints_from_env(env: Mapping[str, str]) -> tuple[EndpointSettings, ...]:
    raw = env_str(env, "LLM_ENDPOINTS", "")
    if raw:
        try:
            parsed = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise ConfigError(f"{PREFIX}LLM_ENDPOINTS must be a JSON list of objects") from None
        if not isinstance(parsed, list) or not all(isinstance(e, dict) for e in parsed):
            raise ConfigError(f"{PREFIX}LLM_ENDPOINTS must be a JSON list of objects")
        endpoints = tuple(EndpointSettings.from_json_object(e, env) for e in parsed)
        names = [e.name for e in endpoints]
        if len(set(names)) != len(names):
            raise ConfigError(f"{PREFIX}LLM_ENDPOINTS: endpoint names must be unique")
        return endpoints
    base_url = env_str(env, "LLM_BASE_URL", "")
    if not base_url:
        return ()
    d = EndpointSettings
    return (
        EndpointSettings(
            base_url=base_url,
            model=env_str(env, "LLM_MODEL", d.model),
            api_key=env_secret(env, "LLM_API_KEY"),
            rpm=env_int(env, "LLM_RPM", d.rpm, minimum=0),
            tpm=env_int(env, "LLM_TPM", d.tpm, minimum=0),
            concurrency=env_int(env, "LLM_CONCURRENCY", d.concurrency, minimum=1),
            connect_timeout_s=env_float(env, "LLM_CONNECT_TIMEOUT_S", d.connect_timeout_s),
            read_timeout_s=env_float(env, "LLM_READ_TIMEOUT_S", d.read_timeout_s),
            max_attempts=env_int(env, "LLM_MAX_ATTEMPTS", d.max_attempts, minimum=1),
            price_in_per_1k=env_float(env, "LLM_PRICE_IN_PER_1K", d.price_in_per_1k),
            price_out_per_1k=env_float(env, "LLM_PRICE_OUT_PER_1K", d.price_out_per_1k),
        ),
    )
