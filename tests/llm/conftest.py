"""Fixtures for the LLM tests: the in-process LLM test server, Redis with a unique prefix."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import Any

import pytest
import redis.asyncio as aioredis

from workers.llm import EndpointSettings, LLMSettings
from workers.settings import Secret
from workers.testing.llm_server import LLMTestServer

TEST_REDIS_URL = os.environ.get("RECSTREAM_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


@pytest.fixture
async def server() -> AsyncIterator[LLMTestServer]:
    async with LLMTestServer() as srv:
        yield srv


@pytest.fixture
def key_prefix() -> str:
    return f"rs-test-llm:{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def redis(key_prefix: str) -> AsyncIterator[aioredis.Redis]:
    """The test Redis; every key this test wrote (under its prefix) is deleted after."""
    client = aioredis.from_url(TEST_REDIS_URL)
    try:
        yield client
    finally:
        keys = [k async for k in client.scan_iter(match=f"*{key_prefix}*", count=1000)]
        if keys:
            await client.delete(*keys)
        await client.aclose()


@pytest.fixture
def make_settings(server: LLMTestServer, key_prefix: str) -> Callable[..., LLMSettings]:
    """LLM settings with one fast test endpoint; keyword overrides go to the endpoint,
    ``llm_*`` keyword overrides to the pool settings."""

    def build(**overrides: Any) -> LLMSettings:
        pool = {k[4:]: v for k, v in overrides.items() if k.startswith("llm_")}
        ep = {k: v for k, v in overrides.items() if not k.startswith("llm_")}
        endpoint = EndpointSettings(
            name="primary",
            base_url=server.url,
            model="test-model",
            api_key=Secret("sk-test-secret"),
            rpm=0,
            tpm=0,
            backoff_base_s=0.01,
            backoff_cap_s=0.05,
            read_timeout_s=5.0,
            window_margin_s=0.0,
        )
        endpoint = replace(endpoint, **ep)
        return LLMSettings(endpoints=(endpoint,), key_prefix=key_prefix, **pool)

    return build
