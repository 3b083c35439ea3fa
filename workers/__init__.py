"""recstream's recommendation logic and its resources (no Kafka here).

The data flow is one way: decode -> state -> policy -> candidates -> score ->
(LLM) -> encode. ``streams`` is the only package that talks to Kafka; it
hands decoded events to the role handlers that ``workers.runtime`` builds and
sends what comes back.
"""

from workers.errors import (
    ConfigError,
    ContractError,
    LLMError,
    ModelError,
    RecstreamError,
    ResourceClosedError,
    ResourceError,
    StateStoreError,
)
from workers.settings import Settings

__all__ = [
    "ConfigError",
    "ContractError",
    "LLMError",
    "ModelError",
    "RecstreamError",
    "ResourceClosedError",
    "ResourceError",
    "Settings",
    "StateStoreError",
]
