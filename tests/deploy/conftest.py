"""Fixtures of the deployment tests: servers with authentication, the stream fixtures."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.deploy.servers import AclRedis, ScramKafka
from tests.streams.conftest import model_dir

__all__ = ["acl_redis", "acl_redis_tls", "model_dir", "scram_kafka"]


@pytest.fixture(scope="session")
def acl_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AclRedis]:
    server = AclRedis.start(tmp_path_factory.mktemp("acl-redis"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def acl_redis_tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AclRedis]:
    server = AclRedis.start(tmp_path_factory.mktemp("acl-redis-tls"), tls=True)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def scram_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ScramKafka]:
    server = ScramKafka.start(Path(tmp_path_factory.mktemp("scram-kafka")))
    try:
        yield server
    finally:
        server.stop()
