"""Reading typed values from an environment mapping: the leaf every settings section uses.

Kept apart from :mod:`workers.settings` so that section modules
(``workers.llm.settings``, ``workers.model.settings``) import these helpers
without importing the module that assembles them (no import cycle).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Final

from workers.errors import ConfigError

__all__ = [
    "PREFIX",
    "REPO_ROOT",
    "Secret",
    "env_bool",
    "env_float",
    "env_int",
    "env_secret",
    "env_str",
]

PREFIX: Final = "RECSTREAM_"
REPO_ROOT: Final = Path(__file__).resolve().parent.parent


class Secret:
    """A string that prints as ``'***'``; call :meth:`reveal` where it is used."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __repr__(self) -> str:
        return "Secret('***')" if self._value else "Secret('')"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


def env_str(env: Mapping[str, str], name: str, default: str) -> str:
    return env.get(PREFIX + name, default)


def env_int(env: Mapping[str, str], name: str, default: int, *, minimum: int | None = None) -> int:
    raw = env.get(PREFIX + name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{PREFIX}{name} must be an integer, got {raw!r}") from None
    if minimum is not None and value < minimum:
        raise ConfigError(f"{PREFIX}{name} must be >= {minimum}, got {value}")
    return value


def env_float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(PREFIX + name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise ConfigError(f"{PREFIX}{name} must be a number, got {raw!r}") from None


def env_bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(PREFIX + name)
    if raw is None or raw == "":
        return default
    lowered = raw.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ConfigError(f"{PREFIX}{name} must be a boolean (true/false), got {raw!r}")


def env_secret(env: Mapping[str, str], name: str, default: str = "") -> Secret:
    """A secret from ``RECSTREAM_<name>_FILE`` (a mounted Kubernetes Secret; one
    trailing newline dropped) when given, else from ``RECSTREAM_<name>``."""
    path = env.get(f"{PREFIX}{name}_FILE", "")
    if path:
        try:
            value = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"{PREFIX}{name}_FILE: cannot read {path}: {exc}") from None
        return Secret(value.removesuffix("\n"))
    return Secret(env.get(PREFIX + name, default))
