"""What a worker waits for, and what it tells its probes while it waits.

* Start-up: before faust starts, :func:`wait_until_reachable` waits (with
  capped exponential backoff) for Kafka (the topics exist or were created)
  and Redis (PING). Meanwhile a small HTTP server on the worker's web port
  answers ``/healthz`` 200 (the process is fine: restarting it would not help)
  and ``/readyz`` 503 with the reason, one log line per attempt.
* Running: :class:`DependencyWatch` probes the broker (metadata through the
  producer's connection) and Redis every few seconds; ``/readyz`` is 503 with
  the failing dependency while a probe fails.
* Logs: :class:`RepeatFilter` folds repeated client warnings (a broker outage
  makes aiokafka log the same line thousands of times) into one line per
  interval with a count.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from streams.kafka import ensure_topics
from workers.resources import open_redis
from workers.settings import Settings

__all__ = ["DependencyWatch", "RepeatFilter", "install_repeat_filter", "wait_until_reachable"]

logger = logging.getLogger(__name__)

# Loggers whose warnings repeat per retry of a broken connection.
_NOISY = ("aiokafka", "kafka", "faust", "mode")


class RepeatFilter(logging.Filter):
    """Pass the first of identical warnings per ``interval_s``; then one summary line."""

    def __init__(self, interval_s: float = 10.0) -> None:
        super().__init__()
        self.interval_s = interval_s
        self._first: dict[tuple[str, int, str], float] = {}
        self._suppressed: dict[tuple[str, int, str], int] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING or not record.name.startswith(_NOISY):
            return True
        key = (record.name, record.levelno, str(record.msg))
        now = time.monotonic()
        first = self._first.get(key)
        if first is not None and now - first < self.interval_s:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return False
        self._first[key] = now
        count = self._suppressed.pop(key, 0)
        if count:
            record.msg = (
                f"{record.getMessage()} (and {count} more like it in {self.interval_s:.0f}s)"
            )
            record.args = ()
        if len(self._first) > 1000:  # bound the memory a storm of distinct lines can take
            self._first.clear()
        return True


def install_repeat_filter(interval_s: float = 10.0) -> None:
    """Add one :class:`RepeatFilter` to every handler of the root logger."""
    shared = RepeatFilter(interval_s)
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RepeatFilter) for f in handler.filters):
            handler.addFilter(shared)


async def _redis_ok(settings: Settings) -> None:
    # The worker's own client factory: a cluster is probed through its cluster client
    # (which must reach a node and read the slot map), a single Redis by PING.
    client = open_redis(settings.redis, socket_connect_timeout=3)
    try:
        await asyncio.wait_for(client.ping(), 5)
    finally:
        await client.aclose()


async def _probe_all(settings: Settings) -> dict[str, str]:
    """Failing dependencies -> reason (empty when every one answered)."""
    failing: dict[str, str] = {}
    try:
        await ensure_topics(settings.kafka, timeout_s=5)
    except Exception as exc:
        failing["kafka"] = f"{type(exc).__name__}: {exc}"[:300]
    try:
        await _redis_ok(settings)
    except Exception as exc:
        failing["redis"] = f"{type(exc).__name__}: {exc}"[:300]
    return failing


async def wait_until_reachable(settings: Settings, *, max_backoff_s: float = 10.0) -> None:
    """Wait for Kafka and Redis, answering the probes meanwhile (see the module docstring)."""
    failing = await _probe_all(settings)
    if not failing:
        return
    waiting: dict[str, Any] = {"ready": False, "waiting_for": failing}

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"alive": True, "waiting_for": waiting["waiting_for"]})

    async def readyz(_: web.Request) -> web.Response:
        return web.json_response(waiting, status=503)

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, settings.stream.web_bind, settings.stream.web_port)
    try:
        await site.start()
    except OSError as exc:  # the port is taken: wait without the probe server
        logger.warning("cannot serve probes while waiting: %s", exc)
    delay, attempt = 0.5, 0
    try:
        while failing:
            attempt += 1
            logger.warning(
                "waiting for %s (attempt %d, next in %.1fs): %s",
                ", ".join(sorted(failing)),
                attempt,
                delay,
                "; ".join(f"{k}: {v}" for k, v in sorted(failing.items())),
            )
            await asyncio.sleep(delay * (0.8 + 0.4 * random.random()))
            delay = min(delay * 2, max_backoff_s)
            failing = await _probe_all(settings)
            waiting["waiting_for"] = failing
    finally:
        await runner.cleanup()
    logger.info("dependencies reachable after %d attempts", attempt + 1)


class DependencyWatch:
    """Probes the broker and Redis while running; ``failing`` names what does not answer."""

    def __init__(
        self,
        probes: dict[str, Callable[[], Any]],
        *,
        interval_s: float = 5.0,
        timeout_s: float = 5.0,
    ) -> None:
        self._probes = probes
        self._interval_s = interval_s
        self._timeout_s = timeout_s
        self.failing: dict[str, str] = {}
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            for name, probe in self._probes.items():
                try:
                    await asyncio.wait_for(probe(), self._timeout_s)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    if name not in self.failing:
                        logger.warning("%s stopped answering: %s", name, exc)
                    self.failing[name] = f"{type(exc).__name__}: {exc}"[:300]
                else:
                    if self.failing.pop(name, None) is not None:
                        logger.info("%s answers again", name)
            await asyncio.sleep(self._interval_s)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="dependency-watch")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
