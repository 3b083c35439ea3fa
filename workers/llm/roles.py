"""LLM: typed role helpers over an :class:`LLMPool`, with repair, permutations and batching.

Every helper takes a ``deadline`` and returns a frozen, validated result (with
its ``usage``) or raises an :class:`LLMError`. An answer that fails validation
is retried once with a repair note (the bad answer itself is never sent
back), then :class:`InvalidOutput` is raised.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
from collections.abc import Coroutine, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Generic, TypeVar

from workers.llm import metrics
from workers.llm.deadline import Deadline, DeadlineLike
from workers.llm.errors import InvalidOutput, LLMError, UnsafeOutput
from workers.llm.grounding import Grounding
from workers.llm.pool import ChatRequest, Completion, LLMPool, Usage
from workers.llm.prompts import (
    ALL_ROLES,
    ASPECTS,
    COMPARATIVE,
    EXPLAIN,
    FEATURES,
    PAIRWISE,
    PREFERENCES,
    RAG,
    RANK,
    RANK_COT,
    RANK_FEW_SHOT,
    RERANK,
    STATE,
    AspectExplanation,
    ComparativeExplanation,
    ConversationState,
    Fact,
    GroundedExplanation,
    Item,
    ItemFeatures,
    ParseContext,
    Preferences,
    RankExample,
    RankResult,
    RoleSpec,
    Turn,
    UserContext,
    build_messages,
    system_prompt,
    with_usage,
)
from workers.llm.safety import Embedder, LeakGuard
from workers.llm.settings import LLMSettings
from workers.llm.tokens import estimate_request

__all__ = ["LLM", "BatchStats"]

log = logging.getLogger(__name__)

R = TypeVar("R")
# Sampling temperature of extra explanation drafts (variety is their point).
DRAFT_TEMPERATURE = 0.7
_REPAIR = (
    "Your previous answer could not be used ({reason}). Answer again with only the JSON "
    "object in the form given in the instructions, using only ids present in the data."
)


@dataclass
class BatchStats:
    """Measured effect of batching: prompt tokens sent vs. the same tasks sent one by one."""

    calls: int = 0
    tasks: int = 0
    tokens_batched: int = 0
    tokens_separate: int = 0

    @property
    def saving(self) -> float:
        """Fraction of prompt tokens saved (0 when nothing was batched)."""
        if not self.tokens_separate:
            return 0.0
        return 1 - self.tokens_batched / self.tokens_separate


@dataclass
class _Pending(Generic[R]):
    data: dict[str, Any]
    deadline: Deadline
    future: asyncio.Future[R]


class _Batcher(Generic[R]):
    """Collects small tasks of one role for a few ms and sends them as one call."""

    def __init__(self, llm: LLM, spec: RoleSpec[R]) -> None:
        self._llm = llm
        self._spec = spec
        self._pending: list[_Pending[R]] = []
        self._timer: asyncio.Task[None] | None = None
        self.stats = BatchStats()

    async def submit(self, data: dict[str, Any], deadline: Deadline) -> R:
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._pending.append(_Pending(data, deadline, future))
        size = self._llm.settings.batch_max_items
        if len(self._pending) >= size:
            batch, self._pending = self._pending[:size], self._pending[size:]
            self._llm._spawn(self._flush(batch))
        elif self._timer is None:
            self._timer = self._llm._spawn(self._after_wait())
        return await future

    async def _after_wait(self) -> None:
        await asyncio.sleep(self._llm.settings.batch_max_wait_ms / 1000)
        self._timer = None
        batch, self._pending = self._pending, []
        size = self._llm.settings.batch_max_items
        await asyncio.gather(
            *(self._flush(batch[i : i + size]) for i in range(0, len(batch), size))
        )

    async def _flush(self, batch: list[_Pending[R]]) -> None:
        if not batch:
            return
        if len(batch) == 1:
            await self._single(batch[0])
            return
        spec, llm = self._spec, self._llm
        deadline = Deadline(min(p.deadline.at for p in batch))
        tasks = {f"t{i}": p.data for i, p in enumerate(batch)}
        try:
            messages, clean = build_messages(
                spec, {"tasks": tasks}, batch=True, **llm._prompt_kwargs()
            )
            separate = sum(
                estimate_request(
                    build_messages(spec, p.data, **llm._prompt_kwargs())[0], spec.max_output_tokens
                )
                for p in batch
            )
            max_tokens = spec.max_output_tokens * len(batch)
            self.stats.calls += 1
            self.stats.tasks += len(batch)
            batched = estimate_request(messages, max_tokens)
            self.stats.tokens_batched += batched
            self.stats.tokens_separate += separate
            metrics.BATCH_TOKENS_SAVED.labels(spec.name).inc(max(0, separate - batched))
            request = ChatRequest(
                spec.name, messages, max_tokens=max_tokens, temperature=llm.settings.temperature
            )
            guard = llm._guard(spec, batch=True)

            def parse(c: Completion) -> dict[str, Any]:
                from workers.llm.parsing import extract_json

                results = extract_json(c.content).get("results")
                if not isinstance(results, dict):
                    raise InvalidOutput("$.results: expected an object")
                # Leak check over the whole answer, before any part is used.
                guard.check(c.content)
                return results

            results, usage = await llm.pool.complete(request, deadline=deadline, parse=parse)
        except InvalidOutput:
            # One task's hostile text must not sink the others: each gets its own call.
            await asyncio.gather(*(self._single(p) for p in batch))
            return
        except LLMError as exc:
            for p in batch:
                _settle(p.future, exc)
            return
        share = Usage(
            endpoint=usage.endpoint,
            model=usage.model,
            prompt_tokens=usage.prompt_tokens // len(batch),
            completion_tokens=usage.completion_tokens // len(batch),
            cost_usd=usage.cost_usd / len(batch),
            cached=usage.cached,
            attempts=usage.attempts,
        )
        retry: list[_Pending[R]] = []
        for name, p in zip(tasks, batch, strict=True):
            try:
                from workers.llm.parsing import Fields

                part = clean["tasks"][name]
                ctx = ParseContext(part, llm._guard(spec).bound(Grounding.from_data(part)))
                value = spec.parse_object(Fields(results.get(name), ctx.guard), ctx)
                _settle(p.future, with_usage(value, share))
            except InvalidOutput as exc:
                metrics.INVALID_OUTPUTS.labels(spec.name, exc.reason).inc()
                retry.append(p)
        # Parts the batch got wrong get their own call (with its own repair).
        await asyncio.gather(*(self._single(p) for p in retry))

    async def _single(self, p: _Pending[R]) -> None:
        try:
            value: R = await self._llm._run(self._spec, p.data, p.deadline)
            _settle(p.future, value)
        except LLMError as exc:
            _settle(p.future, exc)


def _settle(future: asyncio.Future[R], outcome: R | BaseException) -> None:
    """Resolve a waiter unless it gave up (cancelled) already."""
    if future.done():
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)


class LLM:
    """The role helpers callers use; see the package docstring for an example."""

    def __init__(self, pool: LLMPool, *, seed: int = 0, embedder: Embedder | None = None) -> None:
        """``embedder`` (texts -> L2-normalised vectors, e.g. the MiniLM
        ``TextEncoder.encode``) turns on the paraphrased-system-prompt check."""
        self.pool = pool
        self._embedder = embedder
        self.settings: LLMSettings = pool.settings
        self._seed = seed
        self._tasks: set[asyncio.Task[None]] = set()
        self._batchers: dict[str, _Batcher[Any]] = {}
        canary = self.settings.canary.reveal()
        self._guards = {
            (name, batch): LeakGuard(
                [canary] if canary else [],
                [system_prompt(spec, preamble=self.settings.system_preamble, batch=batch)],
                embedder=embedder,
            )
            for name, spec in ALL_ROLES.items()
            for batch in (False, True)
        }

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def batch_stats(self, role: str) -> BatchStats:
        batcher = self._batchers.get(role)
        return batcher.stats if batcher is not None else BatchStats()

    def _guard(self, spec: RoleSpec[Any], *, batch: bool = False) -> LeakGuard:
        guard = self._guards.get((spec.name, batch))
        if guard is None:
            canary = self.settings.canary.reveal()
            guard = LeakGuard(
                [canary] if canary else [],
                [system_prompt(spec, batch=batch)],
                embedder=self._embedder,
            )
            self._guards[(spec.name, batch)] = guard
        return guard

    def _prompt_kwargs(self) -> dict[str, Any]:
        return {
            "max_prompt_tokens": self.settings.max_prompt_tokens,
            "preamble": self.settings.system_preamble,
            "canary": self.settings.canary.reveal(),
        }

    async def _run(
        self,
        spec: RoleSpec[R],
        data: Mapping[str, Any],
        deadline: DeadlineLike,
        *,
        temperature: float | None = None,
    ) -> R:
        """One role call: build, send, validate; one repair on invalid output."""
        dl = Deadline.coerce(deadline)
        messages, clean = build_messages(spec, data, **self._prompt_kwargs())
        # free text may only name what this call's data holds
        ctx = ParseContext(clean, self._guard(spec).bound(Grounding.from_data(clean)))
        max_tokens = min(spec.max_output_tokens, self.settings.max_output_tokens)
        if temperature is None:
            temperature = self.settings.temperature
        request = ChatRequest(spec.name, messages, max_tokens=max_tokens, temperature=temperature)
        try:
            value, usage = await self.pool.complete(
                request, deadline=dl, parse=lambda c: spec.parse(c.content, ctx)
            )
            return with_usage(value, usage)
        except InvalidOutput as exc:
            reason = "unsafe content" if isinstance(exc, UnsafeOutput) else "invalid JSON or fields"
            log.info("llm role=%s: invalid answer (%s), one repair attempt", spec.name, exc.reason)
        repair = ChatRequest(
            spec.name,
            (*messages, {"role": "system", "content": _REPAIR.format(reason=reason)}),
            max_tokens=max_tokens,
            temperature=temperature,
        )
        value, usage = await self.pool.complete(
            repair, deadline=dl, parse=lambda c: spec.parse(c.content, ctx)
        )
        return with_usage(value, usage)

    # --- ranking -------------------------------------------------------------

    async def rank(
        self,
        user: UserContext,
        candidates: Sequence[Item],
        *,
        k: int,
        deadline: DeadlineLike,
        style: str = "zero_shot",
        examples: Sequence[RankExample] = (),
    ) -> RankResult:
        """Prompt-based ranking: ``style`` is zero_shot, few_shot, chain_of_thought or
        two_step.

        few_shot: ``examples`` chosen by the caller for this call go in the data
        (the role's fixed examples are the fallback). two_step is the seed's
        two-call chain of thought: the first call analyses the user (and ranks),
        the second ranks with that analysis in the user's context; if the second
        call fails, the first call's ranking answers.
        """
        data: dict[str, Any] = {
            "user": user.data(),
            "k": k,
            "candidates": [c.data() for c in candidates],
        }
        if style == "two_step":
            dl = Deadline.coerce(deadline)
            first = await self._run(RANK_COT, data, dl)
            if not first.analysis:
                return first
            follow = dict(data)
            follow["user"] = {**data["user"], "analysis": first.analysis}
            try:
                second = await self._run(RANK, follow, dl)
            except LLMError:
                log.info("llm two-step ranking: the second call failed, the first answers")
                return first
            return with_usage(replace(second, analysis=first.analysis), first.usage + second.usage)
        spec = {"zero_shot": RANK, "few_shot": RANK_FEW_SHOT, "chain_of_thought": RANK_COT}[style]
        if style == "few_shot" and examples:
            data["examples"] = [e.data() for e in examples]
        return await self._run(spec, data, deadline)

    async def rerank(
        self,
        user: UserContext,
        candidates: Sequence[Item],
        *,
        k: int,
        deadline: DeadlineLike,
        permutations: int | None = None,
        initial_scores: Mapping[str, float] | None = None,
    ) -> RankResult:
        """Listwise reranking with position-bias mitigation.

        The candidates are ranked in ``permutations`` shuffled orders
        (concurrently) and the rankings aggregated by Borda count; permutations
        that fail are left out as long as one succeeds. Only the items a model
        placed earn points: the ones it left out keep the caller's (first-stage)
        order behind them. ``initial_scores`` (the first stage's, by id) are shown
        with the candidates, as the seed's listwise prompt does.
        """
        dl = Deadline.coerce(deadline)
        n = permutations or self.settings.rerank_permutations
        orders = [self._shuffle(candidates, i) for i in range(n)]

        def shown(c: Item) -> dict[str, Any]:
            d = c.data()
            if initial_scores is not None and c.id in initial_scores:
                d["initial_score"] = round(float(initial_scores[c.id]), 4)
            return d

        outcomes = await asyncio.gather(
            *(
                self._run(
                    RERANK,
                    {"user": user.data(), "k": len(order), "candidates": [shown(c) for c in order]},
                    dl,
                )
                for order in orders
            ),
            return_exceptions=True,
        )
        results = [o for o in outcomes if isinstance(o, RankResult)]
        if not results:
            first = next(o for o in outcomes if isinstance(o, BaseException))
            raise first
        ids = [c.id for c in candidates]
        score = dict.fromkeys(ids, 0.0)
        for result in results:
            for pos, item_id in enumerate(result.item_ids[: result.ranked_by_model]):
                score[item_id] += len(ids) - pos
        ranked = sorted(ids, key=lambda i: (-score[i], ids.index(i)))
        usage = sum((r.usage for r in results[1:]), results[0].usage)
        return RankResult(
            item_ids=tuple(ranked[:k]),
            ranked_by_model=min(k, max(r.ranked_by_model for r in results)),
            usage=usage,
        )

    def _shuffle(self, candidates: Sequence[Item], index: int) -> list[Item]:
        # Seeded by the candidate set, so identical requests produce identical
        # prompts (and hit the cache) in every process.
        if index == 0:
            return list(candidates)
        digest = hashlib.sha256("|".join(c.id for c in candidates).encode()).digest()
        rng = random.Random(int.from_bytes(digest[:8], "big") + index + self._seed)
        order = list(candidates)
        rng.shuffle(order)
        return order

    async def rerank_pairwise(
        self,
        user: UserContext,
        candidates: Sequence[Item],
        *,
        deadline: DeadlineLike,
        max_pairs: int = 28,
    ) -> RankResult:
        """Pairwise reranking: every pair compared once (order shuffled), ranked by wins."""
        dl = Deadline.coerce(deadline)
        pairs = [(a, b) for i, a in enumerate(candidates) for b in candidates[i + 1 :]]
        if len(pairs) > max_pairs:
            from workers.llm.errors import PromptTooLarge

            raise PromptTooLarge(f"{len(pairs)} pairs over the cap of {max_pairs}; rerank fewer")
        rng = random.Random(self._seed)
        jobs = []
        for a, b in pairs:
            first, second = (a, b) if rng.random() < 0.5 else (b, a)
            data = {"user": user.data(), "candidates": [first.data(), second.data()]}
            jobs.append(self._run(PAIRWISE, data, dl))
        outcomes = await asyncio.gather(*jobs, return_exceptions=True)
        wins = {c.id: 0 for c in candidates}
        usage = Usage()
        decided = 0
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                continue
            wins[outcome.winner] += 1
            usage = usage + outcome.usage
            decided += 1
        if not decided and outcomes:
            raise next(o for o in outcomes if isinstance(o, BaseException))
        ids = [c.id for c in candidates]
        ranked = sorted(ids, key=lambda i: (-wins[i], ids.index(i)))
        return RankResult(item_ids=tuple(ranked), ranked_by_model=len(ranked), usage=usage)

    async def rerank_batched(
        self,
        user: UserContext,
        candidates: Sequence[Item],
        *,
        k: int,
        deadline: DeadlineLike,
        window: int = 20,
    ) -> RankResult:
        """Batched reranking for long lists: rank windows concurrently, then the winners."""
        dl = Deadline.coerce(deadline)
        if len(candidates) <= window:
            return await self._run(
                RERANK,
                {"user": user.data(), "k": k, "candidates": [c.data() for c in candidates]},
                dl,
            )
        chunks = [candidates[i : i + window] for i in range(0, len(candidates), window)]
        # top k of every window survive, so the global top k always reach the final round
        per_chunk = max(1, min(k, window))
        outcomes = await asyncio.gather(
            *(
                self._run(
                    RERANK,
                    {"user": user.data(), "k": per_chunk, "candidates": [c.data() for c in ch]},
                    dl,
                )
                for ch in chunks
            ),
            return_exceptions=True,
        )
        by_id = {c.id: c for c in candidates}
        survivors: list[Item] = []
        usage = Usage()
        for chunk, outcome in zip(chunks, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                survivors.extend(chunk[:per_chunk])  # keep the caller's order for a failed window
                continue
            survivors.extend(by_id[i] for i in outcome.item_ids[:per_chunk])
            usage = usage + outcome.usage
        final = await self._run(
            RERANK, {"user": user.data(), "k": k, "candidates": [c.data() for c in survivors]}, dl
        )
        rest = [c.id for c in candidates if c.id not in final.item_ids]
        return RankResult(
            item_ids=(*final.item_ids, *rest)[:k],
            ranked_by_model=final.ranked_by_model,
            usage=usage + final.usage,
        )

    async def rank_retrieval_augmented(
        self,
        query: str,
        retrieved: Sequence[Item],
        facts: Sequence[Fact],
        *,
        k: int,
        deadline: DeadlineLike,
        user: UserContext | None = None,
    ) -> RankResult:
        """RA-Rec: rank retrieved items with retrieved facts in context."""
        data = {
            "user": (user or UserContext()).data(),
            "request": query,
            "k": k,
            "candidates": [c.data() for c in retrieved],
            "facts": [[f.head, f.relation, f.tail] for f in facts],
        }
        return await self._run(RAG, data, deadline)

    # --- features, preferences, conversation ---------------------------------

    async def extract_features(self, item: Item, *, deadline: DeadlineLike) -> ItemFeatures:
        """Structured features from item text; concurrent calls are batched."""
        return await self._batched(FEATURES, {"item": item.data()}, deadline)

    async def extract_preferences(
        self,
        dialogue: Sequence[Turn],
        *,
        deadline: DeadlineLike,
        current: Preferences | None = None,
        mentioned_items: Sequence[Item] = (),
    ) -> Preferences:
        cur = current or Preferences()
        data = {
            "dialogue": [{"role": t.role, "text": t.text} for t in dialogue],
            "current": {
                "genres": list(cur.genres),
                "themes": list(cur.themes),
                "constraints": dict(cur.constraints),
                "dislikes": list(cur.dislikes),
            },
            "mentioned_items": [i.data() for i in mentioned_items],
        }
        return await self._run(PREFERENCES, data, deadline)

    async def classify_conversation(
        self,
        history: Sequence[Turn],
        message: str,
        *,
        current_state: str,
        deadline: DeadlineLike,
    ) -> ConversationState:
        """ChatCRS state and Chat-Rec intent; concurrent calls are batched."""
        data = {
            "dialogue": [{"role": t.role, "text": t.text} for t in history[-5:]],
            "message": message,
            "current_state": current_state,
        }
        return await self._batched(STATE, data, deadline)

    async def _batched(self, spec: RoleSpec[R], data: dict[str, Any], deadline: DeadlineLike) -> R:
        batcher = self._batchers.get(spec.name)
        if batcher is None:
            batcher = self._batchers[spec.name] = _Batcher(self, spec)
        result: R = await batcher.submit(data, Deadline.coerce(deadline))
        return result

    # --- explanations ----------------------------------------------------------

    async def explain(
        self,
        user: UserContext,
        item: Item,
        evidence: Sequence[Item],
        *,
        deadline: DeadlineLike,
        variant: int = 0,
    ) -> GroundedExplanation:
        """XRec-style explanation citing only ``evidence`` (items from the user's history).

        ``variant`` > 0 asks for another draft of the same explanation (XRec's
        generator samples several for its ranker): the data carries the draft
        number, so the cache keeps drafts apart, and the call samples at
        :data:`DRAFT_TEMPERATURE` at least.
        """
        data: dict[str, Any] = {
            "user": user.data(),
            "item": item.data(),
            "evidence": [e.data() for e in evidence],
        }
        if not variant:
            return await self._run(EXPLAIN, data, deadline)
        data["draft"] = variant + 1
        temperature = max(self.settings.temperature, DRAFT_TEMPERATURE)
        return await self._run(EXPLAIN, data, deadline, temperature=temperature)

    async def explain_aspects(
        self,
        user: UserContext,
        item: Item,
        *,
        signals: Mapping[str, str | float],
        deadline: DeadlineLike,
    ) -> AspectExplanation:
        data = {"user": user.data(), "item": item.data(), "signals": dict(signals)}
        return await self._run(ASPECTS, data, deadline)

    async def explain_comparative(
        self, user: UserContext, items: Sequence[Item], *, deadline: DeadlineLike
    ) -> ComparativeExplanation:
        data = {"user": user.data(), "items": [i.data() for i in items]}
        return await self._run(COMPARATIVE, data, deadline)
