"""The fault suite (issue 9): real workers on a private Kafka + Redis, faults injected
mid-stream. Each test prints its figures and asserts on them:

* lost: requests never answered, and state different from the offline recomputation;
* duplicates: outputs delivered more than once, and whether every copy is identical;
* recovery: seconds from the end of the fault to the next output;
* longest stall: the longest gap between consecutive outputs (Kafka timestamps).

Bounds are generous (a busy 2-core CI machine) but finite: a worker that never
recovers fails the test.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from contracts import CODECS, Recommendation, topics
from streams.kafka import KafkaProducerResource, ensure_topics, topic_reader
from streams.replay import ml100k_events, ml100k_folder, replay
from tests.faults.conftest import PrivateInfra
from tests.offline import recompute
from tests.streams.harness import WorkerProcess, worker_env
from workers.resources import RedisResource
from workers.settings import Settings
from workers.state import UserState, UserStateStore

pytestmark = [pytest.mark.fault, pytest.mark.integration, pytest.mark.slow]

LIMIT = 2400  # ratings (~120 users), a request every 10
RATE = 300.0  # events/s: the stream runs ~9 s, faults land in the middle
RECOVERY_BOUND_S = 90.0


@dataclass
class Outputs:
    recs: list[tuple[Recommendation, int]] = field(default_factory=list)

    def add(self, rec: Recommendation, ts_ms: int) -> None:
        self.recs.append((rec, ts_ms))

    def answered(self, request_ids: set[str]) -> bool:
        return request_ids <= {r.cause.id for r, _ in self.recs if r.cause.kind == "request"}

    def figures(self, fault_end_ms: int | None) -> dict[str, float]:
        by_id: dict[str, bytes] = {}
        duplicates = differing = 0
        for rec, _ in self.recs:
            raw = CODECS[topics.RECOMMENDATIONS].encode(rec)
            if rec.rec_id in by_id:
                duplicates += 1
                differing += by_id[rec.rec_id] != raw
            by_id.setdefault(rec.rec_id, raw)
        stamps = sorted(ts for _, ts in self.recs)
        stall = max((b - a for a, b in itertools.pairwise(stamps)), default=0)
        after = [ts for ts in stamps if fault_end_ms is not None and ts >= fault_end_ms]
        recovery = (after[0] - fault_end_ms) / 1000 if after and fault_end_ms else 0.0
        return {
            "outputs": len(by_id),
            "duplicates": duplicates,
            "differing": differing,
            "recovery_s": round(recovery, 2),
            "longest_stall_s": round(stall / 1000, 2),
        }


async def _read_outputs(settings: Settings, out: Outputs, stop: asyncio.Event) -> None:
    consumer = topic_reader(settings.kafka, topics.RECOMMENDATIONS)
    while not stop.is_set():
        try:
            await consumer.start()
            break
        except Exception:  # the broker may be the fault
            await asyncio.sleep(1)
    try:
        while not stop.is_set():
            try:
                batch = await consumer.getmany(timeout_ms=300)
            except Exception:
                await asyncio.sleep(0.5)
                continue
            for records in batch.values():
                for r in records:
                    out.add(CODECS[topics.RECOMMENDATIONS].decode(r.value), r.timestamp)
    finally:
        await consumer.stop()


async def _state(settings: Settings, users: list[str]) -> dict[str, UserState]:
    async with RedisResource(settings.redis) as redis:
        store = UserStateStore(redis)
        return {s.user_id: s for s in await store.load(users, history=10_000) if s.counters}


async def _run_with_fault(
    settings: Settings,
    model_dir: Path,
    tmp_path: Path,
    fault: Callable[[list[WorkerProcess]], Awaitable[None]],
    *,
    workers: int = 1,
    name: str,
) -> dict[str, float]:
    """Replay under a fault; assert nothing lost and duplicates identical; return figures."""
    await ensure_topics(settings.kafka)
    _catalog, stream = ml100k_events(ml100k_folder(settings), limit=LIMIT)
    events = list(stream)
    request_ids = {e.request_id for t, e in events if t == topics.REQUESTS}  # type: ignore[union-attr]
    expected = recompute([e for t, e in events if t == topics.INTERACTIONS])  # type: ignore[misc]
    env = worker_env(settings, model_dir, RECSTREAM_BATCH_MAX="50")
    procs = [
        WorkerProcess(env, ["all"], tmp_path / f"worker{n}.log").start() for n in range(workers)
    ]
    out, stop = Outputs(), asyncio.Event()
    reader = asyncio.create_task(_read_outputs(settings, out, stop))
    fault_end_ms: int | None = None
    try:
        for p in procs:
            await p.wait_ready()
        producer = asyncio.create_task(replay(settings, limit=LIMIT, rate=RATE, progress=False))
        await asyncio.sleep(2.5)
        await fault(procs)
        fault_end_ms = int(time.time() * 1000)
        await producer
        deadline = time.monotonic() + RECOVERY_BOUND_S + 60
        while not out.answered(request_ids):
            assert time.monotonic() < deadline, (
                f"{name}: {len(request_ids - {r.cause.id for r, _ in out.recs})} requests "
                f"never answered; log:\n{procs[-1].tail()}"
            )
            await asyncio.sleep(0.5)
        while await _state(settings, sorted(expected)) != expected:
            assert time.monotonic() < deadline, f"{name}: state never matched the offline one"
            await asyncio.sleep(0.5)
    finally:
        stop.set()
        await reader
        for p in procs:
            p.stop()
    figures = out.figures(fault_end_ms)
    figures["lost"] = 0  # every request answered and the state equals the offline one
    print(f"\n{name}: {figures}")
    assert figures["differing"] == 0, "duplicates must be identical in content"
    assert figures["recovery_s"] <= RECOVERY_BOUND_S
    return figures


async def test_worker_kill9_twice_mid_stream(
    fault_settings: Settings, model_dir: Path, tmp_path: Path
) -> None:
    async def fault(procs: list[WorkerProcess]) -> None:
        for _ in range(2):
            procs[0].kill9()
            procs[0] = WorkerProcess(procs[0].env, ["all"], procs[0].log).start()
            await procs[0].wait_ready()
            await asyncio.sleep(1.0)

    await _run_with_fault(fault_settings, model_dir, tmp_path, fault, name="worker kill -9 x2")


async def test_redis_killed_and_restarted_under_load(
    fault_settings: Settings, model_dir: Path, tmp_path: Path, private_infra: PrivateInfra
) -> None:
    async def fault(procs: list[WorkerProcess]) -> None:
        private_infra.kill9("redis")
        await asyncio.sleep(3)
        ready = await procs[0].get("/readyz")
        assert ready.status_code == 503 and "redis" in str(ready.json())
        await asyncio.to_thread(private_infra.up)

    await _run_with_fault(fault_settings, model_dir, tmp_path, fault, name="redis kill -9")


async def test_broker_killed_and_restarted_under_load(
    fault_settings: Settings, model_dir: Path, tmp_path: Path, private_infra: PrivateInfra
) -> None:
    async def fault(procs: list[WorkerProcess]) -> None:
        private_infra.kill9("kafka")
        await asyncio.sleep(5)
        ready = await procs[0].get("/readyz")
        assert ready.status_code == 503, ready.text
        await asyncio.to_thread(private_infra.up)

    await _run_with_fault(fault_settings, model_dir, tmp_path, fault, name="broker kill -9")


async def test_rebalance_churn_for_a_minute(
    fault_settings: Settings, model_dir: Path, tmp_path: Path
) -> None:
    async def fault(procs: list[WorkerProcess]) -> None:
        # A third process joins and leaves the group, again and again, for a minute.
        env, churned = procs[0].env, 0
        ends = time.monotonic() + 60
        while time.monotonic() < ends:
            extra = WorkerProcess(env, ["all"], tmp_path / "churn.log").start()
            await asyncio.sleep(6)
            extra.stop() if churned % 2 else extra.kill9()
            churned += 1
            await asyncio.sleep(3)
        print(f"\nchurn: {churned} joins and leaves")

    await _run_with_fault(
        fault_settings, model_dir, tmp_path, fault, workers=2, name="rebalance churn 60 s"
    )


async def test_poison_on_every_input_topic(
    fault_settings: Settings, model_dir: Path, tmp_path: Path
) -> None:
    injected: dict[str, int] = {}

    async def fault(procs: list[WorkerProcess]) -> None:
        poison = [
            (b"u1", b"not json"),
            (b"u1", b"{"),
            (b"u1", b'{"v":9}'),
            (b"u1", b"\xff\xfe"),
            (b"u1", b"null"),
            (None, b'{"v":1}'),
            (b"u1", b"[" * 6000 + b"]" * 6000),
        ]
        async with KafkaProducerResource(fault_settings.kafka) as producer:
            for topic in topics.INPUT_TOPICS:
                for key, value in poison:
                    await producer.send(topic, value, key)
                injected[topic] = len(poison)
        assert all(p.alive() for p in procs)

    await _run_with_fault(fault_settings, model_dir, tmp_path, fault, name="poison")
    consumer = topic_reader(fault_settings.kafka, topics.DEAD_LETTERS)
    await consumer.start()
    dead: dict[str, int] = {}
    try:
        deadline = time.monotonic() + 60
        while sum(dead.values()) < sum(injected.values()) and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                for r in records:
                    letter = CODECS[topics.DEAD_LETTERS].decode(r.value)
                    short = letter.source_topic.removeprefix(fault_settings.kafka.topic_prefix)
                    dead[short] = dead.get(short, 0) + 1
    finally:
        await consumer.stop()
    print(f"\npoison injected {injected}, dead-lettered {dead}")
    assert dead == injected
