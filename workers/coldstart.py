"""The ``llm`` role: cold-start asks ranked by an LLM, each answered by its deadline.

Input: :class:`contracts.LLMWork` events the requests role routed here (a
cold user with stated context). Per ask, the best rung ready by the deadline
answers:

1. **LLM** — two-stage and retrieval-augmented (RA-Rec): the stated context
   retrieves its nearest items in the joint (A-LLMRec) space, merged with the
   popular candidates the work carries; the LLM ranks that short list.
2. **Cached LLM** — the pool's response cache answered the same prompt.
3. **Model** — the retrieved list itself, ranked by text similarity to the
   stated context (no LLM).
4. **Popular/fresh** — the fallback the requests role computed.

Calls run concurrently (bounded) with the time left to each deadline, which
is well below Kafka's poll interval, so a slow LLM only ever costs a lower
rung, never a rebalance.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

from contracts import LLMUsage, LLMWork, RankedItem, Recommendation, Rung, derive_id, topics
from workers.catalog import CatalogView
from workers.llm import LLM, UserContext
from workers.llm_items import budgeted, items_of
from workers.outputs import Output, OutputStore
from workers.recommend import Scorer
from workers.settings import ServingSettings

__all__ = ["ColdStartHandler", "fallback_output"]

logger = logging.getLogger(__name__)

# What a prompt may hold: the top of the retrieved + popular candidates.
PROMPT_CANDIDATES = 20
# Time kept back from the deadline for encoding and sending the answer.
SEND_MARGIN_MS = 100
# Tokens reserved against the path's budget share before a call (settled after).
ESTIMATED_TOKENS = 900


class ColdStartHandler:
    """Answers LLM work (see the module docstring)."""

    def __init__(
        self,
        *,
        scorer: Scorer,
        catalog: CatalogView,
        outputs: OutputStore,
        serving: ServingSettings,
        llm: LLM | None,
        budget: Any = None,
    ) -> None:
        self._scorer = scorer
        self._catalog = catalog
        self._outputs = outputs
        self._serving = serving
        self._llm = llm
        self._budget = budget
        self._slots = asyncio.Semaphore(serving.llm_concurrency)

    async def __call__(self, works: Sequence[LLMWork]) -> list[Output]:
        wanted = [
            (topics.RECOMMENDATIONS, w.user_id.encode(), derive_id("rec", w.cause.kind, w.cause.id))
            for w in works
        ]
        stored = await self._outputs.get_many(wanted)
        todo = [w for w, s in zip(works, stored, strict=True) if s is None]
        answers = await asyncio.gather(*(self._answer(w) for w in todo))
        fresh = iter(await self._outputs.put_many(answers))
        return [s if s is not None else next(fresh) for s in stored]

    async def _answer(self, work: LLMWork) -> Output:
        started = time.perf_counter()
        if _remaining_ms(work) <= 0:  # late already: the fallback, nothing slower
            return fallback_output(work, "deadline passed before the llm role took it")
        timings: dict[str, float] = {}
        retrieved: list[tuple[str, float]] = []
        if work.query:
            t = time.perf_counter()
            [retrieved] = await self._scorer.similar_to_texts(
                [work.query], PROMPT_CANDIDATES, [set(self._catalog.deleted)]
            )
            timings["retrieve"] = _ms(t)
        remaining_ms = _remaining_ms(work)
        items: list[RankedItem] | None = None
        usage = LLMUsage()
        cached = False
        if remaining_ms <= 0:
            why = "deadline passed during retrieval"
        elif self._llm is None:
            why = "no LLM is configured in this process"
        else:
            t = time.perf_counter()
            items, usage, cached, why_not = await self._rank(work, retrieved, remaining_ms / 1000)
            timings["llm"] = _ms(t)
            why = why_not or ""
        rung: Rung
        if items is not None:
            rung = "llm_cached" if cached else "llm"
            reason = f"{work.reason}; ranked by the LLM"
            if rung == "llm_cached":
                reason += " (cached answer)"
            strategy = "llm"
        elif retrieved:
            items = _fill([i for i, _ in retrieved], [s for _, s in retrieved], work)
            rung, strategy = "model", "model"
            reason = f"{work.reason}; {why}: ranked by similarity to the stated context"
        else:
            return fallback_output(work, why)
        timings["llm_role"] = _ms(started)
        return _output(work, items, strategy, rung, reason, usage, timings)

    async def _rank(
        self, work: LLMWork, retrieved: list[tuple[str, float]], seconds: float
    ) -> tuple[list[RankedItem] | None, LLMUsage, bool, str | None]:
        llm = self._llm
        assert llm is not None
        pool: dict[str, None] = dict.fromkeys(i for i, _ in retrieved)
        for item_id in work.candidates:
            if len(pool) >= PROMPT_CANDIDATES:
                break
            pool.setdefault(item_id, None)
        candidates = items_of(self._catalog, pool)
        if not candidates:
            return None, LLMUsage(), False, "no candidate the catalog knows"
        result, why = await budgeted(
            lambda: llm.rank(
                UserContext(query=work.query or ""),
                candidates,
                k=min(work.k, len(candidates)),
                deadline=seconds,
            ),
            what=f"cold start {work.work_id}",
            budget=self._budget,
            slots=self._slots,
            estimate=ESTIMATED_TOKENS,
            path="cold-start",
        )
        if result is None:
            return None, LLMUsage(), False, why
        ranked = list(result.item_ids[: work.k])
        n = len(ranked)
        scores = [round(1.0 - r / max(n, 1), 6) for r in range(n)]
        items = _fill(ranked, scores, work, source="llm")
        usage = LLMUsage(
            used=True,
            model=result.usage.model or None,
            prompt_tokens=result.usage.prompt_tokens,
            completion_tokens=result.usage.completion_tokens,
            cost_usd=result.usage.cost_usd,
        )
        return items, usage, result.usage.cached, None


def _remaining_ms(work: LLMWork) -> int:
    return work.deadline_ms - SEND_MARGIN_MS - int(time.time() * 1000)


def fallback_output(work: LLMWork, why: str) -> Output:
    """The answer from the work's own fallback list (popular or fresh items)."""
    rung = work.fallback_rung
    reason = f"{work.reason}; {why}: {rung} items"
    return _output(work, list(work.fallback_items), rung, rung, reason, LLMUsage(), {})


def _output(
    work: LLMWork,
    items: Sequence[RankedItem],
    strategy: str,
    rung: Rung,
    reason: str,
    usage: LLMUsage,
    timings: dict[str, float],
) -> Output:
    # From the requests role's receipt of the ask: what the deadline bounds.
    timings["total"] = float(max(0, int(time.time() * 1000) - work.ts_ms))
    rec = Recommendation(
        rec_id=derive_id("rec", work.cause.kind, work.cause.id),
        user_id=work.user_id,
        cause=work.cause,
        items=tuple(items),
        strategy=strategy,  # type: ignore[arg-type]
        model_version=work.model_version,
        ts_ms=int(time.time() * 1000),
        llm=usage,
        timings_ms=timings,
        route=work.route,
        reason=reason[:300],
        rung=rung,
    )
    return Output(topics.RECOMMENDATIONS, work.user_id.encode(), rec)


def _fill(
    ids: Sequence[str], scores: Sequence[float], work: LLMWork, *, source: str = "context"
) -> list[RankedItem]:
    """``ids`` first, then the fallback items not already listed, up to k."""
    out: list[RankedItem] = []
    seen: set[str] = set()
    for item_id, score in zip(ids, scores, strict=True):
        if item_id not in seen and len(out) < work.k:
            seen.add(item_id)
            out.append(RankedItem(item_id, round(float(score), 6), len(out) + 1, source))
    for item in work.fallback_items:
        if item.item_id not in seen and len(out) < work.k:
            seen.add(item.item_id)
            out.append(RankedItem(item.item_id, item.score, len(out) + 1, item.source))
    return out


def _ms(since: float) -> float:
    return round((time.perf_counter() - since) * 1000, 3)
