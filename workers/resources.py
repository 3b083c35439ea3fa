"""The lifecycle every I/O resource follows, and the Redis connection resource.

A resource is an async context manager: ``async with`` opens it, leaving the
block closes it. ``aclose()`` is safe to call twice; a closed resource cannot
be reopened (make a new one), and using it raises ResourceClosedError. Open
several together with ``contextlib.AsyncExitStack`` so they close in reverse.
"""

from __future__ import annotations

import enum
import logging
from types import TracebackType
from typing import Any, Self

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError, RedisError, ResponseError

from workers.errors import ResourceClosedError, StateStoreError
from workers.settings import RedisSettings

__all__ = ["RedisResource", "RedisScript", "Resource", "ResourceState", "state_store_error"]

logger = logging.getLogger(__name__)


class ResourceState(enum.Enum):
    NEW = "new"
    OPEN = "open"
    CLOSED = "closed"


class Resource:
    """Base class: subclasses implement ``_open`` and ``_close``."""

    def __init__(self) -> None:
        self._state = ResourceState.NEW

    @property
    def state(self) -> ResourceState:
        return self._state

    def _require_open(self) -> None:
        if self._state is not ResourceState.OPEN:
            raise ResourceClosedError(f"{type(self).__name__} is {self._state.value}, not open")

    async def open(self) -> Self:
        if self._state is not ResourceState.NEW:
            raise ResourceClosedError(f"{type(self).__name__} cannot be opened twice")
        await self._open()
        self._state = ResourceState.OPEN
        return self

    async def aclose(self) -> None:
        if self._state is ResourceState.CLOSED:
            return
        was_open = self._state is ResourceState.OPEN
        self._state = ResourceState.CLOSED
        if was_open:
            await self._close()

    async def __aenter__(self) -> Self:
        return await self.open()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def _open(self) -> None:
        raise NotImplementedError

    async def _close(self) -> None:
        raise NotImplementedError


class RedisResource(Resource):
    """A pooled asyncio Redis client; ``client`` is usable while open."""

    def __init__(self, settings: RedisSettings) -> None:
        super().__init__()
        self._settings = settings
        self._client: aioredis.Redis | None = None

    def __repr__(self) -> str:
        return f"RedisResource(state={self._state.value}, prefix={self._settings.key_prefix!r})"

    @property
    def client(self) -> aioredis.Redis:
        self._require_open()
        assert self._client is not None
        return self._client

    def key(self, *parts: Any) -> str:
        """A key under this deployment's prefix: ``key("u", "{42}", "hist")``."""
        return ":".join([self._settings.key_prefix, *map(str, parts)])

    async def _open(self) -> None:
        client = aioredis.from_url(
            self._settings.url.reveal(),
            max_connections=self._settings.max_connections,
            decode_responses=False,
            health_check_interval=30,
        )
        try:
            await client.ping()
        except Exception as exc:
            await client.aclose()
            raise StateStoreError(f"cannot reach Redis: {exc}") from exc
        self._client = client
        logger.debug("redis connected")

    async def _close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


# Server replies that pass with time (a busy script, a loading replica, a
# cluster resharding, memory freed); every other error reply is a bug or a
# misconfiguration that retrying cannot fix.
_TRANSIENT_REPLIES = ("BUSY", "LOADING", "TRYAGAIN", "OOM", "MASTERDOWN", "CLUSTERDOWN")


def state_store_error(what: str, exc: RedisError) -> StateStoreError:
    """A StateStoreError for ``exc``: retriable for connection trouble and the
    transient server replies, not for WRONGTYPE, script errors and the like."""
    error = StateStoreError(f"{what}: {exc}")
    if isinstance(exc, ResponseError) and not str(exc).startswith(_TRANSIENT_REPLIES):
        error.retriable = False
    return error


class RedisScript:
    """A Lua script run by SHA inside pipelines.

    redis-py's registered scripts send SCRIPT EXISTS before every pipeline that
    uses them (an extra round trip per micro-batch); this loads the script once
    and reloads it only when the server answers NOSCRIPT (after a restart).
    """

    def __init__(self, redis: RedisResource, source: str) -> None:
        self._redis = redis
        self._source = source
        self._sha: str | None = None

    async def _load(self) -> str:
        self._sha = str(await self._redis.client.script_load(self._source))
        return self._sha

    async def run_many(self, calls: list[tuple[list[str], list[str | int]]]) -> list[Any]:
        """Run the script once per (keys, args) in one non-transactional pipeline."""
        sha = self._sha or await self._load()
        for attempt in (1, 2):
            try:
                async with self._redis.client.pipeline(transaction=False) as pipe:
                    for keys, args in calls:
                        pipe.evalsha(sha, len(keys), *keys, *args)
                    return list(await pipe.execute())
            except NoScriptError:
                if attempt == 2:
                    raise
                sha = await self._load()
        raise AssertionError("unreachable")  # pragma: no cover
