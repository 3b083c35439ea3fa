"""The error tree of recstream.

Every error the system raises on purpose derives from :class:`RecstreamError`
and says whether trying again may help. The stream error handler branches on
that flag: retriable -> retry with backoff; not retriable -> dead-letter topic
with the reason.

    RecstreamError (retriable: bool)
    ├── ConfigError                 bad or missing configuration (not retriable)
    ├── ContractError               an event that breaks its contract (not retriable)
    │   └── contracts.DecodeError   raised by the codec, names the offending field
    ├── ResourceError               an I/O resource failed (retriable)
    │   ├── StateStoreError         Redis
    │   └── ModelError              ONNX model loading or inference
    ├── ResourceClosedError         use of a closed or reopened resource (not retriable)
    └── LLMError                    the LLM path (see workers.llm.errors for its subtree)

``contracts`` has no dependency on ``workers``: its ``DecodeError`` derives
from ``contracts.ContractViolation``, and ``ContractError`` here is that same
class re-exported, so both packages see one tree.
"""

from __future__ import annotations

from contracts import ContractViolation, RecstreamError

__all__ = [
    "ConfigError",
    "ContractError",
    "LLMError",
    "ModelError",
    "RecstreamError",
    "ResourceClosedError",
    "ResourceError",
    "StateStoreError",
]

# The root lives in contracts (pure, no I/O) so the codec's errors join the tree.
ContractError = ContractViolation


class ConfigError(RecstreamError):
    """The configuration is invalid; fix the environment and restart."""

    retriable = False


class ResourceError(RecstreamError):
    """An I/O resource failed in a way that may pass (network, server restart)."""

    retriable = True


class StateStoreError(ResourceError):
    """Redis refused or failed a state operation."""


class ModelError(ResourceError):
    """The ONNX model could not be loaded or failed during inference."""

    retriable = False


class ResourceClosedError(RecstreamError):
    """A resource was used after close, or opened a second time."""

    retriable = False


class LLMError(RecstreamError):
    """Base of the LLM path's errors (see workers.llm.errors)."""

    retriable = True
