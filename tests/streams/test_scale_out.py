"""Scaling a role out: two worker processes in one consumer group share the topics'
partitions, and together answer every request exactly once, through a rebalance
when one of them leaves (SIGTERM) part-way.

Real ``recstream worker`` processes (roles interactions, catalog and requests),
the shared Kafka with topics of 6 partitions, Redis, the tiny model. Counts and
invariants only: which process answered what, and when the rebalance lands,
depend on the machine's load; that every request gets one distinct answer must
not.
"""

from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from aiokafka.partitioner import DefaultPartitioner

from contracts import CODECS, Recommendation, RecommendationRequest, derive_id, topics
from streams.kafka import ensure_topics
from streams.replay import replay
from tests.streams.harness import WorkerProcess, collect, events_consumed, send_requests, worker_env
from tests.streams.test_end_to_end import _expected, _slice, _state_of, _wait_for_state
from workers.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PARTITIONS = 6
ROLES = ["interactions", "catalog", "requests"]
SLICE = 1500


async def test_two_processes_share_partitions_and_answer_every_request_once_through_a_rebalance(
    settings: Settings,
    redis_client: aioredis.Redis,
    model_dir: Path,
    tmp_path: Path,
) -> None:
    await ensure_topics(settings.kafka, topics.ALL_TOPICS, partitions=PARTITIONS)
    catalog, events = _slice(settings, limit=SLICE, request_every=0)
    expected = _expected(catalog, events)
    users = sorted(expected)
    # The slice's users, and cold users (popular lists) so that every round of
    # requests reaches every partition.
    askers = users + [f"cold-{n}" for n in range(40)]
    now = int(time.time() * 1000)

    def round_of(tag: str) -> list[RecommendationRequest]:
        return [RecommendationRequest(f"{tag}-{u}", u, 10, now) for u in askers]

    # Three rounds: both processes up; then one sent right before A leaves (some
    # of it is in A's hands or uncommitted when it stops); then one after A has
    # left, on partitions B must take over.
    first, during, after = round_of("r1"), round_of("r2"), round_of("r3")
    partitioner = DefaultPartitioner()
    reached = {
        partitioner(u.encode(), list(range(PARTITIONS)), list(range(PARTITIONS))) for u in askers
    }
    assert reached == set(range(PARTITIONS)), "each round must reach every partition"
    everything = first + during + after
    wanted = {r.request_id for r in everything}
    env = worker_env(settings, model_dir)
    a = WorkerProcess(env, ROLES, tmp_path / "a.log").start()
    b = WorkerProcess(env, ROLES, tmp_path / "b.log").start()
    try:
        await a.wait_ready(timeout=180)
        await b.wait_ready(timeout=180)  # ready = B holds partitions: the group has two members
        await replay(settings, limit=SLICE, request_every=0, progress=False)
        await _wait_for_state(settings, expected, timeout=300)
        await send_requests(settings, first)
        await collect(
            settings,
            topics.RECOMMENDATIONS,
            until=lambda rs: {r.request_id for r in first} <= {x.cause.id for x in rs},
            timeout=300,
        )
        a_consumed = events_consumed((await a.get("/metrics")).text, topics.REQUESTS)
        b_first = events_consumed((await b.get("/metrics")).text, topics.REQUESTS)
        await send_requests(settings, during)
        a_exit = a.stop(timeout=90)  # SIGTERM: A finishes its batch in hand and leaves the group
        await send_requests(settings, after)
        recs: list[Recommendation] = await collect(
            settings,
            topics.RECOMMENDATIONS,
            until=lambda rs: wanted <= {x.cause.id for x in rs if x.cause.kind == "request"},
            timeout=400,
        )
        b_consumed = events_consumed((await b.get("/metrics")).text, topics.REQUESTS)
        state = await _state_of(settings, users)
        assert b.alive(), b.tail()
    finally:
        a.stop()
        assert b.stop(timeout=90) == 0, b.tail()
    assert a_exit == 0, a.tail()
    # Both processes really shared the requests topic's partitions.
    assert a_consumed > 0 and b_first > 0, (a_consumed, b_first)
    # B took over A's partitions: it consumed at least the round sent after A left.
    assert b_consumed - b_first >= len(after)
    # Every request answered; exactly one distinct answer each (duplicates, from the
    # rebalance's redelivery, are byte-identical copies of one output id).
    copies: dict[str, set[bytes]] = defaultdict(set)
    ids: dict[str, set[str]] = defaultdict(set)
    for rec in recs:
        if rec.cause.kind == "request":
            copies[rec.cause.id].add(CODECS[topics.RECOMMENDATIONS].encode(rec))
            ids[rec.cause.id].add(rec.rec_id)
    assert set(copies) == wanted
    assert all(len(c) == 1 for c in copies.values()), "a request answered with two lists"
    assert all(ids[r] == {derive_id("rec", "request", r)} for r in wanted)
    raw = sum(rec.cause.kind == "request" for rec in recs)
    # The interactions, shared the same way, left exactly the offline state.
    assert state == expected
    print(
        f"\n{len(wanted)} requests ({len(first)} with both up, {len(during)} as A left, "
        f"{len(after)} after) over {PARTITIONS} partitions: all answered, one distinct list "
        f"each; {raw} request answers on the topic = {raw - len(wanted)} raw duplicates "
        f"(byte-identical); requests consumed: A {a_consumed}, B {b_consumed} "
        f"({b_first} before A left); state of {len(users)} users == offline"
    )
