"""Start-up and readiness as operators meet them (issue 9, defects 2-3): a fatal
misconfiguration exits with one clear line; an unreachable dependency is waited for,
with the reason on /readyz; repeated client warnings are folded into one line."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from streams.dependencies import RepeatFilter
from tests.streams.harness import REPO_ROOT, WorkerProcess, free_port, worker_env
from workers.settings import Settings

pytestmark = pytest.mark.integration


def _run(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(REPO_ROOT / ".venv/bin/recstream"), "worker", "--role", "requests"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_a_missing_model_exits_2_with_one_line(settings: Settings, tmp_path: Path) -> None:
    proc = _run(worker_env(settings, tmp_path / "no-model"))
    assert proc.returncode == 2
    assert "no model at" in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_a_bad_environment_value_exits_2_with_one_line(settings: Settings, model_dir: Path) -> None:
    proc = _run(worker_env(settings, model_dir, RECSTREAM_BATCH_MAX="many"))
    assert proc.returncode == 2
    assert "RECSTREAM_BATCH_MAX must be an integer" in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


async def _probe(worker: WorkerProcess, path: str, timeout: float = 60) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while True:
        assert worker.alive(), worker.tail()
        try:
            return await worker.get(path)
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.3)


@pytest.mark.slow
async def test_unreachable_redis_is_waited_for_with_the_reason_on_readyz(
    settings: Settings, kafka_topics: dict[str, str], model_dir: Path, tmp_path: Path
) -> None:
    port = free_port()
    env = worker_env(settings, model_dir, RECSTREAM_REDIS_URL=f"redis://127.0.0.1:{port}/0")
    worker = WorkerProcess(env, ["requests"], tmp_path / "worker.log").start()
    server: asyncio.subprocess.Process | None = None
    try:
        ready = await _probe(worker, "/readyz")
        health = await _probe(worker, "/healthz")
        assert ready.status_code == 503 and "redis" in ready.json()["waiting_for"]
        assert health.status_code == 200 and health.json()["alive"]
        await asyncio.sleep(2)
        assert worker.alive(), "the worker must wait, not exit"
        server = await asyncio.create_subprocess_exec(
            *("redis-server", "--port", str(port), "--save", "", "--appendonly", "no"),
            stdout=asyncio.subprocess.DEVNULL,
        )
        await worker.wait_ready(timeout=90)
    finally:
        worker.stop()
        if server is not None:
            server.terminate()
            await server.wait()
    waits = worker.tail(400).count("waiting for redis")
    assert 1 <= waits <= 30, "one line per attempt, with backoff"


@pytest.mark.slow
async def test_unreachable_broker_is_waited_for_not_a_crash(
    settings: Settings, model_dir: Path, tmp_path: Path
) -> None:
    env = worker_env(settings, model_dir, RECSTREAM_KAFKA_BOOTSTRAP=f"127.0.0.1:{free_port()}")
    worker = WorkerProcess(env, ["requests"], tmp_path / "worker.log").start()
    try:
        ready = await _probe(worker, "/readyz")
        assert ready.status_code == 503 and "kafka" in ready.json()["waiting_for"]
        await asyncio.sleep(8)
        assert worker.alive(), "the worker must wait for the broker, not exit"
    finally:
        worker.stop()
    log = worker.tail(2000)
    assert "Traceback" not in log
    assert log.count("waiting for kafka") <= 12, "backoff bounds the log lines"


def test_repeated_client_warnings_fold_into_one_line_with_a_count() -> None:
    f = RepeatFilter(interval_s=0.2)
    make = lambda: logging.LogRecord(  # noqa: E731
        "aiokafka.conn", logging.ERROR, __file__, 1, "Unable connect to node %s", ("1",), None
    )
    passed = [f.filter(make()) for _ in range(500)]
    assert passed.count(True) == 1
    time.sleep(0.25)
    summary = make()
    assert f.filter(summary) and "(and 499 more like it in 0s)" in summary.getMessage()
    other = logging.LogRecord("workers.x", logging.ERROR, __file__, 1, "boom", (), None)
    assert all(f.filter(other) for _ in range(3)), "our own errors are never folded"


@pytest.mark.slow
async def test_the_worker_writes_nothing_into_its_working_directory(
    settings: Settings, kafka_topics: dict[str, str], model_dir: Path, tmp_path: Path
) -> None:
    """faust's data folder lives under RECSTREAM_HOME, not in whatever directory the
    worker was started from (issue 9, defect 6)."""
    cwd, home = tmp_path / "cwd", tmp_path / "home"
    cwd.mkdir()
    env = worker_env(settings, model_dir, RECSTREAM_HOME=str(home))
    worker = WorkerProcess(env, ["requests"], tmp_path / "worker.log", cwd=cwd).start()
    try:
        await worker.wait_ready()
    finally:
        assert worker.stop() == 0, worker.tail()
    assert list(cwd.iterdir()) == []
    assert [p.name for p in (home / "faust").iterdir()] == [
        f"g-{settings.kafka.topic_prefix}-requests"
    ]
