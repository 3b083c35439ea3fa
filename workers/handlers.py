"""Handlers of the roles that never wait on an LLM: interactions, requests, catalog.

Each handler takes a micro-batch of decoded events and returns the outputs
to send; none touches Kafka. Outputs go through the :class:`OutputStore`, so
a redelivered cause re-emits exactly what it emitted the first time.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence

from contracts import (
    CatalogChange,
    Cause,
    Interaction,
    LLMWork,
    RecommendationRequest,
    derive_id,
    topics,
)
from workers.catalog import CatalogStore, CatalogView
from workers.coldstart import fallback_output
from workers.llm.pii import redact
from workers.outputs import Output, OutputStore
from workers.recommend import Ask, Recommender, recommendation_output
from workers.settings import ServingSettings, StreamSettings

__all__ = ["CatalogHandler", "InteractionsHandler", "RequestsHandler", "request_query"]

logger = logging.getLogger(__name__)


def request_query(request: RecommendationRequest) -> str | None:
    """The stated context of a request: its ``query`` (or ``profile``) context value."""
    if not request.context:
        return None
    for key in ("query", "profile", "text"):
        value = request.context.get(key)
        if isinstance(value, str) and value.strip():
            return value.strip()
    return None


class InteractionsHandler:
    """Apply events to user state; emit a list per trigger window (event-time debounced)."""

    def __init__(
        self, recommender: Recommender, outputs: OutputStore, stream: StreamSettings
    ) -> None:
        self._recommender = recommender
        self._outputs = outputs
        self._stream = stream

    def triggers(self, event: Interaction) -> bool:
        """Whether an event may trigger a list: a trigger kind, and a rating >= 4 if rated."""
        if event.kind not in self._stream.trigger_kinds:
            return False
        return event.kind != "rating" or (event.rating or 0) >= 4

    async def __call__(self, events: Sequence[Interaction]) -> list[Output]:
        started = time.perf_counter()
        result = await self._recommender.user_state.apply(
            events, triggers=self.triggers, debounce_ms=self._stream.debounce_ms
        )
        if not result.triggered:
            return []
        asks = [
            Ask(e.user_id, Cause("interaction", e.event_id), 10, started) for e in result.triggered
        ]
        return await emit_once(self._recommender, self._outputs, asks)


async def emit_once(
    recommender: Recommender, outputs: OutputStore, asks: Sequence[Ask]
) -> list[Output]:
    """Lists for ``asks``: stored ones re-emitted as they were, the rest computed and stored."""
    wanted = [
        (
            topics.RECOMMENDATIONS,
            a.user_id.encode(),
            derive_id("rec", a.cause.kind, a.cause.id),
        )
        for a in asks
    ]
    stored = await outputs.get_many(wanted)
    todo = [a for a, s in zip(asks, stored, strict=True) if s is None]
    ranked = await recommender.rank(todo)
    version = recommender.scorer.version
    fresh = await outputs.put_many(
        [recommendation_output(r, model_version=version) for r in ranked]
    )
    it = iter(fresh)
    return [s if s is not None else next(it) for s in stored]


class RequestsHandler:
    """Answer requests: model or popular now; LLM-worthy asks routed to the llm role.

    An ask the policy routes to the LLM leaves as an :class:`LLMWork` event
    carrying its deadline and the list computed here as its fallback; the llm
    role answers it (LLM, cached LLM, or that fallback) by the deadline. This
    loop never waits on an LLM. A deadline guard here makes the deadline hold
    even when the llm role lags or is down: at the deadline, if no answer was
    stored yet, the fallback is stored and emitted (through ``emit``, the edge's
    sender, set once the edge's producer is open; without it there is no guard);
    an answer the llm role finishes later finds it stored and re-emits that same
    content, so the request still has one answer.
    """

    def __init__(
        self, recommender: Recommender, outputs: OutputStore, serving: ServingSettings
    ) -> None:
        self._recommender = recommender
        self._outputs = outputs
        self._serving = serving
        self.emit: Callable[[list[Output]], Awaitable[None]] | None = None
        self._guards: set[asyncio.Task[None]] = set()

    def _guard(self, work: LLMWork) -> None:
        if self.emit is None:
            return
        task = asyncio.create_task(self._at_deadline(work), name=f"deadline-{work.work_id}")
        self._guards.add(task)
        task.add_done_callback(self._guards.discard)

    async def _at_deadline(self, work: LLMWork) -> None:
        emit = self.emit
        assert emit is not None
        await asyncio.sleep(max(0.0, (work.deadline_ms - time.time() * 1000) / 1000))
        key = (
            topics.RECOMMENDATIONS,
            work.user_id.encode(),
            derive_id("rec", "request", work.cause.id),
        )
        try:
            [stored] = await self._outputs.get_many([key])
            if stored is not None:
                return
            fallback = fallback_output(work, "no LLM answer by the deadline")
            [winner] = await self._outputs.put_many([fallback])
            if winner.event == fallback.event:
                await emit([winner])
        except Exception:  # the llm role still answers the work; log and move on
            logger.warning("deadline guard of %s failed", work.work_id, exc_info=True)

    async def aclose(self) -> None:
        """Cancel pending guards (their works are still answered by the llm role)."""
        for task in list(self._guards):
            task.cancel()
        await asyncio.gather(*self._guards, return_exceptions=True)

    async def __call__(self, requests: Sequence[RecommendationRequest]) -> list[Output]:
        started = time.perf_counter()
        received_ms = int(time.time() * 1000)
        asks = [
            Ask(
                r.user_id,
                Cause("request", r.request_id),
                r.k,
                started,
                query=request_query(r),
            )
            for r in requests
        ]
        wanted = [
            (topics.RECOMMENDATIONS, a.user_id.encode(), derive_id("rec", "request", a.cause.id))
            for a in asks
        ]
        stored = await self._outputs.get_many(wanted)
        todo = [a for a, s in zip(asks, stored, strict=True) if s is None]
        ranked = await self._recommender.rank(todo)
        version = self._recommender.scorer.version
        computed: list[Output] = []
        for r in ranked:
            if not r.decision.uses_llm:
                computed.append(recommendation_output(r, model_version=version))
                continue
            work = LLMWork(
                work_id=derive_id("work", "request", r.ask.cause.id),
                user_id=r.ask.user_id,
                cause=r.ask.cause,
                k=r.ask.k,
                deadline_ms=received_ms + self._serving.request_deadline_ms,
                route=r.decision.route,
                reason=r.decision.reason,
                # Personal data in the stated context stays at the edge: the work
                # topic and the output store get it redacted, as the LLM would.
                query=redact(r.ask.query or "")[:2000] or None,
                candidates=tuple(i for i, _ in r.candidates[:200]),
                fallback_items=tuple(r.items),
                fallback_rung="fresh" if r.rung == "fresh" else "popular",
                model_version=version,
                ts_ms=received_ms,
            )
            computed.append(Output(topics.LLM_WORK, r.ask.user_id.encode(), work))
        fresh = await self._outputs.put_many(computed)
        for o in fresh:
            if isinstance(o.event, LLMWork):
                self._guard(o.event)
        it = iter(fresh)
        return [s if s is not None else next(it) for s in stored]


class CatalogHandler:
    """Apply catalog changes; the catalog view (and so the scorer) picks them up."""

    def __init__(self, store: CatalogStore, view: CatalogView) -> None:
        self._store = store
        self._view = view

    async def __call__(self, changes: Sequence[CatalogChange]) -> list[Output]:
        applied = await self._store.apply(changes)
        logger.debug("catalog: %d of %d changes applied", applied, len(changes))
        await self._view.refresh()
        return []
