"""The Python types and codecs agree with the JSON Schema files.

Examples are generated from each schema (hypothesis-jsonschema); the reference
validator (jsonschema) is the judge, and our codec must reach the same verdict
on valid examples and on mutated, mostly invalid ones.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis_jsonschema import from_schema

from contracts import CODECS, Codec, DecodeError, load_schema

SETTINGS = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TOPICS = sorted(CODECS)


def _reference(codec: Codec[Any]) -> jsonschema.Draft7Validator:
    return jsonschema.Draft7Validator(load_schema(codec.schema_name))


@pytest.mark.parametrize("topic", TOPICS)
def test_python_fields_match_schema_properties(topic: str) -> None:
    codec = CODECS[topic]
    schema = load_schema(codec.schema_name)
    jsonschema.Draft7Validator.check_schema(schema)
    fields = {f.name for f in dataclasses.fields(codec.event_type)}  # type: ignore[arg-type]
    assert fields == set(schema["properties"]) - {"v"}


@pytest.mark.parametrize("topic", TOPICS)
def test_valid_examples_decode_and_round_trip(topic: str) -> None:
    codec = CODECS[topic]
    reference = _reference(codec)

    @SETTINGS
    @given(from_schema(load_schema(codec.schema_name)))
    def check(example: dict[str, Any]) -> None:
        assert reference.is_valid(example)
        event = codec.decode(__import__("orjson").dumps(example)) if _fits(codec, example) else None
        if event is None:
            return
        again = codec.event_type.from_dict(event.to_dict())
        assert again == event
        reference.validate(event.to_dict())
        assert codec.decode(codec.encode(event)) == event

    check()


def _fits(codec: Codec[Any], example: dict[str, Any]) -> bool:
    import orjson

    return len(orjson.dumps(example)) <= codec.max_bytes


MUTATIONS = st.sampled_from(["drop", "wrong_type", "unknown_field", "null", "empty_string"])
WRONG_VALUES: list[Any] = [7, -1, 1.5, "x", "", True, None, [], {}, "a{b}", "z" * 300]


@pytest.mark.parametrize("topic", TOPICS)
def test_codec_agrees_with_reference_on_mutations(topic: str) -> None:
    codec = CODECS[topic]
    schema = load_schema(codec.schema_name)
    reference = _reference(codec)

    @SETTINGS
    @given(from_schema(schema), MUTATIONS, st.data())
    def check(example: dict[str, Any], mutation: str, data: st.DataObject) -> None:
        mutated = copy.deepcopy(example)
        key = data.draw(st.sampled_from(sorted(mutated)))
        if mutation == "drop":
            del mutated[key]
        elif mutation == "unknown_field":
            mutated["surprise_" + key] = 1
        elif mutation == "null":
            mutated[key] = None
        elif mutation == "empty_string":
            mutated[key] = ""
        else:
            mutated[key] = data.draw(st.sampled_from(WRONG_VALUES))
        expected_valid = reference.is_valid(mutated)
        try:
            codec.validate(mutated)
        except DecodeError as exc:
            assert not expected_valid, f"codec refused a valid payload: {exc}"
            assert exc.field, "a decode error must name a field"
        else:
            assert expected_valid, f"codec accepted an invalid payload: {mutated!r}"

    check()
