"""recstream's event contracts: pure data types and codecs, no I/O.

The JSON Schema files under ``contracts/schemas`` (one per topic and version)
and ``contracts/asyncapi.yaml`` are the language-neutral source of truth; the
types here mirror them. ``CODECS[topic]`` decodes and encodes each topic's
payloads with orjson, raising :class:`DecodeError` for anything invalid.

    >>> from contracts import CODECS, topics
    >>> event = CODECS[topics.REQUESTS].decode(
    ...     b'{"v":1,"request_id":"r1","user_id":"u1","k":10,"ts_ms":0}')
    >>> event.k
    10
"""

from contracts import topics
from contracts._codec import CODECS, MAX_INPUT_BYTES, Codec, load_schema
from contracts._errors import ContractViolation, DecodeError, RecstreamError
from contracts._events import (
    AttributeValue,
    CatalogChange,
    Cause,
    ChatMessage,
    ChatReply,
    DeadLetter,
    Event,
    Evidence,
    Explanation,
    Interaction,
    InteractionKind,
    LLMUsage,
    LLMWork,
    RankedItem,
    Recommendation,
    RecommendationRequest,
    Rung,
    Strategy,
)
from contracts._ids import derive_id

__all__ = [
    "CODECS",
    "MAX_INPUT_BYTES",
    "AttributeValue",
    "CatalogChange",
    "Cause",
    "ChatMessage",
    "ChatReply",
    "Codec",
    "ContractViolation",
    "DeadLetter",
    "DecodeError",
    "Event",
    "Evidence",
    "Explanation",
    "Interaction",
    "InteractionKind",
    "LLMUsage",
    "LLMWork",
    "RankedItem",
    "Recommendation",
    "RecommendationRequest",
    "RecstreamError",
    "Rung",
    "Strategy",
    "derive_id",
    "load_schema",
    "topics",
]
