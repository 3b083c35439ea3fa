"""The roles registry: one list that the Kafka edge, the CLI and deploy/ all read."""

from __future__ import annotations

import pytest

from contracts import topics
from workers.errors import ConfigError
from workers.roles import ALL, ROLES, consumer_group, resolve
from workers.settings import StreamSettings


def test_every_role_consumes_a_contract_topic_and_llm_roles_are_apart() -> None:
    assert set(ROLES) == {"interactions", "catalog", "requests", "llm", "chat", "explain", "enrich"}
    assert all(r.consumes in topics.ALL_TOPICS for r in ROLES.values())
    assert {r.name for r in ROLES.values() if r.awaits_llm} == {"llm", "chat", "explain", "enrich"}
    assert not ROLES["interactions"].awaits_llm and not ROLES["requests"].awaits_llm


def test_each_topic_has_exactly_one_dead_letter_owner() -> None:
    owners: dict[str, list[str]] = {}
    for r in ROLES.values():
        if r.dead_letters:
            owners.setdefault(r.consumes, []).append(r.name)
    assert all(len(names) == 1 for names in owners.values()), owners
    assert set(owners) == {r.consumes for r in ROLES.values()}


def test_consumer_groups_follow_the_roles_not_their_count() -> None:
    assert consumer_group("rs", resolve(["requests"])) == "rs-requests"
    assert consumer_group("rs", resolve(["chat", "llm"])) == "rs-chat+llm"
    # Four or five roles are not "all" (the old naming broke with a fifth role).
    four = resolve(["interactions", "catalog", "requests", "chat"])
    assert consumer_group("rs", four) == "rs-catalog+chat+interactions+requests"
    assert consumer_group("rs", resolve([ALL])) == "rs-all"
    assert consumer_group("rs", resolve(list(ROLES))) == "rs-all"


def test_unknown_roles_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown roles"):
        resolve(["reccomend"])


def test_batch_edge_roles_default_to_interactions_and_refuse_llm_roles() -> None:
    assert StreamSettings.from_mapping({}).batch_edge_roles == {"interactions"}
    none = StreamSettings.from_mapping({"RECSTREAM_BATCH_EDGE_ROLES": ""})
    assert none.batch_edge_roles == frozenset()
    two = StreamSettings.from_mapping({"RECSTREAM_BATCH_EDGE_ROLES": "catalog, requests"})
    assert two.batch_edge_roles == {"catalog", "requests"}
    with pytest.raises(ConfigError, match="chat"):
        StreamSettings.from_mapping({"RECSTREAM_BATCH_EDGE_ROLES": "interactions,chat"})
