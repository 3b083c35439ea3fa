"""The real local Redis through the RedisResource lifecycle."""

from __future__ import annotations

import dataclasses

import pytest
import redis.asyncio as aioredis

from workers.errors import ResourceClosedError, StateStoreError
from workers.resources import RedisResource, ResourceState
from workers.settings import RedisSettings, Secret, Settings

pytestmark = pytest.mark.integration


async def test_redis_resource_reads_and_writes(
    settings: Settings, redis_client: aioredis.Redis
) -> None:
    async with RedisResource(settings.redis) as store:
        key = store.key("u", "{42}", "hist")
        assert key == "rs-test:u:{42}:hist"
        await store.client.rpush(key, b"i1", b"i2")
        # A dedupe marker as the state script will use it: only the first SET NX wins.
        assert await store.client.set(store.key("seen", "e1"), 1, nx=True, ex=60)
        assert not await store.client.set(store.key("seen", "e1"), 1, nx=True, ex=60)
    assert await redis_client.lrange(key, 0, -1) == [b"i1", b"i2"]


async def test_redis_resource_lifecycle(settings: Settings) -> None:
    store = RedisResource(settings.redis)
    assert store.state is ResourceState.NEW
    await store.open()
    await store.aclose()
    await store.aclose()
    assert store.state is ResourceState.CLOSED
    with pytest.raises(ResourceClosedError):
        await store.open()
    with pytest.raises(ResourceClosedError):
        _ = store.client


async def test_unreachable_redis_is_a_retriable_error(settings: Settings) -> None:
    bad = dataclasses.replace(settings.redis, url=Secret("redis://127.0.0.1:1/0"))
    with pytest.raises(StateStoreError) as info:
        async with RedisResource(bad):
            pass
    assert info.value.retriable


def test_redis_url_is_secret_in_repr() -> None:
    url = "redis://app:hunter2@127.0.0.1:6379/0"
    assert "hunter2" not in repr(RedisSettings(url=Secret(url)))
