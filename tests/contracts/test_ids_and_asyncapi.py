"""Deterministic ids, and the AsyncAPI document in step with the schemas and topics."""

from __future__ import annotations

import importlib.resources
from pathlib import Path

import yaml

from contracts import CODECS, derive_id, topics


def test_derive_id_is_deterministic_and_separates_parts() -> None:
    a = derive_id("rec", "request", "r-1")
    assert a == derive_id("rec", "request", "r-1")
    assert len(a) == 32 and all(c in "0123456789abcdef" for c in a)
    assert derive_id("rec", "ab", "c") != derive_id("rec", "a", "bc")
    assert derive_id("rec", "request", "r-1") != derive_id("expl", "request", "r-1")


def test_asyncapi_describes_every_topic_and_schema() -> None:
    root = importlib.resources.files("contracts")
    doc = yaml.safe_load((root / "asyncapi.yaml").read_text())
    assert doc["asyncapi"].startswith("3.")
    addresses = {c["address"] for c in doc["channels"].values()}
    assert addresses == set(topics.ALL_TOPICS)
    refs = {m["payload"]["$ref"] for m in doc["components"]["messages"].values()}
    expected = {f"./schemas/{CODECS[t].schema_name}.v1.json" for t in topics.ALL_TOPICS}
    assert refs == expected
    for ref in refs:
        assert Path(str(root / ref)).is_file(), ref
    actions = {
        op["channel"]["$ref"].split("/")[-1]: op["action"] for op in doc["operations"].values()
    }
    for name in topics.INPUT_TOPICS:
        assert actions[name.replace("-", "_")] == "receive"
    for name in topics.OUTPUT_TOPICS:
        assert actions[name.replace("-", "_")] == "send"
