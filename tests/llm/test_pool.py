"""The pool against the LLM test server: cache, single-flight, 429s, breaker, fallback, budget."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
import redis.asyncio as aioredis

from workers.errors import ResourceClosedError
from workers.llm import LLM, Item, LLMPool, LLMSettings, UserContext
from workers.llm.breaker import BreakerState
from workers.llm.errors import (
    BudgetExceeded,
    CircuitOpen,
    DeadlineExceeded,
    LLMNotConfigured,
    RateLimited,
    UpstreamError,
)
from workers.testing.llm_server import Behaviour, LLMTestServer

pytestmark = pytest.mark.integration

CANDIDATES = [Item(f"i{n}", f"Movie {n}", f"A film about topic {n}.") for n in range(8)]
USER = UserContext(history=[Item("h1", "Seen before", "drama")], query="something calm")


async def test_roundtrip_and_cache(
    server: LLMTestServer, redis: aioredis.Redis, make_settings: Callable[..., LLMSettings]
) -> None:
    async with LLMPool(make_settings(), redis=redis) as pool:
        llm = LLM(pool)
        first = await llm.rank(USER, CANDIDATES, k=5, deadline=5)
        assert first.item_ids == ("i0", "i1", "i2", "i3", "i4") and not first.usage.cached
        assert first.usage.prompt_tokens > 0
        again = await llm.rank(USER, CANDIDATES, k=5, deadline=5)
        assert again.item_ids == first.item_ids and again.usage.cached
    assert len(server.records) == 1
    assert server.records[0].body.count(b"sk-test-secret") == 0


async def test_100_identical_concurrent_prompts_make_one_upstream_call(
    server: LLMTestServer, redis: aioredis.Redis, make_settings: Callable[..., LLMSettings]
) -> None:
    server.default = Behaviour(latency_s=0.2)
    async with LLMPool(make_settings(), redis=redis) as pool:
        llm = LLM(pool)
        results = await asyncio.gather(
            *(llm.rank(USER, CANDIDATES, k=3, deadline=10) for _ in range(100))
        )
    assert len({r.item_ids for r in results}) == 1
    assert len(server.records) == 1


async def test_single_flight_across_pools(
    server: LLMTestServer, redis: aioredis.Redis, make_settings: Callable[..., LLMSettings]
) -> None:
    """Two pools (as two processes would) share one upstream call through the Redis lock."""
    server.default = Behaviour(latency_s=0.3)
    settings = make_settings()
    async with LLMPool(settings, redis=redis) as a, LLMPool(settings, redis=redis) as b:
        results = await asyncio.gather(
            *(LLM(p).rank(USER, CANDIDATES, k=3, deadline=10) for p in (a, b, a, b))
        )
    assert len({r.item_ids for r in results}) == 1
    assert len(server.records) == 1


async def test_429_storm_honours_retry_after_with_capped_jittered_attempts(
    server: LLMTestServer, make_settings: Callable[..., LLMSettings]
) -> None:
    retry_after = 0.2
    server.default = Behaviour(kind="status", status=429, retry_after_s=retry_after)
    settings = make_settings(max_attempts=4, backoff_base_s=0.05, backoff_cap_s=0.2)
    calls = 6
    async with LLMPool(settings, rng=random.Random(7)) as pool:
        llm = LLM(pool)
        for n in range(calls):
            with pytest.raises(RateLimited):
                # distinct prompts: no cache/single-flight between calls
                await llm.rank(UserContext(query=f"q{n}"), CANDIDATES, k=3, deadline=10)
        endpoint = pool.endpoints[0]
    # attempts within the cap: max_attempts per call, nothing more reached the server
    assert len(server.records) == calls * 4
    # no retry before Retry-After: every gap between consecutive attempts of a call >= it
    arrivals = [r.at for r in server.records]
    gaps = [arrivals[i + 1] - arrivals[i] for i in range(len(arrivals) - 1) if (i + 1) % 4 != 0]
    assert len(gaps) == calls * 3
    assert min(gaps) >= retry_after
    # jitter present: the planned delays differ from one another and all exceed Retry-After
    delays = [d for _, d, reason in endpoint.retry_log if reason == "429"]
    assert len(delays) == calls * 3 and min(delays) >= retry_after
    assert len({round(d, 4) for d in delays}) > len(delays) // 2


async def test_retry_after_ms_and_retry_success(
    server: LLMTestServer, make_settings: Callable[..., LLMSettings]
) -> None:
    server.script(
        Behaviour(kind="status", status=429, retry_after_ms=150),
        Behaviour(kind="status", status=503),
    )
    async with LLMPool(make_settings(max_attempts=3)) as pool:
        result = await LLM(pool).rank(USER, CANDIDATES, k=2, deadline=10)
        assert result.usage.attempts == 3
    assert server.records[1].at - server.records[0].at >= 0.15


async def test_retry_after_beyond_deadline_refuses_at_once(
    server: LLMTestServer, make_settings: Callable[..., LLMSettings]
) -> None:
    server.default = Behaviour(kind="status", status=429, retry_after_s=30)
    async with LLMPool(make_settings(max_attempts=5)) as pool:
        llm = LLM(pool)
        with pytest.raises(RateLimited) as info:
            await llm.rank(USER, CANDIDATES, k=2, deadline=2)
        assert info.value.retriable and info.value.retry_after == pytest.approx(30, abs=1)
        # the endpoint is now blocked: the next call is refused before sending
        with pytest.raises(RateLimited):
            await llm.rank(UserContext(query="other"), CANDIDATES, k=2, deadline=2)
    assert len(server.records) == 1


async def test_breaker_opens_half_opens_and_closes(
    server: LLMTestServer, make_settings: Callable[..., LLMSettings]
) -> None:
    settings = make_settings(
        max_attempts=1, breaker_failures=3, breaker_cooldown_s=0.3, breaker_half_open_probes=1
    )
    server.default = Behaviour(kind="status", status=500)
    async with LLMPool(settings) as pool:
        llm = LLM(pool)
        breaker = pool.endpoints[0].breaker

        async def call(n: int) -> Any:
            return await llm.rank(UserContext(query=f"b{n}"), CANDIDATES, k=2, deadline=5)

        for n in range(3):
            with pytest.raises(UpstreamError):
                await call(n)
        assert breaker.state is BreakerState.OPEN
        sent = len(server.records)
        assert sent == 3
        for n in range(10):  # while open: nothing reaches the server
            with pytest.raises(CircuitOpen):
                await call(100 + n)
        assert len(server.records) == sent
        await asyncio.sleep(0.35)
        assert breaker.state is BreakerState.HALF_OPEN
        # half-open probe fails -> open again, exactly one request reached the server
        with pytest.raises(UpstreamError):
            await call(200)
        assert len(server.records) == sent + 1 and breaker.state is BreakerState.OPEN
        await asyncio.sleep(0.35)
        server.default = Behaviour()
        # concurrent calls in half-open: one probe goes through, the rest are refused
        outcomes = await asyncio.gather(*(call(300 + n) for n in range(5)), return_exceptions=True)
        assert sum(not isinstance(o, BaseException) for o in outcomes) == 1
        assert sum(isinstance(o, CircuitOpen) for o in outcomes) == 4
        assert breaker.state is BreakerState.CLOSED
        assert len(server.records) == sent + 2
        await call(400)
        assert len(server.records) == sent + 3


async def test_fallback_to_second_endpoint(
    server: LLMTestServer, make_settings: Callable[..., LLMSettings]
) -> None:
    async with LLMTestServer() as backup:
        base = make_settings(max_attempts=2)
        second = replace(base.endpoints[0], name="cheap", base_url=backup.url, model="small")
        settings = replace(base, endpoints=(base.endpoints[0], second))
        server.default = Behaviour(kind="status", status=502)
        async with LLMPool(settings) as pool:
            result = await LLM(pool).rank(USER, CANDIDATES, k=2, deadline=5)
        assert result.usage.endpoint == "cheap"
        assert len(server.records) == 2 and len(backup.records) == 1


async def test_hang_is_cut_by_the_deadline(
    server: LLMTestServer, make_settings: Callable[..., LLMSettings]
) -> None:
    server.default = Behaviour(kind="hang")
    async with LLMPool(make_settings()) as pool:
        with pytest.raises(DeadlineExceeded):
            await LLM(pool).rank(USER, CANDIDATES, k=2, deadline=0.3)


async def test_read_timeout_then_retry(
    server: LLMTestServer, make_settings: Callable[..., LLMSettings]
) -> None:
    server.script(Behaviour(kind="hang"))
    async with LLMPool(make_settings(read_timeout_s=0.2, max_attempts=2)) as pool:
        result = await LLM(pool).rank(USER, CANDIDATES, k=2, deadline=5)
    assert result.usage.attempts == 2


async def test_limiter_refuses_instead_of_waiting_past_the_deadline(
    server: LLMTestServer, redis: aioredis.Redis, make_settings: Callable[..., LLMSettings]
) -> None:
    settings = make_settings(rpm=2, window_s=30)
    async with LLMPool(settings, redis=redis) as pool:
        llm = LLM(pool)
        for n in range(2):
            await llm.rank(UserContext(query=f"l{n}"), CANDIDATES, k=2, deadline=5)
        with pytest.raises(RateLimited) as info:
            await llm.rank(UserContext(query="l3"), CANDIDATES, k=2, deadline=5)
    assert info.value.retry_after is not None and info.value.retry_after > 5
    assert len(server.records) == 2


async def test_budget_refuses_at_once(
    server: LLMTestServer, redis: aioredis.Redis, make_settings: Callable[..., LLMSettings]
) -> None:
    settings = make_settings(llm_budget_tokens_per_minute=1500, price_in_per_1k=0.01)
    async with LLMPool(settings, redis=redis) as pool:
        llm = LLM(pool)
        outcomes = []
        for n in range(5):
            try:
                outcomes.append(
                    await llm.rank(UserContext(query=f"x{n}"), CANDIDATES, k=2, deadline=5)
                )
            except BudgetExceeded as exc:
                assert exc.retriable and exc.retry_after is not None and exc.retry_after <= 60
                outcomes.append(None)
    assert outcomes[0] is not None and outcomes[-1] is None
    assert len(server.records) == sum(o is not None for o in outcomes)


async def test_not_configured_and_lifecycle(make_settings: Callable[..., LLMSettings]) -> None:
    async with LLMPool(LLMSettings()) as pool:
        with pytest.raises(LLMNotConfigured):
            await LLM(pool).rank(USER, CANDIDATES, k=2, deadline=1)
    pool = LLMPool(make_settings())
    await pool.open()
    await pool.aclose()
    await pool.aclose()  # twice is safe
    with pytest.raises(ResourceClosedError):
        await pool.open()
    with pytest.raises(ResourceClosedError):
        await LLM(pool).rank(USER, CANDIDATES, k=2, deadline=1)
