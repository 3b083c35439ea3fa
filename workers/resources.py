"""The lifecycle every I/O resource follows, and the Redis connection resource.

A resource is an async context manager: ``async with`` opens it, leaving the
block closes it. ``aclose()`` is safe to call twice; a closed resource cannot
be reopened (make a new one), and using it raises ResourceClosedError. Open
several together with ``contextlib.AsyncExitStack`` so they close in reverse.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from types import TracebackType
from typing import Any, Self, TypeAlias

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterPipeline, RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError
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

# How long a command waits for a free connection of the pool before it fails
# (as a retriable connection error): bursts wait, a stuck pool still surfaces.
POOL_WAIT_S = 20.0

# Set while a task holds a _WaitingCluster permit (see there).
_HOLDS_PERMIT: ContextVar[bool] = ContextVar("recstream_redis_permit", default=False)


class _WaitingCluster(RedisCluster):
    """A cluster client whose commands wait for a connection instead of failing.

    redis-py's pools fail a command at once (MaxConnectionsError) when all
    ``max_connections`` are in use, and a burst of LLM calls (each with its
    limit, budget and cache commands) easily asks for more. The standalone
    client gets redis-py's BlockingConnectionPool; the cluster client has no
    such pool, so here at most ``max_connections`` commands or pipelines are in
    flight per client (each uses at most one connection per node), and the
    rest wait for a permit. A command a pipeline sends itself (redirections)
    runs on the pipeline's permit.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._permits = asyncio.Semaphore(int(kwargs.get("max_connections", 100)))
        self._permit_wait_s = POOL_WAIT_S

    async def _with_permit(self, run: Callable[[], Awaitable[Any]]) -> Any:
        if _HOLDS_PERMIT.get():
            return await run()
        try:
            async with asyncio.timeout(self._permit_wait_s):
                await self._permits.acquire()
        except TimeoutError:
            raise RedisConnectionError("no free Redis connection in time") from None
        token = _HOLDS_PERMIT.set(True)
        try:
            return await run()
        finally:
            _HOLDS_PERMIT.reset(token)
            self._permits.release()

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        parent = super().execute_command
        return await self._with_permit(lambda: parent(*args, **kwargs))

    def pipeline(
        self, transaction: Any | None = None, shard_hint: Any | None = None
    ) -> ClusterPipeline:
        if shard_hint:
            return super().pipeline(transaction, shard_hint)  # redis-py refuses it
        return _WaitingPipeline(self, transaction)  # type: ignore[abstract]  # as redis-py does


class _WaitingPipeline(ClusterPipeline):
    async def execute(
        self, raise_on_error: bool = True, allow_redirections: bool = True
    ) -> list[Any]:
        client = self.cluster_client
        assert isinstance(client, _WaitingCluster)
        parent = super().execute
        result: list[Any] = await client._with_permit(
            lambda: parent(raise_on_error, allow_redirections)
        )
        return result


def open_redis(settings: RedisSettings, **options: Any) -> RedisClient:
    """The one place a Redis client is made (state, LLM limits and cache, probes).

    ``options`` are client keyword arguments (timeouts, pool size). The client
    connects on first use; the cluster client then discovers every node from
    the one the URL names. Either client waits (up to ``POOL_WAIT_S``) for a
    free connection when all ``max_connections`` are busy.
    """
    url = settings.url.reveal()
    if settings.cluster:
        return _WaitingCluster.from_url(url, **options)
    pool = aioredis.BlockingConnectionPool.from_url(url, timeout=POOL_WAIT_S, **options)
    return aioredis.Redis.from_pool(pool)


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
