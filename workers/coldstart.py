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

The seed's optional mechanisms, each off by default (docs/seed-fidelity.md):
``llm_rank_style`` (few-shot examples chosen per call, the two-step chain of
thought), ``llm_rag_facts`` (RA-Rec's catalog facts in the prompt) and
``llm_blend_model_weight`` (the two-stage score blend).

Calls run concurrently (bounded) with the time left to each deadline, which
is well below Kafka's poll interval, so a slow LLM only ever costs a lower
rung, never a rebalance.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Iterable, Sequence
from typing import Any

from contracts import LLMUsage, LLMWork, RankedItem, Recommendation, Rung, derive_id, topics
from workers.catalog import CatalogView
from workers.llm import LLM, Fact, UserContext
from workers.llm.prompts import RankExample, RankResult
from workers.llm_items import budgeted, items_of
from workers.outputs import Output, OutputStore
from workers.recommend import Scorer
from workers.settings import ServingSettings

__all__ = ["ColdStartHandler", "blend", "fallback_output", "few_shot_examples", "rag_facts"]

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
        serving = self._serving
        query = work.query or ""
        k = min(work.k, len(candidates))
        facts = rag_facts(self._catalog, query, [c.id for c in candidates], serving.llm_rag_facts)

        def call() -> Awaitable[RankResult]:
            if facts:
                return llm.rank_retrieval_augmented(query, candidates, facts, k=k, deadline=seconds)
            examples = (
                few_shot_examples(self._catalog, query, work, exclude=set(pool))
                if serving.llm_rank_style == "few_shot"
                else ()
            )
            return llm.rank(
                UserContext(query=query),
                candidates,
                k=k,
                deadline=seconds,
                style=serving.llm_rank_style,
                examples=examples,
            )

        result, why = await budgeted(
            call,
            what=f"cold start {work.work_id}",
            budget=self._budget,
            slots=self._slots,
            estimate=ESTIMATED_TOKENS * (2 if serving.llm_rank_style == "two_step" else 1),
            path="cold-start",
        )
        if result is None:
            return None, LLMUsage(), False, why
        ranked = list(result.item_ids[: work.k])
        n = len(ranked)
        scores = [round(1.0 - r / max(n, 1), 6) for r in range(n)]
        if serving.llm_blend_model_weight > 0:
            ranked, scores = blend(
                ranked,
                dict(retrieved),
                [c.id for c in candidates],
                serving.llm_blend_model_weight,
            )
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


def blend(
    llm_order: Sequence[str],
    model_scores: dict[str, float],
    candidates: Sequence[str],
    model_weight: float,
) -> tuple[list[str], list[float]]:
    """The seed's two-stage blend: ``w * model + (1 - w) * LLM`` per item, best first.

    The model score is the first stage's (similarity to the stated context),
    min-max scaled over the prompt's candidates (those it did not retrieve, the
    popular ones, score as its lowest); the LLM score is ``1 - position / n``
    over the LLM's order (items it did not place score 0). Ties keep the LLM's
    order.
    """
    ids = list(dict.fromkeys([*llm_order, *candidates]))
    raw = [model_scores.get(i) for i in ids]
    known = [x for x in raw if x is not None]
    low, high = (min(known), max(known)) if known else (0.0, 0.0)
    span = high - low

    def model(i: str) -> float:
        x = model_scores.get(i)
        return 0.0 if x is None or span <= 0 else (x - low) / span

    n = max(len(llm_order), 1)
    llm_score = {item: 1.0 - pos / n for pos, item in enumerate(llm_order)}
    combined = {
        i: model_weight * model(i) + (1 - model_weight) * llm_score.get(i, 0.0) for i in ids
    }
    order = sorted(ids, key=lambda i: (-combined[i], ids.index(i)))[: len(llm_order)]
    return order, [round(combined[i], 6) for i in order]


def _query_genres(catalog: CatalogView, query: str, item_ids: Iterable[str]) -> dict[str, str]:
    """Genre tokens of ``item_ids`` that the query names (lowercased word -> token)."""
    words = set(re.findall(r"[a-z][a-z'-]+", query.lower()))
    named: dict[str, str] = {}
    for item_id in item_ids:
        for token in catalog.tokens(item_id):
            if token.startswith("genres="):
                genre = token.split("=", 1)[1]
                if genre.lower() in words or genre.lower().rstrip("s") in words:
                    named.setdefault(genre.lower(), genre)
    return named


def rag_facts(catalog: CatalogView, query: str, item_ids: Sequence[str], limit: int) -> list[Fact]:
    """RA-Rec's retrieved facts for the ranking prompt, from the catalog: each candidate's
    genres the stated context names (``has genre``), then release years (``released in``),
    at most ``limit``. The relation filter keeps only facts that link a candidate to the
    request or date it; an empty list (limit 0) means the plain ranking prompt."""
    if limit <= 0:
        return []
    named = _query_genres(catalog, query, item_ids)
    facts: list[Fact] = []
    for item_id in item_ids:
        record = catalog.items.get(item_id)
        if record is None:
            continue
        for token in record.tokens:
            if token.startswith("genres=") and token.split("=", 1)[1].lower() in named:
                facts.append(Fact(record.title or item_id, "has genre", token.split("=", 1)[1]))
    for item_id in item_ids:
        record = catalog.items.get(item_id)
        year = record.attributes.get("year") if record else None
        if record is not None and year not in (None, ""):
            facts.append(Fact(record.title or item_id, "released in", str(year)))
    return facts[:limit]


# Worked examples per few-shot call, and items per example.
FEW_SHOT_PER_CALL = 2
FEW_SHOT_ITEMS = 3


def few_shot_examples(
    catalog: CatalogView, query: str, work: LLMWork, *, exclude: set[str]
) -> list[RankExample]:
    """Few-shot examples chosen for this call: for each genre the request names (or, if it
    names none, the popular list's leading genres), "I enjoy <genre> films" answered by
    items of that genre that are not candidates (so an example never answers the question
    it illustrates), popular ones first."""
    popular = [i.item_id for i in work.fallback_items if i.item_id not in exclude]
    others = [i for i in catalog.items if i not in exclude and not catalog.items[i].deleted]
    genres = list(_query_genres(catalog, query, others).values())
    if not genres:
        for item_id in popular:
            for token in catalog.tokens(item_id):
                if token.startswith("genres=") and token.split("=", 1)[1] not in genres:
                    genres.append(token.split("=", 1)[1])
    examples = []
    for genre in genres[:FEW_SHOT_PER_CALL]:
        ids = [
            i for i in dict.fromkeys([*popular, *others]) if f"genres={genre}" in catalog.tokens(i)
        ]
        items = items_of(catalog, ids[:FEW_SHOT_ITEMS])
        if items:
            examples.append(RankExample(f"I enjoy {genre.lower()} films", items))
    return examples
