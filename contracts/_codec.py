"""Encoding and decoding of contract payloads (orjson + the JSON Schema files).

Decoding checks, in order: payload size, UTF-8 and JSON syntax, that the top
level is an object, the schema version, then the whole JSON Schema (types,
required fields, enums, lengths, unknown fields). Every failure raises one
:class:`DecodeError` naming the field; nothing else escapes ``decode``.
"""

from __future__ import annotations

import importlib.resources
import json
import re
from collections.abc import Callable
from functools import cache
from typing import Any, Final, Generic, TypeVar

import fastjsonschema
import orjson

from contracts import _events as ev
from contracts import topics
from contracts._errors import DecodeError

__all__ = [
    "CODECS",
    "Codec",
    "load_schema",
]

E = TypeVar("E", bound=ev.Event)

# Input limits are generous for real traffic yet small enough that one hostile
# event cannot blow up a worker's memory or a Redis value.
_KIB: Final = 1024
MAX_INPUT_BYTES: Final = {
    topics.INTERACTIONS: 8 * _KIB,
    topics.REQUESTS: 8 * _KIB,
    topics.CHAT: 32 * _KIB,  # 4000 chars of text, up to 4 UTF-8 bytes each, plus escapes
    topics.CATALOG: 128 * _KIB,
}
# Outputs are bounded by their schemas; this guards the broker's 1 MiB default.
MAX_OUTPUT_BYTES: Final = 512 * _KIB

_REQUIRED_RE: Final = re.compile(r"must contain \[(.*?)\] properties")
_EXTRA_RE: Final = re.compile(r"must not contain \{(.*?)\} properties")


@cache
def load_schema(name: str, version: int = 1) -> dict[str, Any]:
    """The JSON Schema of contract ``name`` at ``version``, from the package data."""
    path = importlib.resources.files("contracts") / "schemas" / f"{name}.v{version}.json"
    schema: dict[str, Any] = orjson.loads(path.read_bytes())
    return schema


def _field_of(exc: fastjsonschema.JsonSchemaValueException, data: Any) -> tuple[str, str]:
    """(dotted field path, reason) for a fastjsonschema error."""
    path = [str(p) for p in (exc.path or ["data"])][1:]  # drop the root "data"
    message = str(exc.message)
    base = ".".join(path)
    rule = exc.rule
    if rule == "required":
        missing = _REQUIRED_RE.search(message)
        names = [n.strip().strip("'\"") for n in missing.group(1).split(",")] if missing else []
        node = data
        for p in path:
            node = node[int(p)] if isinstance(node, list) else node.get(p, {})
        absent = [n for n in names if not (isinstance(node, dict) and n in node)]
        name = absent[0] if absent else (names[0] if names else "?")
        return (f"{base}.{name}" if base else name), "required field is missing"
    if rule == "additionalProperties":
        extra = _EXTRA_RE.search(message)
        name = extra.group(1).split(",")[0].strip().strip("'\"") if extra else "?"
        return (f"{base}.{name}" if base else name), "unknown field"
    reason = message.removeprefix("data").lstrip(".")
    if base and reason.startswith(base):
        reason = reason[len(base) :].lstrip()
    return (base or "$"), reason[:300]


def _count_keys(value: Any) -> int:
    # Most values are scalars: test them here rather than with a call each (this
    # ran once per value of every decoded event, a quarter of decoding's time).
    if isinstance(value, dict):
        n = len(value)
        for v in value.values():
            if isinstance(v, dict | list):
                n += _count_keys(v)
        return n
    if isinstance(value, list):
        return sum(_count_keys(v) for v in value if isinstance(v, dict | list))
    return 0


def _may_repeat_keys(payload: bytes | bytearray | memoryview, data: Any) -> bool:
    """Cheap screen: fewer keys parsed than ``":`` separators in the bytes means a key
    may have been given twice (orjson keeps the last). Strings holding ``":`` also
    trip it, rarely; the exact check below then decides."""
    separators = bytes(payload).count(b'":')
    if isinstance(data, dict) and separators <= len(data):
        # No more separators than top-level keys, so no more than keys in all: the
        # answer below would be False too, without walking the values (flat events).
        return False
    return separators > _count_keys(data)


def _refuse_repeated_keys(schema: str, payload: bytes | bytearray | memoryview) -> None:
    """Parse again, noting every object's keys; refuse a key given twice in one object
    (a payload must not say two things, and consumers disagree on which one wins)."""

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        seen: set[str] = set()
        for key, _ in items:
            if key in seen:
                raise DecodeError(schema, key, "key given twice in one JSON object")
            seen.add(key)
        return dict(items)

    json.loads(bytes(payload), object_pairs_hook=pairs)


class Codec(Generic[E]):
    """Decodes bytes into one event type and encodes it back, both validated.

    ``decode`` raises only :class:`DecodeError`. ``encode`` validates outputs
    too, so an event that breaks its own contract never reaches a topic.
    """

    def __init__(self, event_type: type[E], max_bytes: int, versions: tuple[int, ...] = (1,)):
        self.event_type = event_type
        self.schema_name = event_type.SCHEMA
        self.max_bytes = max_bytes
        self._validators: dict[int, Callable[[Any], Any]] = {
            v: fastjsonschema.compile(load_schema(self.schema_name, v)) for v in versions
        }

    def __repr__(self) -> str:
        return f"Codec({self.event_type.__name__}, max_bytes={self.max_bytes})"

    def _fail(self, field: str, reason: str) -> DecodeError:
        return DecodeError(self.schema_name, field, reason)

    def validate(self, data: Any) -> None:
        """Check a parsed payload against its versioned schema; raise DecodeError."""
        if not isinstance(data, dict):
            raise self._fail("$", f"expected a JSON object, got {type(data).__name__}")
        version = data.get("v")
        if "v" not in data:
            raise self._fail("v", "required field is missing (schema version)")
        validator = (
            self._validators.get(version)
            if isinstance(version, int) and not isinstance(version, bool)
            else None
        )
        if validator is None:
            supported = sorted(self._validators)
            raise self._fail("v", f"unsupported schema version {version!r}; supported: {supported}")
        try:
            validator(data)
        except fastjsonschema.JsonSchemaValueException as exc:
            raise self._fail(*_field_of(exc, data)) from None

    def decode(self, payload: bytes | bytearray | memoryview | None) -> E:
        """Decode and validate one payload into ``event_type``."""
        if payload is None:
            raise self._fail("$", "empty payload (null record value)")
        if not isinstance(payload, bytes | bytearray | memoryview):
            raise self._fail("$", f"payload must be bytes, got {type(payload).__name__}")
        size = len(payload)
        if size == 0:
            raise self._fail("$", "empty payload")
        if size > self.max_bytes:
            raise self._fail("$", f"payload is {size} bytes; the limit is {self.max_bytes}")
        try:
            data = orjson.loads(payload)
        except orjson.JSONDecodeError as exc:
            text = str(exc)
            if "UTF-8" in text or "surrogate" in text:
                raise self._fail("$", "payload is not valid UTF-8") from None
            raise self._fail("$", f"not valid JSON: {text[:200]}") from None
        if _may_repeat_keys(payload, data):
            _refuse_repeated_keys(self.schema_name, payload)
        self.validate(data)
        try:
            event: E = self.event_type.from_dict(data)
        except (KeyError, TypeError, ValueError) as exc:  # schema and type disagree: a bug
            raise self._fail("$", f"could not build {self.event_type.__name__}: {exc}") from None
        return event

    def encode(self, event: E) -> bytes:
        """Serialize ``event`` (validated against its schema) to JSON bytes."""
        data = event.to_dict()
        self.validate(data)
        out = orjson.dumps(data)
        if len(out) > MAX_OUTPUT_BYTES:
            raise self._fail("$", f"encoded event is {len(out)} bytes; limit {MAX_OUTPUT_BYTES}")
        return out


CODECS: Final[dict[str, Codec[Any]]] = {
    topics.INTERACTIONS: Codec(ev.Interaction, MAX_INPUT_BYTES[topics.INTERACTIONS]),
    topics.CATALOG: Codec(ev.CatalogChange, MAX_INPUT_BYTES[topics.CATALOG]),
    topics.CHAT: Codec(ev.ChatMessage, MAX_INPUT_BYTES[topics.CHAT]),
    topics.REQUESTS: Codec(ev.RecommendationRequest, MAX_INPUT_BYTES[topics.REQUESTS]),
    topics.RECOMMENDATIONS: Codec(ev.Recommendation, MAX_OUTPUT_BYTES),
    topics.EXPLANATIONS: Codec(ev.Explanation, MAX_OUTPUT_BYTES),
    topics.CHAT_REPLIES: Codec(ev.ChatReply, MAX_OUTPUT_BYTES),
    topics.DEAD_LETTERS: Codec(ev.DeadLetter, MAX_OUTPUT_BYTES),
    topics.LLM_WORK: Codec(ev.LLMWork, MAX_OUTPUT_BYTES),
}
