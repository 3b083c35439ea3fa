"""Fixtures for the recommendation-logic tests: a Runtime on the real Redis (test DB),
the in-memory scorer and, where a test wants one, the LLM test server. No Kafka."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import replace
from typing import Any

import pytest
import redis.asyncio as aioredis

from tests.workers.catalog_data import catalog_changes, item_texts
from tests.workers.memory_scorer import MemoryScorer
from workers.llm import EndpointSettings, LLMSettings
from workers.roles import resolve
from workers.runtime import Runtime
from workers.settings import Secret, Settings
from workers.testing.llm_server import LLMTestServer

OpenRuntime = Callable[..., AbstractAsyncContextManager[Runtime]]


@pytest.fixture
async def llm_server() -> AsyncIterator[LLMTestServer]:
    async with LLMTestServer() as server:
        yield server


def llm_settings(server: LLMTestServer, **pool: Any) -> LLMSettings:
    endpoint = EndpointSettings(
        name="test-server",
        base_url=server.url,
        model="test-model",
        api_key=Secret("sk-test"),
        rpm=0,
        tpm=0,
        max_attempts=1,
        read_timeout_s=30.0,
        backoff_base_s=0.01,
        backoff_cap_s=0.02,
        window_margin_s=0.0,
    )
    return LLMSettings(
        endpoints=(endpoint,), key_prefix=f"rs-test-llm:{uuid.uuid4().hex[:8]}", **pool
    )


@pytest.fixture
def open_runtime(settings: Settings, redis_client: aioredis.Redis) -> OpenRuntime:
    """``async with open_runtime(["requests"], llm=server, **serving) as rt``: a Runtime
    over the flushed test DB with the small catalog applied and the in-memory scorer."""

    @asynccontextmanager
    async def opened(
        roles: list[str],
        *,
        llm: LLMTestServer | None = None,
        llm_pool: dict[str, Any] | None = None,
        stream: dict[str, Any] | None = None,
        **serving: Any,
    ) -> AsyncIterator[Runtime]:
        s = replace(
            settings,
            serving=replace(settings.serving, **serving),
            stream=replace(settings.stream, **(stream or {})),
        )
        if llm is not None:
            s = replace(s, llm=llm_settings(llm, **(llm_pool or {})))
        async with Runtime(s, resolve(roles), scorer=MemoryScorer(item_texts())) as rt:
            await rt.catalog_store.apply(catalog_changes())
            await rt.catalog.refresh()
            yield rt

    return opened
