"""The batch edge (streams.edge) on its own: a worker running only the interactions
role consumes with aiokafka batch by batch, in the role's own consumer group,
with faust serving the web endpoints only.

Real ``recstream worker`` process, Kafka, Redis and model. Counts and invariants:
the state equals the offline recomputation, every record was consumed once, and
on a clean stop the group's committed offsets are the topic's end offsets (each
committed after its batch's state write; nothing left behind).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import redis.asyncio as aioredis
from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from contracts import topics
from streams.kafka import client_security, topic_reader
from streams.replay import replay
from tests.streams.harness import WorkerProcess, events_consumed, worker_env
from tests.streams.test_end_to_end import _expected, _slice, _state_of, _wait_for_state
from workers.roles import ROLES, consumer_group
from workers.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SLICE = 1500


async def test_interactions_alone_on_the_batch_edge_apply_once_and_commit_everything(
    settings: Settings,
    kafka_topics: dict[str, str],
    redis_client: aioredis.Redis,
    model_dir: Path,
    tmp_path: Path,
) -> None:
    catalog, events = _slice(settings, limit=SLICE, request_every=0)
    expected = _expected(catalog, events)
    n_interactions = sum(t == topics.INTERACTIONS for t, _ in events)
    env = worker_env(settings, model_dir)
    worker = WorkerProcess(env, ["interactions"], tmp_path / "worker.log").start()
    try:
        await worker.wait_ready()  # readiness counts the edge's assignment
        await replay(settings, limit=SLICE, request_every=0, progress=False)
        await _wait_for_state(settings, expected)
        assert await _state_of(settings, sorted(expected)) == expected
        consumed = events_consumed((await worker.get("/metrics")).text, topics.INTERACTIONS)
    finally:
        assert worker.stop() == 0, worker.tail()
    assert consumed == n_interactions, "each interaction consumed once by the one process"

    group = consumer_group(env["RECSTREAM_GROUP_PREFIX"], [ROLES["interactions"]])
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.kafka.bootstrap_servers, **client_security(settings.kafka)
    )
    reader = topic_reader(settings.kafka, topics.INTERACTIONS)
    await admin.start()
    await reader.start()
    try:
        committed = await admin.list_consumer_group_offsets(group)
        groups = {g[0] for g in await admin.list_consumer_groups()}
        name = settings.kafka.topic(topics.INTERACTIONS)
        tps = [TopicPartition(name, p) for p in reader.partitions_for_topic(name) or set()]
        ends = await reader.end_offsets(tps)
    finally:
        await reader.stop()
        await admin.close()
    assert sum(ends.values()) == n_interactions
    assert {tp: meta.offset for tp, meta in committed.items()} == {
        tp: end for tp, end in ends.items() if end > 0
    }, "a clean stop leaves every consumed record committed"
    # faust ran the web endpoints only: no other group of this worker's prefix.
    assert {g for g in groups if g.startswith(env["RECSTREAM_GROUP_PREFIX"])} == {group}
    print(
        f"\nbatch edge: {consumed} interactions consumed once, state of {len(expected)} "
        f"users == offline, committed == end offsets on {len(ends)} partitions"
    )
