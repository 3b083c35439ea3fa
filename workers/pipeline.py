"""The recommendation pipeline: decoded events in, output events out. No Kafka.

    interactions -> state (idempotent) -> policy (debounced trigger) -> recommend
    requests     -> state (read)       -> policy (cold or model)    -> recommend
    catalog      -> catalog store (text -> joint embedding)         -> (view refresh)

``recommend`` = candidates -> ONNX scoring, micro-batched across users ->
Recommendation events with deterministic ids. The streams package calls
these handlers with micro-batches and sends what they return.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from redis.exceptions import RedisError

from contracts import (
    CatalogChange,
    Cause,
    ChatMessage,
    ChatReply,
    Event,
    Interaction,
    RankedItem,
    Recommendation,
    RecommendationRequest,
    Strategy,
    derive_id,
    topics,
)
from workers.candidates import CandidateGenerator, PopularItems
from workers.catalog import CatalogStore, CatalogView, ItemRecord
from workers.resources import RedisResource, RedisScript, Resource, state_store_error
from workers.settings import Settings
from workers.state import UserState, UserStateStore

__all__ = ["Output", "Pipeline", "Scorer"]

logger = logging.getLogger(__name__)

# One window per user; the cause holding it may pass again (a redelivery);
# an event applied before (ARGV[3] == '0') never opens a new window.
_DEBOUNCE_LUA = """
local held = redis.call('GET', KEYS[1])
if not held and ARGV[3] == '1' then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
if held == ARGV[1] then return 1 end
return 0
"""


class Scorer(Protocol):
    """What the pipeline needs of the model (workers.model provides it)."""

    @property
    def version(self) -> str: ...

    def similar_many(
        self,
        seed_lists: Sequence[Sequence[str]],
        k: int,
        excludes: Sequence[Collection[str]],
    ) -> list[list[str]]: ...

    async def score(
        self, histories: Sequence[Sequence[str]], candidates: Sequence[Sequence[str]]
    ) -> list[np.ndarray]: ...

    async def add_items(self, item_ids: Sequence[str], texts: Sequence[str]) -> None: ...

    def popular(self) -> list[str]: ...

    def is_new(self, item_id: str) -> bool: ...

    @property
    def has_new_items(self) -> bool: ...


@dataclass(frozen=True, slots=True)
class Output:
    """One event to send: contract topic, key, event."""

    topic: str
    key: bytes
    event: Event


@dataclass(slots=True)
class _Ask:
    """One recommendation to compute: for whom, why, how many."""

    user_id: str
    cause: Cause
    k: int
    started: float
    state: UserState | None = None
    timings: dict[str, float] = field(default_factory=dict)


def _ms(since: float) -> float:
    return round((time.perf_counter() - since) * 1000, 3)


class Pipeline(Resource):
    """Owns Redis, the catalog view and the scorer; handles micro-batches."""

    def __init__(self, settings: Settings, scorer: Scorer) -> None:
        super().__init__()
        self.settings = settings
        self.scorer = scorer
        self._stack = contextlib.AsyncExitStack()
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def _open(self) -> None:
        self.redis = await self._stack.enter_async_context(RedisResource(self.settings.redis))
        self.user_state = UserStateStore(
            self.redis, exclude_kinds=self.settings.stream.exclude_kinds
        )
        self._debounce_script = RedisScript(self.redis, _DEBOUNCE_LUA)
        self.catalog_store = CatalogStore(self.redis)
        self.catalog = CatalogView(self.catalog_store, on_items=self._add_items)
        self.popular = PopularItems(self.redis, self.catalog_store)
        self.candidates = CandidateGenerator(
            self.scorer,
            self.catalog,
            self.popular,
            max_candidates=self.settings.stream.candidates_max,
            fallback_popular=self.scorer.popular,
        )
        await self.catalog.refresh()
        await self.popular.refresh()
        poll_s = self.settings.stream.catalog_poll_ms / 1000
        self._tasks = [
            asyncio.create_task(self._poll_catalog(poll_s), name="catalog-poll"),
            asyncio.create_task(
                self.candidates.run_refresh(2.0, self._stop), name="popular-refresh"
            ),
        ]

    async def _close(self) -> None:
        self._stop.set()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._stack.aclose()

    async def _add_items(self, records: list[ItemRecord]) -> None:
        await self.scorer.add_items([r.item_id for r in records], [r.text for r in records])

    async def _poll_catalog(self, interval_s: float) -> None:
        while not self._stop.is_set():
            try:
                await self.catalog.refresh()
            except Exception:
                logger.warning("catalog refresh failed", exc_info=True)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), timeout=interval_s)

    # ------------------------------------------------------------ handlers

    async def on_interactions(self, events: Sequence[Interaction]) -> list[Output]:
        """Apply state; recommend for users whose events trigger the policy.

        An event applied for the first time may open a user's debounce window;
        a redelivered one (already applied) passes only if its cause holds the
        window, i.e. the earlier delivery died between the state write and the
        send. So a replay emits no new lists, and a crash loses none (but for
        a crash between the state script and the debounce write, one round
        trip apart).
        """
        started = time.perf_counter()
        applied = {e.event_id for e in await self.user_state.apply(events)}
        stream = self.settings.stream
        triggers: dict[str, Interaction] = {}
        for e in events:
            if e.kind in stream.trigger_kinds and (e.kind != "rating" or (e.rating or 0) >= 4):
                triggers[e.user_id] = e  # the user's latest triggering event wins
        if not triggers:
            return []
        allowed = await self._debounce(triggers, applied)
        asks = [_Ask(u, Cause("interaction", triggers[u].event_id), 10, started) for u in allowed]
        return await self._recommend(asks)

    async def _debounce(self, triggers: dict[str, Interaction], applied: set[str]) -> list[str]:
        """Users whose trigger may produce a list: at most one cause per user per
        window (kept in Redis, so replicas and restarts agree); the cause that
        holds the window passes again on redelivery."""
        ms = self.settings.stream.debounce_ms
        if ms <= 0:
            return list(triggers)
        try:
            replies = await self._debounce_script.run_many(
                [
                    (
                        [self.redis.key("u", "{" + user + "}", "deb")],
                        [e.event_id, ms, 1 if e.event_id in applied else 0],
                    )
                    for user, e in triggers.items()
                ]
            )
        except RedisError as exc:
            raise state_store_error("debounce failed", exc) from exc
        return [u for u, ok in zip(triggers, replies, strict=True) if ok]

    async def on_requests(self, requests: Sequence[RecommendationRequest]) -> list[Output]:
        started = time.perf_counter()
        asks = [_Ask(r.user_id, Cause("request", r.request_id), r.k, started) for r in requests]
        return await self._recommend(asks)

    async def on_catalog(self, changes: Sequence[CatalogChange]) -> list[Output]:
        applied = await self.catalog_store.apply(changes)
        logger.debug("catalog: %d of %d changes applied", applied, len(changes))
        await self.catalog.refresh()
        return []

    async def on_chat(self, messages: Sequence[ChatMessage]) -> list[Output]:
        """Model-only chat replies (the LLM conversation path plugs in here)."""
        started = time.perf_counter()
        asks = [_Ask(m.user_id, Cause("chat", m.event_id), 5, started) for m in messages]
        recs = await self._recommend(asks)
        out: list[Output] = []
        for message, rec in zip(messages, recs, strict=True):
            assert isinstance(rec.event, Recommendation)
            titles = [
                self.catalog.items[i.item_id].title
                for i in rec.event.items
                if i.item_id in self.catalog.items
            ]
            text = (
                "Here are some picks based on your history: " + "; ".join(titles[:5])
                if titles
                else "Here are some popular picks right now."
            )
            out.append(
                Output(
                    topics.CHAT_REPLIES,
                    message.session_id.encode(),
                    ChatReply(
                        reply_id=derive_id("reply", message.event_id),
                        session_id=message.session_id,
                        user_id=message.user_id,
                        in_reply_to=message.event_id,
                        text=text[:4000],
                        items=rec.event.items,
                        source="model",
                        ts_ms=int(time.time() * 1000),
                        intent=None,
                    ),
                )
            )
        return out

    # ------------------------------------------------------------ recommend

    async def _recommend(self, asks: list[_Ask]) -> list[Output]:
        if not asks:
            return []
        t = time.perf_counter()
        states = await self.user_state.load([a.user_id for a in asks], weights=False)
        state_ms = _ms(t)
        model_asks: list[_Ask] = []
        results: dict[int, tuple[list[RankedItem], Strategy]] = {}
        t = time.perf_counter()
        cold_at = self.settings.stream.cold_threshold
        for n, (ask, state) in enumerate(zip(asks, states, strict=True)):
            ask.state = state
            if state.interactions < cold_at or not state.history:
                cands = self.candidates.for_user(state, similar=False)
                results[n] = (self._popular_list(cands, ask.k), "popular")
            else:
                model_asks.append(ask)
        candidate_lists = self.candidates.for_users([a.state for a in model_asks if a.state])
        cand_ms = _ms(t)
        t = time.perf_counter()
        if model_asks:
            histories = [list(reversed(a.state.history)) for a in model_asks if a.state]
            scores = await self.scorer.score(
                histories, [[i for i, _ in cl] for cl in candidate_lists]
            )
            index = {id(a): n for n, a in enumerate(asks)}
            for ask, cands, s in zip(model_asks, candidate_lists, scores, strict=True):
                results[index[id(ask)]] = (self._rank(cands, np.asarray(s), ask.k), "model")
        score_ms = _ms(t)
        now = int(time.time() * 1000)
        out = []
        for n, ask in enumerate(asks):
            items, strategy = results[n]
            rec = Recommendation(
                rec_id=derive_id("rec", ask.cause.kind, ask.cause.id),
                user_id=ask.user_id,
                cause=ask.cause,
                items=tuple(items),
                strategy=strategy,
                model_version=self.scorer.version,
                ts_ms=now,
                timings_ms={
                    "state": state_ms,
                    "candidates": cand_ms,
                    "score": score_ms,
                    "total": _ms(ask.started),
                    "batch": float(len(asks)),
                },
            )
            out.append(Output(topics.RECOMMENDATIONS, ask.user_id.encode(), rec))
        return out

    def _rank(self, cands: list[tuple[str, str]], scores: np.ndarray, k: int) -> list[RankedItem]:
        """Top k by score, with one slot for a new item close to the user's history.

        Items known only from their text score below trained items (they have
        no collaborative signal and no popularity prior), so without a slot a
        new item would never surface. The slot goes to the best-scoring new
        item among the user's joint-space neighbours, if it is not already in.
        """
        order = np.argsort(-scores, kind="stable")
        top = [int(j) for j in order[:k]]
        slot = self.settings.stream.new_item_slot
        any_new = self.scorer.has_new_items  # skip the per-item checks when there are none
        if any_new and 0 < slot <= k:
            new = [j for j in order if cands[j][1] == "similar" and self.scorer.is_new(cands[j][0])]
            if new and new[0] not in top:
                top = [*top[: slot - 1], int(new[0]), *top[slot - 1 : k - 1]]
        return [
            RankedItem(
                cands[j][0],
                round(float(scores[j]), 6),
                r + 1,
                "new" if any_new and self.scorer.is_new(cands[j][0]) else cands[j][1],
            )
            for r, j in enumerate(top)
        ]

    def _popular_list(self, cands: list[tuple[str, str]], k: int) -> list[RankedItem]:
        """Cold users: popular first, then fresh (the LLM cold-start hook goes here)."""
        ordered = [c for c in cands if c[1] == "popular"] + [c for c in cands if c[1] == "fresh"]
        n = len(ordered)
        return [
            RankedItem(item, round(1.0 - r / max(n, 1), 6), r + 1, source)
            for r, (item, source) in enumerate(ordered[:k])
        ]
