"""A private Kafka + Redis for the fault tests (deploy/local/infra.sh on free ports in a
temporary RECSTREAM_HOME), so killing them never disturbs the shared test services."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from tests.models import TinyModel
from tests.streams.harness import REPO_ROOT, free_port
from workers.settings import KafkaSettings, RedisSettings, Secret, Settings

INFRA = REPO_ROOT / "deploy/local/infra.sh"


@dataclass
class PrivateInfra:
    home: Path
    kafka_port: int
    controller_port: int
    redis_port: int

    @property
    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            RECSTREAM_HOME=str(self.home),
            RECSTREAM_KAFKA_PORT=str(self.kafka_port),
            RECSTREAM_KAFKA_CONTROLLER_PORT=str(self.controller_port),
            RECSTREAM_REDIS_PORT=str(self.redis_port),
            RECSTREAM_KAFKA_HEAP="384m",
        )
        return env

    def up(self) -> float:
        """Start whatever is down; seconds it took."""
        started = time.monotonic()
        subprocess.run(
            ["bash", str(INFRA), "up"],
            env=self.env,
            check=True,
            timeout=180,
            stdout=subprocess.DEVNULL,
        )
        return time.monotonic() - started

    def down(self) -> None:
        subprocess.run(
            ["bash", str(INFRA), "down"],
            env=self.env,
            check=False,
            timeout=120,
            stdout=subprocess.DEVNULL,
        )

    def kill9(self, service: str) -> None:
        """kill -9 the broker ("kafka") or Redis ("redis")."""
        pidfile = self.home / service / f"{service}.pid"
        pid = int(pidfile.read_text())
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)
        raise AssertionError(f"{service} (pid {pid}) survived kill -9")


@pytest.fixture(scope="module")
def private_infra(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateInfra]:
    infra = PrivateInfra(
        tmp_path_factory.mktemp("fault-home"), free_port(), free_port(), free_port()
    )
    infra.up()
    try:
        yield infra
    finally:
        infra.down()


@pytest.fixture
def fault_settings(private_infra: PrivateInfra) -> Settings:
    base = Settings.from_mapping({})
    return replace(
        base,
        kafka=KafkaSettings(
            bootstrap_servers=f"127.0.0.1:{private_infra.kafka_port}",
            topic_prefix=f"f{uuid.uuid4().hex[:8]}-",
        ),
        redis=RedisSettings(
            url=Secret(f"redis://127.0.0.1:{private_infra.redis_port}/0"), key_prefix="rs-fault"
        ),
    )


@pytest.fixture(scope="session")
def model_dir(tiny_model: TinyModel) -> Path:
    """The session's tiny model (tests/models.py), exported through the real commands."""
    return tiny_model.model_dir
