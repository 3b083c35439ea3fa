"""From asks to ranked lists: state -> policy -> candidates -> score -> encode.

:class:`Recommender` serves every role that emits recommendation lists
(requests, interactions, chat, the llm role's fallbacks). It reads the users'
state in one pipeline, asks the pure policy for each ask's route, builds
candidates, scores the model-routed asks in one batched ONNX call, and
returns :class:`Ranked` results; callers turn them into events.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from contracts import Cause, RankedItem, Recommendation, Rung, Strategy, derive_id, topics
from workers.candidates import CandidateGenerator
from workers.outputs import Output
from workers.policy import AskKind, Decision, PolicySettings, decide
from workers.settings import StreamSettings
from workers.state import UserState, UserStateStore

__all__ = [
    "Ask",
    "Ranked",
    "Recommender",
    "Scorer",
    "ms_since",
    "popular_list",
    "recommendation_output",
]


class Scorer(Protocol):
    """What the recommendation logic needs of the model (workers.scoring provides it;
    tests use an in-memory one)."""

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

    async def similar_to_texts(
        self, texts: Sequence[str], k: int, excludes: Sequence[Collection[str]]
    ) -> list[list[tuple[str, float]]]: ...

    def popular(self) -> list[str]: ...

    def is_new(self, item_id: str) -> bool: ...

    def is_trained(self, item_id: str) -> bool: ...

    @property
    def has_new_items(self) -> bool: ...


def ms_since(since: float) -> float:
    return round((time.perf_counter() - since) * 1000, 3)


@dataclass(slots=True)
class Ask:
    """One list to compute: for whom, why, how many, with what stated context."""

    user_id: str
    cause: Cause
    k: int
    started: float
    query: str | None = None

    @property
    def kind(self) -> AskKind:
        return self.cause.kind


@dataclass(slots=True)
class Ranked:
    """A computed list with its route, the rung that answered and the reasons."""

    ask: Ask
    state: UserState
    decision: Decision
    items: list[RankedItem]
    rung: Rung
    strategy: Strategy
    candidates: list[tuple[str, str]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)


class Recommender:
    """Batched recommendation for many asks at once (see the module docstring)."""

    def __init__(
        self,
        scorer: Scorer,
        user_state: UserStateStore,
        candidates: CandidateGenerator,
        stream: StreamSettings,
        policy: PolicySettings,
    ) -> None:
        self.scorer = scorer
        self.user_state = user_state
        self.candidates = candidates
        self.stream = stream
        self.policy = policy

    async def rank(self, asks: Sequence[Ask]) -> list[Ranked]:
        """Lists for ``asks`` in order. LLM routes are *not* answered here: they get
        the model/popular list as their fallback, and the caller routes them on."""
        if not asks:
            return []
        t = time.perf_counter()
        states = await self.user_state.load([a.user_id for a in asks], weights=False)
        state_ms = ms_since(t)
        t = time.perf_counter()
        decisions = [
            decide(
                a.kind,
                interactions=s.interactions,
                history_len=len(s.history),
                query=a.query,
                settings=self.policy,
            )
            for a, s in zip(asks, states, strict=True)
        ]
        warm = [n for n, d in enumerate(decisions) if d.route == "model"]
        candidate_lists = self.candidates.for_users([states[n] for n in warm])
        results: dict[int, Ranked] = {}
        for n, (ask, state, decision) in enumerate(zip(asks, states, decisions, strict=True)):
            if decision.route != "model":
                cands = self.candidates.for_user(state, similar=False)
                items = popular_list(cands, ask.k)
                fresh_only = not any(i.source == "popular" for i in items)
                rung: Rung = "fresh" if fresh_only else "popular"
                strategy: Strategy = "fresh" if fresh_only else "popular"
                results[n] = Ranked(ask, state, decision, items, rung, strategy, cands)
        cand_ms = ms_since(t)
        t = time.perf_counter()
        if warm:
            histories = [list(reversed(states[n].history)) for n in warm]
            scores = await self.scorer.score(
                histories, [[i for i, _ in cl] for cl in candidate_lists]
            )
            for n, cands, s in zip(warm, candidate_lists, scores, strict=True):
                items = self.top_k(cands, np.asarray(s), asks[n].k)
                results[n] = Ranked(
                    asks[n], states[n], decisions[n], items, "model", "model", cands
                )
        score_ms = ms_since(t)
        out = [results[n] for n in range(len(asks))]
        for r in out:
            r.timings = {
                "state": state_ms,
                "candidates": cand_ms,
                "score": score_ms,
                "total": ms_since(r.ask.started),
                "batch": float(len(asks)),
            }
        return out

    def top_k(self, cands: list[tuple[str, str]], scores: np.ndarray, k: int) -> list[RankedItem]:
        """Top k by score, with an optional slot for a new item close to the user's history.

        Items known only from their text may score below trained items; the
        slot (``RECSTREAM_NEW_ITEM_SLOT``, 0 = off) gives the best-scoring new
        item among the user's joint-space neighbours one rank if the model
        alone would not list it.
        """
        order = np.argsort(-scores, kind="stable")
        top = [int(j) for j in order[:k]]
        slot = self.stream.new_item_slot
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


def popular_list(cands: Sequence[tuple[str, str]], k: int) -> list[RankedItem]:
    """Popular first, then fresh, scored by rank."""
    ordered = [c for c in cands if c[1] == "popular"] + [c for c in cands if c[1] == "fresh"]
    n = len(ordered)
    return [
        RankedItem(item, round(1.0 - r / max(n, 1), 6), r + 1, source)
        for r, (item, source) in enumerate(ordered[:k])
    ]


def recommendation_output(
    ranked: Ranked, *, model_version: str, reason: str | None = None, ts_ms: int | None = None
) -> Output:
    """The Recommendation event of a computed list (id derived from its cause)."""
    ask = ranked.ask
    rec = Recommendation(
        rec_id=derive_id("rec", ask.cause.kind, ask.cause.id),
        user_id=ask.user_id,
        cause=ask.cause,
        items=tuple(ranked.items),
        strategy=ranked.strategy,
        model_version=model_version,
        ts_ms=int(time.time() * 1000) if ts_ms is None else ts_ms,
        timings_ms=ranked.timings,
        route=ranked.decision.route,
        reason=(reason or ranked.decision.reason)[:300],
        rung=ranked.rung,
    )
    return Output(topics.RECOMMENDATIONS, ask.user_id.encode(), rec)
