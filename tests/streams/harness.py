"""Run real ``recstream worker`` processes against the test Kafka and Redis."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import httpx

from contracts import CODECS, RecommendationRequest, topics
from streams.kafka import KafkaProducerResource, topic_reader
from workers.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def worker_env(settings: Settings, model_dir: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "RECSTREAM_KAFKA_BOOTSTRAP": settings.kafka.bootstrap_servers,
            "RECSTREAM_TOPIC_PREFIX": settings.kafka.topic_prefix,
            "RECSTREAM_REDIS_URL": settings.redis.url.reveal(),
            "RECSTREAM_REDIS_KEY_PREFIX": settings.redis.key_prefix,
            "RECSTREAM_MODEL_DIR": str(model_dir),
            "RECSTREAM_GROUP_PREFIX": f"g-{settings.kafka.topic_prefix}",
            "RECSTREAM_HOME": str(settings.home),
            "RECSTREAM_LOG_LEVEL": "INFO",
        }
    )
    env.update(extra)
    return env


class WorkerProcess:
    """One ``recstream worker`` subprocess; logs go to a file for post-mortems."""

    def __init__(
        self, env: dict[str, str], roles: Sequence[str], log: Path, cwd: Path | None = None
    ) -> None:
        self.env = dict(env)
        self.roles = list(roles)
        self.log = log
        self.cwd = cwd
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        args = [str(REPO_ROOT / ".venv/bin/recstream"), "worker", "--web-port", str(self.port)]
        for role in self.roles:
            args += ["--role", role]
        with self.log.open("ab") as handle:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(
                args, env=self.env, stdout=handle, stderr=subprocess.STDOUT, cwd=self.cwd
            )
        return self

    async def wait_ready(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient() as client:
            while time.monotonic() < deadline:
                assert self.proc is not None
                if self.proc.poll() is not None:
                    raise AssertionError(
                        f"worker exited {self.proc.returncode}; log:\n{self.tail()}"
                    )
                try:
                    r = await client.get(f"http://127.0.0.1:{self.port}/readyz", timeout=1)
                    if r.status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.3)
        raise AssertionError(f"worker not ready in {timeout}s; log:\n{self.tail()}")

    async def get(self, path: str) -> httpx.Response:
        async with httpx.AsyncClient() as client:
            return await client.get(f"http://127.0.0.1:{self.port}{path}", timeout=3)

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except FileNotFoundError:
            return "(no log)"


async def collect(
    settings: Settings,
    topic: str,
    *,
    until: Any,
    timeout: float = 120.0,
    quiet_s: float = 0.0,
) -> list[Any]:
    """Decode every event of an output topic from the start until ``until(events)`` is
    true (and, with ``quiet_s``, no event arrived for that long)."""
    consumer = topic_reader(settings.kafka, topic)
    await consumer.start()
    events: list[Any] = []
    deadline = time.monotonic() + timeout
    last = time.monotonic()
    try:
        while not (until(events) and time.monotonic() - last >= quiet_s):
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out on {topic} with {len(events)} events")
            for records in (await consumer.getmany(timeout_ms=200)).values():
                if records:
                    last = time.monotonic()
                events += [CODECS[topic].decode(r.value) for r in records]
    finally:
        await consumer.stop()
    return events


async def send_requests(settings: Settings, requests: Iterable[RecommendationRequest]) -> None:
    """Produce recommendation requests as a client would: keyed by user, acked."""
    codec = CODECS[topics.REQUESTS]
    async with KafkaProducerResource(settings.kafka) as producer:
        for r in requests:
            await producer.send(topics.REQUESTS, codec.encode(r), r.user_id.encode())


def events_consumed(metrics: str, topic: str) -> int:
    """A worker's ``recstream_events_in_total`` for one input topic, from /metrics."""
    found = re.search(
        rf'^recstream_events_in_total\{{topic="{topic}"\}} ([0-9.e+]+)$', metrics, re.M
    )
    return int(float(found.group(1))) if found else 0
