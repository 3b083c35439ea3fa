"""The response cache (Redis, TTL) and single-flight for identical prompts.

Keys are a SHA-256 of the model, the sampling parameters and the normalised
messages, so two prompts that differ only in whitespace share an entry.
Only answers that passed validation are stored. Single-flight works at two
levels: inside a process, identical concurrent calls await one future; across
processes, the first caller takes a short Redis lock and the others poll the
cache until the answer lands (or the lock goes, and they call themselves).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

import orjson

from workers.llm.deadline import Deadline
from workers.llm.errors import DeadlineExceeded
from workers.llm.tokens import normalise_text
from workers.resources import RedisClient

__all__ = ["ResponseCache", "SingleFlight", "cache_key"]

log = logging.getLogger(__name__)

T = TypeVar("T")
_POLL_S = 0.02


def cache_key(model: str, params: Mapping[str, Any], messages: Sequence[Mapping[str, str]]) -> str:
    payload = orjson.dumps(
        {
            "model": model,
            "params": dict(sorted(params.items())),
            "messages": [[m["role"], normalise_text(m["content"])] for m in messages],
        }
    )
    return hashlib.sha256(payload).hexdigest()


class ResponseCache:
    """Validated completions by prompt hash, in Redis with a TTL (or nowhere)."""

    def __init__(self, redis: RedisClient | None, *, prefix: str, ttl_s: int) -> None:
        self._redis = redis
        self._prefix = prefix
        self._ttl = ttl_s

    @property
    def enabled(self) -> bool:
        return self._redis is not None

    def _k(self, key: str) -> str:
        # The hash is the key's hash tag, so an entry and its lock share a Redis
        # Cluster slot (wait_for reads both in one MGET) while entries spread.
        return f"{self._prefix}:c:{{{key}}}"

    async def get_first(self, keys: Sequence[str]) -> tuple[str, bytes] | None:
        """The first key (in preference order) that has an entry, and its value."""
        if self._redis is None or not keys:
            return None
        # One GET per key in a pipeline, not one MGET: the keys are in different
        # slots, which a Redis Cluster refuses in one command.
        async with self._redis.pipeline(transaction=False) as pipe:
            for k in keys:
                pipe.get(self._k(k))
            values = await pipe.execute()
        for key, value in zip(keys, values, strict=True):
            if value is not None:
                return key, _as_bytes(value)
        return None

    async def put(self, key: str, value: bytes) -> None:
        if self._redis is not None:
            await self._redis.set(self._k(key), value, ex=self._ttl)

    async def delete(self, key: str) -> None:
        if self._redis is not None:
            await self._redis.delete(self._k(key))

    async def lock(self, key: str, ttl_s: float) -> bool:
        """Take the cross-process single-flight lock for ``key`` (True if taken)."""
        if self._redis is None:
            return True
        ok = await self._redis.set(
            f"{self._k(key)}:lock", b"1", nx=True, px=max(1, int(ttl_s * 1000))
        )
        return bool(ok)

    async def unlock(self, key: str) -> None:
        if self._redis is not None:
            await self._redis.delete(f"{self._k(key)}:lock")

    async def wait_for(self, key: str, deadline: Deadline) -> bytes | None:
        """Poll for another process's answer until it lands, its lock goes, or the deadline."""
        if self._redis is None:
            return None
        lock = f"{self._k(key)}:lock"
        while not deadline.expired:
            value, locked = await self._redis.mget([self._k(key), lock])
            if value is not None:
                return _as_bytes(value)
            if locked is None:
                return None
            await asyncio.sleep(min(_POLL_S, deadline.remaining()))
        raise DeadlineExceeded("deadline passed waiting for an identical in-flight call")


class SingleFlight:
    """In-process: concurrent calls with one key share one execution."""

    def __init__(self) -> None:
        self._inflight: dict[str, asyncio.Future[Any]] = {}

    def joinable(self, key: str) -> bool:
        return key in self._inflight

    async def run(
        self, key: str, deadline: Deadline, produce: Callable[[], Awaitable[T]]
    ) -> tuple[T, bool]:
        """``(result, shared)``: shared is True when another caller did the work."""
        existing = self._inflight.get(key)
        if existing is not None:
            try:
                async with asyncio.timeout(deadline.remaining()):
                    return await asyncio.shield(existing), True
            except TimeoutError:
                raise DeadlineExceeded("deadline passed waiting for an identical call") from None
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        # Nobody may be waiting: mark the exception retrieved so asyncio stays quiet.
        future.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._inflight[key] = future
        try:
            result = await produce()
        except BaseException as exc:
            if isinstance(exc, Exception):
                future.set_exception(exc)
            else:
                future.cancel()
            raise
        else:
            future.set_result(result)
            return result, False
        finally:
            del self._inflight[key]


def _as_bytes(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode()
