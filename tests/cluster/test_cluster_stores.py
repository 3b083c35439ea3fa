"""The Redis stores, unchanged, on a private 3-master Redis Cluster.

User state (with its event-time debounce) and popularity, the catalog
(upserts, deletes, tombstones, enrichment, the change log the views poll) and
the LLM pool's shared rate limits, budget, response cache and cross-process
single-flight run against the cluster exactly as against one Redis; a call
whose keys spanned slots would be refused by the cluster client and fail here.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from contracts import CatalogChange, Interaction
from tests.cluster.servers import RedisClusterServers
from tests.offline import recompute
from workers import constants as c
from workers.catalog import CatalogStore, CatalogView
from workers.llm import LLM, EndpointSettings, Item, LLMPool, LLMSettings, UserContext
from workers.llm.errors import BudgetExceeded, RateLimited
from workers.resources import RedisResource, open_redis
from workers.settings import Secret, Settings
from workers.state import UserStateStore
from workers.testing.llm_server import Behaviour, LLMTestServer

pytestmark = pytest.mark.integration

KINDS = ["view", "click", "add_to_cart", "purchase", "rating", "skip"]


def _events(n: int, users: int, seed: int) -> list[Interaction]:
    rng = random.Random(seed)
    out = []
    for k in range(n):
        kind = rng.choice(KINDS)
        out.append(
            Interaction(
                f"e{k}",
                f"u{rng.randrange(users)}",
                f"i{rng.randrange(60)}",
                kind,  # type: ignore[arg-type]
                1_000_000 + k * 7_000,  # spans several hourly popularity buckets
                rating=float(rng.randint(1, 5)) if kind == "rating" else None,
            )
        )
    return out


async def test_user_state_and_popularity_on_the_cluster(
    cluster_settings: Settings, redis_cluster: RedisClusterServers
) -> None:
    events = _events(1500, users=60, seed=5)

    def triggers(e: Interaction) -> bool:
        return e.kind in {"purchase", "rating"}

    users = sorted({e.user_id for e in events})
    async with RedisResource(cluster_settings.redis) as redis:
        store = UserStateStore(redis)
        opened: set[str] = set()
        for start in range(0, len(events), 113):  # micro-batches of many users, many slots
            result = await store.apply(
                events[start : start + 113], triggers=triggers, debounce_ms=30_000
            )
            opened |= {e.event_id for e in result.triggered}
        once = {s.user_id: s for s in await store.load(users, history=c.HISTORY_MAX)}
        buckets = sorted({e.ts_ms // c.POPULARITY_BUCKET_MS for e in events})
        pop = {
            b: await redis.client.zrange(store.pop_key(b), 0, -1, withscores=True) for b in buckets
        }
        # Replays, concurrently and reshuffled: nothing applied, nothing opened, nothing counted.
        rng = random.Random(9)
        copy = list(events)
        rng.shuffle(copy)
        again = await asyncio.gather(
            *(
                store.apply(copy[i : i + 97], triggers=triggers, debounce_ms=30_000)
                for i in range(0, len(copy), 97)
            )
        )
        after = {s.user_id: s for s in await store.load(users, history=c.HISTORY_MAX)}
        pop_after = {
            b: await redis.client.zrange(store.pop_key(b), 0, -1, withscores=True) for b in buckets
        }
    assert once == recompute(events)
    assert sum(r.applied for r in again) == 0
    # A redelivered opener re-emits its list; nothing else ever opens one on replay.
    assert {e.event_id for r in again for e in r.triggered} <= opened
    assert after == once and pop_after == pop
    counted = sum(score for entries in pop.values() for _, score in entries)
    assert counted == sum(e.kind in c.HISTORY_KINDS for e in events)
    per_node = redis_cluster.keys_per_node()
    assert all(n > 0 for n in per_node), f"user state should spread over the masters: {per_node}"
    print(
        f"\n{len(events)} events of {len(users)} users on 3 masters (keys per node {per_node}): "
        f"state == offline, {len(opened)} trigger windows, replays applied 0"
    )


async def test_catalog_on_the_cluster(cluster_settings: Settings) -> None:
    ts = 900_000_000_000
    changes = [
        CatalogChange(
            f"c{n}", f"m{n}", "upsert", ts + n, title=f"Movie {n}", attributes={"genres": ["Drama"]}
        )
        for n in range(30)
    ]
    async with RedisResource(cluster_settings.redis) as redis:
        store = CatalogStore(redis)
        view = CatalogView(store)
        assert await store.apply(changes) == 30
        assert await view.refresh() == 30
        applied = await store.apply(
            [
                CatalogChange("d1", "m3", "delete", ts + 100),
                CatalogChange("d2", "never-seen", "delete", ts + 100),
                CatalogChange("late", "m3", "upsert", ts + 50, title="Old title"),  # older: ignored
                CatalogChange("edit", "m4", "upsert", ts + 101, title="Movie 4, edited"),
            ]
        )
        enriched = await store.enrich("m4", ts + 101, {"mood": ["calm"]})
        stale = await store.enrich("m5", ts + 1, {"mood": ["x"]})  # not m5's version
        assert await view.refresh() == 3  # m3, never-seen, m4 (twice: one log entry)
        seq = await store.seq()
        # Equal event times rewrite the same content (m3's delete and m4's edit are newer).
        replayed = await store.apply(changes)
        assert await view.refresh() == 28
        fresh = await store.fresh(5)
        ttl_unknown = await redis.client.pttl(store.item_key("never-seen"))
    assert applied == 3 and enriched and not stale
    assert replayed == 28
    assert "m3" in view.deleted and "never-seen" in view.deleted
    assert view.items["m4"].title == "Movie 4, edited"
    assert view.items["m4"].attributes.get("mood") == ["calm"]
    assert "m3" not in fresh and fresh[0] == "m29"
    assert seq == 30 + 3 + 1 and ttl_unknown > 0


@pytest.fixture
async def llm_server() -> AsyncIterator[LLMTestServer]:
    async with LLMTestServer() as server:
        yield server


CANDIDATES = [Item(f"i{n}", f"Movie {n}", f"A film about topic {n}.") for n in range(8)]
USER = UserContext(history=[Item("h1", "Seen before", "drama")], query="something calm")


def _llm_settings(server: LLMTestServer, **endpoint: Any) -> Callable[..., LLMSettings]:
    def build(**pool: Any) -> LLMSettings:
        base: dict[str, Any] = {
            "name": "primary",
            "base_url": server.url,
            "model": "test-model",
            "api_key": Secret("sk-test"),
            "rpm": 0,
            "tpm": 0,
            "backoff_base_s": 0.01,
            "backoff_cap_s": 0.05,
            "read_timeout_s": 10.0,
            "window_margin_s": 0.0,
        }
        ep = EndpointSettings(**{**base, **endpoint})
        return LLMSettings(endpoints=(ep,), **{"key_prefix": "rs-test:llm", **pool})

    return build


async def test_llm_limits_budget_cache_and_single_flight_on_the_cluster(
    cluster_settings: Settings, llm_server: LLMTestServer
) -> None:
    client = open_redis(cluster_settings.redis)
    try:
        # Cache and single flight across two pools (two processes' worth).
        llm_server.default = Behaviour(latency_s=0.3)
        settings = _llm_settings(llm_server)()
        async with LLMPool(settings, redis=client) as a, LLMPool(settings, redis=client) as b:
            shared = await asyncio.gather(
                *(LLM(p).rank(USER, CANDIDATES, k=3, deadline=20) for p in (a, b, a, b))
            )
            cached = await LLM(b).rank(USER, CANDIDATES, k=3, deadline=20)
        assert len({r.item_ids for r in shared}) == 1 and cached.usage.cached
        assert len(llm_server.records) == 1, "one upstream call for five identical asks"
        llm_server.default = Behaviour()
        # The shared request limit: the third call in the window is refused, not waited for.
        limited = _llm_settings(llm_server, rpm=2, window_s=60)(cache_enabled=False)
        async with LLMPool(limited, redis=client) as pool:
            for n in range(2):
                await LLM(pool).rank(UserContext(query=f"l{n}"), CANDIDATES, k=2, deadline=10)
            with pytest.raises(RateLimited):
                await LLM(pool).rank(UserContext(query="l3"), CANDIDATES, k=2, deadline=5)
        # The shared budget: refused at once when the minute's tokens are spent.
        budgeted = _llm_settings(llm_server)(
            budget_tokens_per_minute=1500, cache_enabled=False, key_prefix="rs-test:llm-b"
        )
        outcomes: list[bool] = []
        async with LLMPool(budgeted, redis=client) as pool:
            for n in range(5):
                try:
                    await LLM(pool).rank(UserContext(query=f"x{n}"), CANDIDATES, k=2, deadline=10)
                    outcomes.append(True)
                except BudgetExceeded:
                    outcomes.append(False)
        assert outcomes[0] and not outcomes[-1]
    finally:
        await client.aclose()


@pytest.mark.parametrize("mode", ["cluster", "single"])
async def test_a_burst_waits_for_a_free_connection_instead_of_failing(
    mode: str, cluster_settings: Settings, settings: Settings
) -> None:
    """2,000 commands and 300 pipelines at once through a pool of 4 connections:
    all succeed (redis-py's own pools would fail most with MaxConnectionsError)."""
    redis_settings = cluster_settings.redis if mode == "cluster" else settings.redis
    client = open_redis(redis_settings, max_connections=4)
    try:

        async def command(i: int) -> None:
            await client.set(f"rs-test:burst:{{{i % 7}}}", i)

        async def pipeline(i: int) -> list[Any]:
            async with client.pipeline(transaction=False) as pipe:
                for j in range(10):
                    pipe.get(f"rs-test:burst:{{{j}}}")
                return list(await pipe.execute())

        results = await asyncio.gather(
            *(command(i) for i in range(2000)), *(pipeline(i) for i in range(300))
        )
    finally:
        await client.aclose()
    assert len(results) == 2300
