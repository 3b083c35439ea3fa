"""Malformed payloads on every input topic give one typed DecodeError each.

Each topic gets a corpus of at least 30 bad payloads (wrong types, missing
fields, bad enums, oversize, invalid UTF-8, unknown version, not JSON...).
Every one must raise DecodeError naming the expected field; nothing else may
escape the codec.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from contracts import CODECS, MAX_INPUT_BYTES, DecodeError, topics

VALID: dict[str, dict[str, Any]] = {
    topics.INTERACTIONS: {
        "v": 1,
        "event_id": "e-1",
        "user_id": "u-1",
        "item_id": "i-1",
        "kind": "rating",
        "rating": 4.0,
        "ts_ms": 1_700_000_000_000,
        "context": {"device": "web"},
    },
    topics.CATALOG: {
        "v": 1,
        "event_id": "c-1",
        "item_id": "i-1",
        "op": "upsert",
        "title": "Heat (1995)",
        "description": "A heist film.",
        "attributes": {"genres": ["Action", "Crime"], "year": 1995},
        "ts_ms": 1_700_000_000_000,
    },
    topics.CHAT: {
        "v": 1,
        "event_id": "m-1",
        "session_id": "s-1",
        "user_id": "u-1",
        "text": "something like Heat but funnier?",
        "ts_ms": 1_700_000_000_000,
    },
    topics.REQUESTS: {
        "v": 1,
        "request_id": "r-1",
        "user_id": "u-1",
        "k": 10,
        "ts_ms": 1_700_000_000_000,
        "context": {"page": "home"},
    },
}

# Values of the wrong kind for any field, with the type each is not.
WRONG = {"string": 12345, "integer": "12", "number": "4.5", "object": [1, 2], "bool": "yes"}


def _with(base: dict[str, Any], **changes: Any) -> bytes:
    data = dict(base)
    for key, value in changes.items():
        if value is _DROP:
            data.pop(key, None)
        else:
            data[key] = value
    return orjson.dumps(data)


_DROP = object()


def corpus(topic: str) -> list[tuple[str, bytes, str]]:
    """(label, payload, expected field) for one input topic."""
    base = VALID[topic]
    good = orjson.dumps(base)
    cases: list[tuple[str, bytes, str]] = [
        ("empty", b"", "$"),
        ("not json", b"hello world", "$"),
        ("truncated json", good[:-5], "$"),
        ("trailing garbage", good + b"}", "$"),
        ("json null", b"null", "$"),
        ("json array", b"[1,2,3]", "$"),
        ("json number", b"42", "$"),
        ("json string", b'"event"', "$"),
        (
            "invalid utf-8 byte",
            good.replace(b'"u-1"', b'"u-\xff"').replace(b'"i-1"', b'"i-\xff"'),
            "$",
        ),
        ("overlong utf-8", good[:-1] + b',"x":"\xc0\xaf"}', "$"),
        ("lone surrogate escape", good[:-1] + b',"x":"\\ud800"}', "$"),
        ("NaN literal", good[:-1] + b',"x":NaN}', "$"),
        ("oversize", _with(base, pad="x" * (MAX_INPUT_BYTES[topic] + 1)), "$"),
        ("deep nesting", b"[" * 5000 + b"]" * 5000, "$"),
        ("unknown version", _with(base, v=2), "v"),
        ("version as string", _with(base, v="1"), "v"),
        ("version as bool", _with(base, v=True), "v"),
        ("version missing", _with(base, v=_DROP), "v"),
        ("version null", _with(base, v=None), "v"),
        ("unknown field", _with(base, surprise=1), "surprise"),
    ]
    schema_required = {
        topics.INTERACTIONS: ["event_id", "user_id", "item_id", "kind", "ts_ms"],
        topics.CATALOG: ["event_id", "item_id", "op", "ts_ms"],
        topics.CHAT: ["event_id", "session_id", "user_id", "text", "ts_ms"],
        topics.REQUESTS: ["request_id", "user_id", "k", "ts_ms"],
    }[topic]
    for name in schema_required:
        cases.append((f"missing {name}", _with(base, **{name: _DROP}), name))
        cases.append((f"null {name}", _with(base, **{name: None}), name))
        wrong = WRONG["integer"] if name in {"ts_ms", "k"} else WRONG["string"]
        cases.append((f"wrong type {name}", _with(base, **{name: wrong}), name))
    id_field = "request_id" if topic == topics.REQUESTS else "event_id"
    cases += [
        ("empty id", _with(base, **{id_field: ""}), id_field),
        ("id too long", _with(base, **{id_field: "x" * 129}), id_field),
        ("id with hash-tag braces", _with(base, **{id_field: "a{b}"}), id_field),
        ("id with spaces", _with(base, **{id_field: "a b"}), id_field),
        ("negative timestamp", _with(base, ts_ms=-1), "ts_ms"),
        ("float timestamp", _with(base, ts_ms=1.5), "ts_ms"),
        ("bool timestamp", _with(base, ts_ms=True), "ts_ms"),
        ("timestamp beyond 64-bit", good[:-1] + b',"ts_ms":99999999999999999999999}', "ts_ms"),
    ]
    if topic == topics.INTERACTIONS:
        cases += [
            ("bad kind", _with(base, kind="like"), "kind"),
            ("kind wrong case", _with(base, kind="VIEW"), "kind"),
            ("rating missing for rating", _with(base, rating=_DROP), "rating"),
            ("rating null for rating", _with(base, rating=None), "rating"),
            ("rating too high", _with(base, rating=11), "rating"),
            ("rating as string", _with(base, rating="5"), "rating"),
            ("nested context", _with(base, context={"a": {"b": 1}}), "context.a"),
            ("context too big", _with(base, context={f"k{i}": i for i in range(40)}), "context"),
            ("context value too long", _with(base, context={"a": "x" * 300}), "context.a"),
        ]
    elif topic == topics.CATALOG:
        cases += [
            ("bad op", _with(base, op="create"), "op"),
            ("upsert without title", _with(base, title=_DROP), "title"),
            ("empty title", _with(base, title=""), "title"),
            ("title too long", _with(base, title="t" * 513), "title"),
            ("description too long", _with(base, description="d" * 8193), "description"),
            ("attribute nested object", _with(base, attributes={"a": {"b": 1}}), "attributes.a"),
            ("attribute list of numbers", _with(base, attributes={"a": [1, 2]}), "attributes.a"),
            ("attributes not object", _with(base, attributes=["a"]), "attributes"),
        ]
    elif topic == topics.CHAT:
        cases += [
            ("empty text", _with(base, text=""), "text"),
            ("text too long", _with(base, text="t" * 4001), "text"),
            ("text as list", _with(base, text=["hi"]), "text"),
        ]
    elif topic == topics.REQUESTS:
        cases += [
            ("k zero", _with(base, k=0), "k"),
            ("k too big", _with(base, k=101), "k"),
            ("k negative", _with(base, k=-3), "k"),
            ("k float", _with(base, k=2.5), "k"),
            ("context as string", _with(base, context="home"), "context"),
        ]
    return cases


@pytest.mark.parametrize("topic", topics.INPUT_TOPICS)
def test_valid_payload_decodes(topic: str) -> None:
    event = CODECS[topic].decode(orjson.dumps(VALID[topic]))
    assert event.to_dict()["v"] == 1


@pytest.mark.parametrize("topic", topics.INPUT_TOPICS)
def test_malformed_corpus_gives_typed_errors(topic: str) -> None:
    cases = corpus(topic)
    assert len(cases) >= 30, f"{topic}: only {len(cases)} malformed cases"
    codec = CODECS[topic]
    wrong: list[str] = []
    for label, payload, field in cases:
        try:
            codec.decode(payload)
        except DecodeError as exc:
            if exc.field != field:
                wrong.append(f"{label}: field {exc.field!r} != {field!r} ({exc.reason})")
        except Exception as exc:
            wrong.append(f"{label}: raised {type(exc).__name__}: {exc}")
        else:
            wrong.append(f"{label}: accepted")
    assert not wrong, "\n".join(wrong)
    print(f"{topic}: {len(cases)} malformed payloads, all refused with DecodeError")


def test_decode_error_is_not_retriable_and_safe_to_log() -> None:
    secret = "card 4111 1111 1111 1111"
    with pytest.raises(DecodeError) as info:
        CODECS[topics.CHAT].decode(_with(VALID[topics.CHAT], text=secret, extra=secret))
    assert info.value.retriable is False
    assert secret not in str(info.value)
