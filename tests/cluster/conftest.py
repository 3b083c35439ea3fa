"""Fixtures of the Redis Cluster tests: one private 3-master cluster per module,
emptied before each test, and settings that point the worker at it."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import pytest

from tests.cluster.servers import RedisClusterServers
from tests.streams.conftest import model_dir
from workers.settings import RedisSettings, Secret, Settings

__all__ = ["cluster_settings", "model_dir", "redis_cluster"]  # model_dir: the stream tests' model


@pytest.fixture(scope="module")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterServers]:
    servers = RedisClusterServers.start(tmp_path_factory.mktemp("redis-cluster"))
    try:
        yield servers
    finally:
        servers.stop()


@pytest.fixture
def cluster_settings(settings: Settings, redis_cluster: RedisClusterServers) -> Settings:
    """The test's settings (its own topic prefix on the shared Kafka) with Redis
    being the private cluster, emptied for the test."""
    redis_cluster.flush()
    return replace(
        settings,
        redis=RedisSettings(url=Secret(redis_cluster.url), key_prefix="rs-test", cluster=True),
    )
