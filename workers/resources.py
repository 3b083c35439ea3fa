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
from typing import Any, Self, TypeAlias

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import NoScriptError, RedisError, ResponseError

from workers.errors import ResourceClosedError, StateStoreError
from workers.settings import RedisSettings

__all__ = [
    "RedisClient",
    "RedisResource",
    "RedisScript",
    "Resource",
    "ResourceState",
    "open_redis",
    "state_store_error",
]

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


# One Redis, or a Redis Cluster (RECSTREAM_REDIS_CLUSTER): both clients take
# the same commands; the cluster one routes each by its key's hash slot and
# refuses a multi-key command or script whose keys span slots.
RedisClient: TypeAlias = aioredis.Redis | RedisCluster


def open_redis(settings: RedisSettings, **options: Any) -> RedisClient:
    """The one place a Redis client is made (state, LLM limits and cache, probes).

    ``options`` are client keyword arguments (timeouts, pool size). The client
    connects on first use; the cluster client then discovers every node from
    the one the URL names.
    """
    url = settings.url.reveal()
    if settings.cluster:
        return RedisCluster.from_url(url, **options)
    return aioredis.from_url(url, **options)


class RedisResource(Resource):
    """A pooled asyncio Redis (or Redis Cluster) client; ``client`` is usable while open."""

    def __init__(self, settings: RedisSettings) -> None:
        super().__init__()
        self._settings = settings
        self._client: RedisClient | None = None

    def __repr__(self) -> str:
        return (
            f"RedisResource(state={self._state.value}, prefix={self._settings.key_prefix!r}, "
            f"cluster={self._settings.cluster})"
        )

    @property
    def client(self) -> RedisClient:
        self._require_open()
        assert self._client is not None
        return self._client

    def key(self, *parts: Any) -> str:
        """A key under this deployment's prefix: ``key("u", "{42}", "hist")``."""
        return ":".join([self._settings.key_prefix, *map(str, parts)])

    async def _open(self) -> None:
        client = open_redis(
            self._settings,
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
    and reloads it only when the server answers NOSCRIPT (after a restart, or
    on a cluster node that was promoted or added since).

    Every call's keys must hash to one slot (tag them ``{...}``), and the
    script must touch no key it is not given: on a Redis Cluster the client
    refuses a call whose keys span slots (``tests/cluster`` checks both).
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
                        # Not pipe.evalsha: redis-py's cluster pipeline blocks that method
                        # name, while the command itself routes by its keys' slot (and
                        # SCRIPT LOAD went to every primary).
                        pipe.execute_command("EVALSHA", sha, len(keys), *keys, *args)
                    return list(await pipe.execute())
            except NoScriptError:
                if attempt == 2:
                    raise
                sha = await self._load()
        raise AssertionError("unreachable")  # pragma: no cover
