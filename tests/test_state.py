"""Per-user state in the real Redis: idempotent, atomic per user, bounded."""

from __future__ import annotations

import asyncio
import random

import pytest
import redis.asyncio as aioredis

from contracts import Interaction
from tests.offline import recompute
from workers import constants as c
from workers.resources import RedisResource
from workers.settings import Settings
from workers.state import UserState, UserStateStore

pytestmark = pytest.mark.integration

GENRES = {f"i{n}": (f"g{n % 5}", f"g{(n + 1) % 5}") for n in range(50)}


def _events(n: int, seed: int = 7) -> list[Interaction]:
    rng = random.Random(seed)
    kinds = ["view", "click", "add_to_cart", "purchase", "rating", "skip"]
    out = []
    for k in range(n):
        kind = rng.choice(kinds)
        out.append(
            Interaction(
                f"e{k}",
                f"u{rng.randrange(8)}",
                f"i{rng.randrange(50)}",
                kind,  # type: ignore[arg-type]
                1_000 + k,
                rating=float(rng.randint(1, 5)) if kind == "rating" else None,
            )
        )
    return out


def offline(events: list[Interaction], history_max: int = c.HISTORY_MAX) -> dict[str, UserState]:
    return recompute(events, history_max=history_max)


async def _state(store: UserStateStore, users: list[str]) -> dict[str, UserState]:
    return {s.user_id: s for s in await store.load(users, history=c.HISTORY_MAX)}


async def test_apply_matches_offline_recomputation(
    settings: Settings, redis_client: aioredis.Redis
) -> None:
    events = _events(600)
    async with RedisResource(settings.redis) as redis:
        store = UserStateStore(redis)
        for start in range(0, len(events), 97):
            await store.apply(events[start : start + 97])
        users = sorted({e.user_id for e in events})
        assert await _state(store, users) == offline(events)


async def test_replays_change_nothing(settings: Settings, redis_client: aioredis.Redis) -> None:
    events = _events(400, seed=11)
    async with RedisResource(settings.redis) as redis:
        store = UserStateStore(redis)
        first = await store.apply(events)
        assert first.applied == len(events) and first.duplicates == 0
        users = sorted({e.user_id for e in events})
        once = await _state(store, users)
        pop_once = {
            k: await redis_client.zrange(k, 0, -1, withscores=True)
            for k in await redis_client.keys("*:{pop}:[0-9]*")
        }
        # Replay 2-5 times, concurrently, in shuffled micro-batches.
        rng = random.Random(3)
        replays = []
        for _ in range(rng.randint(2, 5)):
            copy = list(events)
            rng.shuffle(copy)
            replays += [store.apply(copy[i : i + 50]) for i in range(0, len(copy), 50)]
        results = await asyncio.gather(*replays)
        assert sum(r.applied for r in results) == 0
        assert await _state(store, users) == once
        pop_again = {
            k: await redis_client.zrange(k, 0, -1, withscores=True)
            for k in await redis_client.keys("*:{pop}:[0-9]*")
        }
        assert pop_again == pop_once


async def test_history_is_bounded_and_unique(
    settings: Settings, redis_client: aioredis.Redis
) -> None:
    events = [Interaction(f"e{k}", "u1", f"i{k % 30}", "view", k) for k in range(100)]
    async with RedisResource(settings.redis) as redis:
        store = UserStateStore(redis, history_max=20)
        await store.apply(events)
        (state,) = await store.load(["u1"], history=100)
    assert len(state.history) == 20
    assert len(set(state.history)) == 20
    assert state.history[0] == "i9"  # event 99 -> i9 is the most recent


async def test_keys_share_one_hash_slot_per_user(
    settings: Settings, redis_client: aioredis.Redis
) -> None:
    async with RedisResource(settings.redis) as redis:
        store = UserStateStore(redis)
        await store.apply([Interaction("e1", "user-42", "i1", "purchase", 5)])
        keys = [k.decode() for k in await redis_client.keys("*user-42*")]
    assert len(keys) == 5
    assert {k.split("{")[1].split("}")[0] for k in keys} == {"user-42"}


def test_affinities_are_derived_from_item_weights_and_the_catalog() -> None:
    state = UserState("u", ("i1", "i2"), {"n": 3}, {"i1": 4, "i2": -1, "i3": 2})
    assert state.affinities(lambda item: GENRES[item]) == {"g1": 4, "g2": 3, "g3": 1, "g4": 2}
