"""The model-only system end to end: real workers, real Kafka, real Redis, real model.

A slice of MovieLens-100k is replayed through ``streams.replay``; workers are
``recstream worker`` subprocesses; outputs are read back from Kafka.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from contracts import (
    CODECS,
    CatalogChange,
    DeadLetter,
    Recommendation,
    RecommendationRequest,
    derive_id,
    topics,
)
from streams.replay import ml100k_events, ml100k_folder, replay
from tests.offline import recompute
from tests.streams.harness import WorkerProcess, collect, send_requests, worker_env
from workers.resources import RedisResource
from workers.settings import Settings
from workers.state import UserState, UserStateStore

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SLICE = 3000  # ratings; ~150 users


def _slice(settings: Settings, limit: int = SLICE, request_every: int = 10):  # type: ignore[no-untyped-def]
    catalog, stream = ml100k_events(
        ml100k_folder(settings), limit=limit, request_every=request_every
    )
    events = list(stream)
    return catalog, events


async def _state_of(settings: Settings, users: list[str]) -> dict[str, UserState]:
    async with RedisResource(settings.redis) as redis:
        store = UserStateStore(redis)
        return {s.user_id: s for s in await store.load(users, history=10_000) if s.counters}


def _expected(catalog: list[CatalogChange], events: list) -> dict[str, UserState]:  # type: ignore[type-arg]
    interactions = [e for t, e in events if t == topics.INTERACTIONS]
    return recompute(interactions)


async def _wait_for_state(
    settings: Settings, expected: dict[str, UserState], timeout: float = 120
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        got = await _state_of(settings, sorted(expected))
        if sum(s.interactions for s in got.values()) >= sum(
            s.interactions for s in expected.values()
        ):
            return
        if time.monotonic() > deadline:
            raise AssertionError("state not caught up")
        await asyncio.sleep(0.5)


def _answered(request_ids: set[str]):  # type: ignore[no-untyped-def]
    def done(recs: list[Recommendation]) -> bool:
        return request_ids <= {r.cause.id for r in recs if r.cause.kind == "request"}

    return done


async def test_every_request_answered_once_with_valid_items(
    settings: Settings,
    kafka_topics: dict[str, str],
    redis_client: aioredis.Redis,
    model_dir: Path,
    tmp_path: Path,
) -> None:
    catalog, events = _slice(settings, request_every=0)
    worker = WorkerProcess(
        worker_env(settings, model_dir), ["all"], tmp_path / "worker.log"
    ).start()
    try:
        await worker.wait_ready()
        await replay(settings, limit=SLICE, request_every=0, progress=False)
        expected = _expected(catalog, events)
        await _wait_for_state(settings, expected)
        # Requests after the interactions, so "consumed" is exactly the input history.
        users = sorted(expected)
        now = int(time.time() * 1000)
        requests = [RecommendationRequest(f"q-{u}", u, 10, now) for u in users]
        await send_requests(settings, requests)
        recs = await collect(
            settings, topics.RECOMMENDATIONS, until=_answered({r.request_id for r in requests})
        )
    finally:
        assert worker.stop() == 0, worker.tail()
    by_request = Counter(r.cause.id for r in recs if r.cause.kind == "request")
    assert all(by_request[r.request_id] == 1 for r in requests), (
        "each request answered exactly once"
    )
    catalog_ids = {c.item_id for c in catalog}
    for rec in recs:
        if rec.cause.kind != "request":
            continue
        items = [i.item_id for i in rec.items]
        assert len(items) == 10 and len(set(items)) == 10
        assert set(items) <= catalog_ids
        assert not set(items) & expected[rec.user_id].excluded, "consumed items recommended"
        assert rec.strategy in {"model", "popular"}
    strategies = Counter(r.strategy for r in recs)
    print(f"\n{len(requests)} requests answered once each; strategies {dict(strategies)}")
    assert strategies["model"] > 0


async def test_malformed_events_go_to_dead_letters_with_exact_counts(
    settings: Settings,
    kafka_topics: dict[str, str],
    redis_client: aioredis.Redis,
    model_dir: Path,
    tmp_path: Path,
) -> None:
    worker = WorkerProcess(
        worker_env(settings, model_dir), ["all"], tmp_path / "worker.log"
    ).start()
    try:
        await worker.wait_ready()
        stats = await replay(settings, limit=1500, request_every=10, malformed=0.12, progress=False)
        total_valid = stats.interactions + stats.requests
        assert stats.malformed >= 0.10 * total_valid
        dead = await collect(
            settings, topics.DEAD_LETTERS, until=lambda d: len(d) >= stats.malformed
        )
        request_ids = {
            e.request_id for t, e in _slice(settings, limit=1500)[1] if t == topics.REQUESTS
        }
        await collect(settings, topics.RECOMMENDATIONS, until=_answered(request_ids))
        await asyncio.sleep(2)  # anything extra would arrive now
        dead = await collect(
            settings, topics.DEAD_LETTERS, until=lambda d: len(d) >= stats.malformed, timeout=10
        )
        expected = _expected(*_slice(settings, limit=1500))
        await _wait_for_state(settings, expected)
        health = await worker.get("/healthz")
        assert worker.alive() and health.status_code == 200
        metrics = (await worker.get("/metrics")).text
    finally:
        assert worker.stop() == 0, worker.tail()
    assert len(dead) == stats.malformed
    topic = settings.kafka.topic(topics.INTERACTIONS)
    assert (
        f'recstream_dead_letters_total{{topic="interactions"}} {float(stats.malformed)}' in metrics
    )
    assert 'recstream_consumer_lag{partition="0",topic="' + topic + '"}' in metrics
    assert all(
        isinstance(d, DeadLetter) and d.reason and d.source_topic.endswith("interactions")
        for d in dead
    )
    assert len({d.dead_letter_id for d in dead}) == len(dead)
    assert await _state_of(settings, sorted(expected)) == expected, "valid events unaffected"
    print(
        f"\n{stats.malformed} malformed among {total_valid} valid -> {len(dead)} dead letters; "
        f"{len(request_ids)} requests answered"
    )


async def _opened_causes(settings: Settings, users: list[str]) -> set[str]:
    """Every trigger cause that opened a window (the lists the system owes), from Redis."""
    async with RedisResource(settings.redis) as redis:
        pipe = redis.client.pipeline(transaction=False)
        for user in users:
            pipe.zrange(redis.key("u", "{" + user + "}", "o"), 0, -1)
        replies = await pipe.execute()
    return {cause.decode() for reply in replies for cause in reply}


def _identical_copies(recs: list[Recommendation]) -> tuple[int, int]:
    """(outputs, duplicates) after checking every copy of an id has the same content."""
    by_id: dict[str, bytes] = {}
    duplicates = 0
    for rec in recs:
        raw = CODECS[topics.RECOMMENDATIONS].encode(rec)
        if rec.rec_id in by_id:
            duplicates += 1
            assert by_id[rec.rec_id] == raw, f"two different lists share id {rec.rec_id}"
        by_id[rec.rec_id] = raw
    return len(by_id), duplicates


async def test_triple_replay_leaves_identical_state_and_ids(
    settings: Settings,
    kafka_topics: dict[str, str],
    redis_client: aioredis.Redis,
    model_dir: Path,
    tmp_path: Path,
) -> None:
    """Three replays: the state is that of one, and the lists are exactly those the
    first pass owed (requests + trigger windows it opened), each id with one content.

    What the first pass owed is read from Redis (the causes that opened a window),
    not from a timed collection, so the check holds however slow the machine is.
    """
    catalog, events = _slice(settings, limit=2000)
    request_ids = {e.request_id for t, e in events if t == topics.REQUESTS}
    worker = WorkerProcess(
        worker_env(settings, model_dir), ["all"], tmp_path / "worker.log"
    ).start()
    try:
        await worker.wait_ready()
        await replay(settings, limit=2000, progress=False)
        expected = _expected(catalog, events)
        await _wait_for_state(settings, expected)
        once = await _state_of(settings, sorted(expected))
        opened = await _opened_causes(settings, sorted(expected))
        owed = {derive_id("rec", "request", r) for r in request_ids}
        owed |= {derive_id("rec", "interaction", c) for c in opened}
        for _ in range(2):
            await replay(settings, limit=2000, progress=False)
        await _wait_for_state(settings, expected)
        recs = await collect(
            settings,
            topics.RECOMMENDATIONS,
            until=lambda r: (
                sum(x.cause.kind == "request" for x in r) >= 3 * len(request_ids)
                and owed <= {x.rec_id for x in r}
            ),
        )
        assert await _opened_causes(settings, sorted(expected)) == opened, "a replay opened one"
    finally:
        assert worker.stop() == 0, worker.tail()
    assert once == expected
    assert await _state_of(settings, sorted(expected)) == once
    assert {r.rec_id for r in recs} == owed
    distinct, duplicates = _identical_copies(recs)
    print(
        f"\nstate after 3 replays == after 1 == offline ({len(expected)} users); "
        f"{distinct} lists owed and emitted ({len(opened)} trigger windows), "
        f"{duplicates} re-emitted copies, all identical"
    )


async def test_kill9_twice_loses_nothing(
    settings: Settings,
    kafka_topics: dict[str, str],
    redis_client: aioredis.Redis,
    model_dir: Path,
    tmp_path: Path,
) -> None:
    catalog, events = _slice(settings, limit=SLICE)
    request_ids = {e.request_id for t, e in events if t == topics.REQUESTS}
    env = worker_env(settings, model_dir, RECSTREAM_BATCH_MAX="50")
    log = tmp_path / "worker.log"
    worker = WorkerProcess(env, ["all"], log).start()
    await worker.wait_ready()
    producer = asyncio.create_task(replay(settings, limit=SLICE, rate=600, progress=False))
    kills = 0
    try:
        for _ in range(2):
            await asyncio.sleep(1.5)
            worker.kill9()
            kills += 1
            worker = WorkerProcess(env, ["all"], log).start()
            await worker.wait_ready()
        await producer
        recs = await collect(
            settings, topics.RECOMMENDATIONS, until=_answered(request_ids), timeout=180
        )
        expected = _expected(catalog, events)
        await _wait_for_state(settings, expected)
    finally:
        worker.stop()
    assert kills == 2
    assert await _state_of(settings, sorted(expected)) == expected
    ids_per_cause: dict[str, set[str]] = {}
    for r in recs:
        ids_per_cause.setdefault(r.cause.id, set()).add(r.rec_id)
    assert all(len(ids) == 1 for ids in ids_per_cause.values()), "duplicates carry identical ids"
    distinct, dupes = _identical_copies(recs)
    print(
        f"\nkill -9 x2: {len(request_ids)} requests all answered, state == offline, "
        f"{distinct} lists, {dupes} duplicate deliveries, all identical in content"
    )
