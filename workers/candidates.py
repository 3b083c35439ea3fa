"""Candidate generation: a bounded union of cheap sources, consumed items excluded.

Sources, in the order their items are taken until the bound is reached:
  similar  nearest neighbours of the user's recent items in the joint
           (A-LLMRec) embedding space: the collaborative co-occurrence signal
           SASRec learnt, plus text similarity for items with no interactions
  popular  most interacted-with items in the sliding window (event time)
  fresh    the newest catalog items
Deleted items never pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import Callable, Collection, Sequence
from typing import Protocol

from workers import constants as c
from workers.catalog import CatalogStore, CatalogView
from workers.resources import RedisResource
from workers.state import UserState

__all__ = ["CandidateGenerator", "PopularItems", "SimilarItems"]

logger = logging.getLogger(__name__)


class SimilarItems(Protocol):
    """What candidate generation needs of the model: neighbours in the joint space."""

    def similar_many(
        self,
        seed_lists: Sequence[Sequence[str]],
        k: int,
        excludes: Sequence[Collection[str]],
    ) -> list[list[str]]: ...


class PopularItems:
    """Trending and fresh items, refreshed from Redis in the background."""

    def __init__(self, redis: RedisResource, catalog: CatalogStore, *, size: int = 500) -> None:
        self._redis = redis
        self._catalog = catalog
        self._size = size
        self.popular: list[str] = []
        self.fresh: list[str] = []

    async def refresh(self) -> None:
        client = self._redis.client
        raw = await client.get(self._redis.key("{pop}", "watermark"))
        if raw is not None:
            newest = int(raw) // c.POPULARITY_BUCKET_MS
            buckets = range(newest - c.POPULARITY_WINDOW_BUCKETS + 1, newest + 1)
            async with client.pipeline(transaction=False) as pipe:
                for bucket in buckets:
                    pipe.zrevrange(
                        self._redis.key("{pop}", bucket), 0, self._size - 1, withscores=True
                    )
                replies = await pipe.execute()
            totals: dict[str, float] = defaultdict(float)
            for reply in replies:
                for item, score in reply:
                    totals[item.decode()] += score
            self.popular = sorted(totals, key=lambda i: (-totals[i], i))[: self._size]
        self.fresh = await self._catalog.fresh(50)


class CandidateGenerator:
    """Builds each user's candidate list (item id, source), bounded in size."""

    def __init__(
        self,
        similar: SimilarItems | None,
        catalog: CatalogView,
        popular: PopularItems,
        *,
        max_candidates: int = 200,
        fallback_popular: Callable[[], list[str]] | None = None,
    ) -> None:
        self._similar = similar
        self._catalog = catalog
        self._popular = popular
        self._max = max_candidates
        self._fallback = fallback_popular

    def popular_items(self) -> list[str]:
        if self._popular.popular:
            return self._popular.popular
        return self._fallback() if self._fallback else []

    def for_user(
        self, state: UserState, *, recent: int = 5, similar: bool = True
    ) -> list[tuple[str, str]]:
        return self.for_users([state], recent=recent, similar=similar)[0]

    def for_users(
        self, states: Sequence[UserState], *, recent: int = 5, similar: bool = True
    ) -> list[list[tuple[str, str]]]:
        """Candidates for several users; neighbours for all of them in one matrix product."""
        deleted = self._catalog.deleted
        # ~60% of the budget to neighbours: they carry the model's signal.
        budget = int(self._max * 0.6)
        neighbours: list[list[str]] = [[] for _ in states]
        if similar and self._similar is not None:
            wanted = [n for n, s in enumerate(states) if s.history]
            found = self._similar.similar_many(
                [list(states[n].history[:recent]) for n in wanted],
                budget,
                [states[n].excluded for n in wanted],
            )
            for n, items in zip(wanted, found, strict=True):
                neighbours[n] = items
        popular = self.popular_items()
        fresh = self._popular.fresh
        out = []
        for state, near in zip(states, neighbours, strict=True):
            picked: dict[str, str] = {}
            for items, source, limit in (
                (near, "similar", budget),
                (popular, "popular", self._max - 10),
                (fresh, "fresh", self._max),
                (popular, "popular", self._max),
            ):
                for item in items:
                    if len(picked) >= limit:
                        break
                    if item not in state.excluded and item not in deleted and item not in picked:
                        picked[item] = source
            out.append(list(picked.items()))
        return out

    async def run_refresh(self, interval_s: float, stop: asyncio.Event) -> None:
        """Refresh popular/fresh every ``interval_s`` until ``stop`` is set."""
        while not stop.is_set():
            try:
                await self._popular.refresh()
            except Exception:  # a transient Redis error must not end the loop
                logger.warning("popular-items refresh failed", exc_info=True)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=interval_s)
