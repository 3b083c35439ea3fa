"""A running worker serves every metric that docs/operations.md documents.

The worker runs every role against the shared test Kafka and the ACL Redis
of these tests, connecting as the worker's ACL user with the password read
from a file (as a Kubernetes Secret mount provides it): it becomes ready,
processes events (state writes go through the ACL) and dead-letters a
malformed one, and its /metrics page lists each documented metric family.
"""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from contracts import CODECS, Interaction, topics
from streams.kafka import KafkaProducerResource
from tests.deploy.servers import AclRedis
from tests.streams.harness import WorkerProcess, worker_env
from workers.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DOC = Path(__file__).resolve().parents[2] / "docs" / "operations.md"


def documented_metrics() -> dict[str, str]:
    """``name -> type`` from the metrics table of docs/operations.md."""
    rows = re.findall(
        r"^\| `(recstream_[a-z_]+)` \| (counter|gauge|histogram) \|", DOC.read_text(), re.M
    )
    assert len(rows) >= 15, "the metrics table of docs/operations.md was not found"
    return dict(rows)


def _families(text: str) -> dict[str, str]:
    return {f.name: f.type for f in text_string_to_metric_families(text)}


def _sample(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


async def test_running_worker_exports_every_documented_metric(
    settings: Settings,
    kafka_topics: dict[str, str],
    acl_redis: AclRedis,
    model_dir: Path,
    tmp_path: Path,
) -> None:
    password_file = tmp_path / "redis-password"
    password_file.write_text(acl_redis.users["recstream"] + "\n")
    env = worker_env(
        settings,
        model_dir,
        RECSTREAM_REDIS_URL=acl_redis.url(),
        RECSTREAM_REDIS_USERNAME="recstream",
        RECSTREAM_REDIS_PASSWORD_FILE=str(password_file),
        RECSTREAM_REDIS_KEY_PREFIX="rs",
    )
    worker = WorkerProcess(env, ["all"], tmp_path / "worker.log").start()
    try:
        await worker.wait_ready(timeout=180)
        events = [
            Interaction(f"m{k}", f"u{k % 3}", f"i{k % 7}", "view", 1_700_000_000_000 + k)
            for k in range(20)
        ]
        async with KafkaProducerResource(settings.kafka) as producer:
            for e in events:
                await producer.send(
                    topics.INTERACTIONS, CODECS[topics.INTERACTIONS].encode(e), e.user_id.encode()
                )
            await producer.send(topics.INTERACTIONS, b"{not json", b"u0")
        deadline = time.monotonic() + 120
        while True:
            text = (await worker.get("/metrics")).text
            consumed = _sample(text, "recstream_events_in_total", topic=topics.INTERACTIONS)
            dead = _sample(text, "recstream_dead_letters_total", topic=topics.INTERACTIONS)
            if consumed >= 21 and dead >= 1:
                break
            assert worker.alive(), worker.tail()
            assert time.monotonic() < deadline, f"in={consumed} dead={dead}\n{worker.tail()}"
            await asyncio.sleep(0.5)
        exported = _families(text)
        missing = {
            name: kind
            for name, kind in documented_metrics().items()
            if exported.get(name.removesuffix("_total")) != kind
        }
        assert not missing, f"documented but not exported (or of another type): {missing}"
        assert (await worker.get("/healthz")).status_code == 200
        assert (await worker.get("/readyz")).status_code == 200
    finally:
        assert worker.stop() == 0, worker.tail()
