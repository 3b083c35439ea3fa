"""Session fixtures: the real local Kafka and Redis, clean state per test.

The test command (scripts/test) starts the infrastructure; when a developer
runs pytest directly, the ``infrastructure`` fixture starts it on first use.
Each test gets its own topic prefix (so topics never leak between tests) and
a flushed Redis database reserved for tests.
"""

from __future__ import annotations

import os
import socket
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from contracts import topics
from streams.kafka import ensure_topics
from tests.models import tiny_model
from workers.settings import KafkaSettings, RedisSettings, Secret, Settings

REPO_ROOT = Path(__file__).resolve().parent.parent
# Tests own a Redis database of their own and flush it before each test, so a
# developer's running demo (db 0) is never touched.
TEST_REDIS_URL = os.environ.get("RECSTREAM_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
__all__ = ["tiny_model"]  # registered here so all test packages share one session model

TEST_KAFKA = os.environ.get("RECSTREAM_TEST_KAFKA_BOOTSTRAP", "127.0.0.1:9092")


def _port_open(hostport: str) -> bool:
    host, _, port = hostport.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def infrastructure() -> Iterator[None]:
    """Make sure the local Kafka and Redis are up (starting them if needed)."""
    redis_hostport = TEST_REDIS_URL.split("//", 1)[1].rsplit("@", 1)[-1].split("/", 1)[0]
    if not (_port_open(TEST_KAFKA) and _port_open(redis_hostport)):
        subprocess.run(["bash", str(REPO_ROOT / "deploy/local/infra.sh"), "up"], check=True)
    yield


@pytest.fixture
def settings(infrastructure: None) -> Settings:
    """Settings for one test: a unique topic prefix and the test Redis DB."""
    base = Settings.from_mapping({})
    return replace(
        base,
        kafka=KafkaSettings(
            bootstrap_servers=TEST_KAFKA, topic_prefix=f"t{uuid.uuid4().hex[:10]}-"
        ),
        redis=RedisSettings(url=Secret(TEST_REDIS_URL), key_prefix="rs-test"),
    )


@pytest.fixture
async def redis_client(settings: Settings) -> AsyncIterator[aioredis.Redis]:
    """A client of the test Redis DB, flushed before the test."""
    client = aioredis.from_url(settings.redis.url.reveal())
    await client.flushdb()
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
async def kafka_topics(settings: Settings) -> dict[str, str]:
    """All contract topics created under the test's prefix; contract name -> full name."""
    await ensure_topics(settings.kafka, topics.ALL_TOPICS, partitions=3)
    return {name: settings.kafka.topic(name) for name in topics.ALL_TOPICS}
