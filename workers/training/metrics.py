"""Ranking metrics and the evaluation protocols (one place, shared by every model).

Protocols (printed verbatim next to every figure by ``recstream evaluate``):

- ``full``: each test user ranks every *warm* item (seen in training) that is
  not in the user's history; the target is the held-out last item.
- ``mixed``: the same users and targets ranking *every* item, warm and cold,
  not in their interactions: charges a model for showing cold items to users
  whose next item is warm. ``cold@10`` (share of the top 10 that is cold)
  is read against the share of interactions on cold items.
- ``standard``: with no items held out (``--cold-fraction 0``), full ranking
  of every item not in the user's history: the literature's leave-one-out.
- ``sampled``: the A-LLMRec paper's protocol: the target among 19 negatives
  drawn uniformly (fixed seed) from the warm items the user never interacted
  with.
- ``cold_full``: users whose target is a held-out cold item rank *every* item
  (warm and cold) not among their other interactions (their other cold
  positives are not negatives).
- ``cold_catalog``: the same users rank only the cold items (the "new items
  arrived, which one for this user" question).
- ``cold_sampled``: the cold target among 19 negatives from all items the user
  never interacted with.

Ties are broken by a seeded random jitter far below any real score gap, so an
all-equal scorer (popularity on cold items) gets a random-order result, not
an optimistic one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["PROTOCOLS", "Case", "evaluate_cases", "rank_metrics"]

PROTOCOLS: dict[str, str] = {
    "full": "full ranking over all warm (training) items not in the user's history; "
    "target = user's last warm interaction (chronological leave-one-out)",
    "sampled": "1 positive + 19 negatives drawn uniformly (seed) from warm items the user "
    "never interacted with; target = last warm interaction",
    "standard": "complete dataset, no items held out: full ranking over all items not in "
    "the user's history; target = user's last interaction (chronological leave-one-out)",
    "mixed": "full ranking over ALL items (warm + cold) not among the user's other "
    "interactions; target = user's last warm interaction; cold@10 = share of cold items "
    "in the top 10",
    "cold_full": "full ranking over ALL items (warm + cold) not among the user's other "
    "interactions; target = user's last interaction with a held-out cold item",
    "cold_catalog": "ranking over the held-out cold items only; same targets as cold_full",
    "cold_sampled": "1 cold positive + 19 negatives drawn uniformly (seed) from all items "
    "the user never interacted with",
}

# scores for a batch of cases: (history lists, user ids) -> [n, n_items + 1]
ScoreFn = Callable[[Sequence[Sequence[int]], np.ndarray], np.ndarray]


@dataclass
class Case:
    """One protocol's test cases over the same users for every model."""

    users: np.ndarray
    histories: list[list[int]]
    targets: np.ndarray
    candidates: np.ndarray | None  # [n, 20] for sampled protocols, else None
    allowed: np.ndarray  # bool [n_items + 1] of rankable items (full protocols)
    exclude: list[list[int]]  # per case, items never ranked (its history)


def rank_metrics(ranks: np.ndarray, k: int = 10) -> dict[str, float]:
    """HR@k, NDCG@k, MRR@k from 0-based ranks of the single target."""
    hit = ranks < k
    return {
        f"HR@{k}": float(hit.mean()),
        f"NDCG@{k}": float((hit / np.log2(ranks + 2.0)).mean()),
        f"MRR@{k}": float((hit / (ranks + 1.0)).mean()),
    }


def evaluate_cases(
    case: Case,
    score_fn: ScoreFn,
    popularity_pct: np.ndarray,
    *,
    seed: int = 0,
    batch: int = 256,
    cold_mask: np.ndarray | None = None,
) -> dict[str, float]:
    """Score every case; return accuracy + coverage@10 + mean popularity percentile."""
    rng = np.random.default_rng(seed)
    n = len(case.targets)
    ranks = np.empty(n, dtype=np.int64)
    recommended: list[np.ndarray] = []
    for start in range(0, n, batch):
        stop = min(n, start + batch)
        scores = np.asarray(
            score_fn(case.histories[start:stop], case.users[start:stop]), dtype=np.float64
        )
        scores = scores + rng.random(scores.shape) * 1e-9 * (1.0 + np.abs(scores))
        for row, idx in enumerate(range(start, stop)):
            target = case.targets[idx]
            if case.candidates is not None:
                cand = case.candidates[idx]
                s = scores[row, cand]
                ranks[idx] = int((s > s[0]).sum())  # the target is column 0
                continue
            s = scores[row].copy()
            s[~case.allowed] = -np.inf
            s[case.exclude[idx]] = -np.inf
            s[target] = scores[row, target]
            ranks[idx] = int((s > s[target]).sum())
            recommended.append(np.argpartition(-s, 10)[:10])
    out = rank_metrics(ranks, 10)
    if case.candidates is not None:
        out["Hit@1"] = float((ranks < 1).mean())
        out |= {
            k.replace("@10", "@5"): v
            for k, v in rank_metrics(ranks, 5).items()
            if k.startswith("NDCG")
        }
        return {k: v for k, v in out.items() if k in {"Hit@1", "NDCG@5", "HR@10"}}
    recs = np.concatenate(recommended)
    out["coverage@10"] = float(np.unique(recs).size / max(1, int(case.allowed.sum())))
    out["pop_pct@10"] = float(popularity_pct[recs].mean())
    if cold_mask is not None:
        out["cold@10"] = float(cold_mask[recs].mean())
    out["n"] = float(n)
    return out


def popularity_percentile(counts: np.ndarray, warm_mask: np.ndarray) -> np.ndarray:
    """Per item: percentile (0-100) of its training count among warm items; cold = 0."""
    pct = np.zeros(len(counts), dtype=np.float64)
    warm = np.flatnonzero(warm_mask)
    order = counts[warm].argsort(kind="stable")
    ranks = np.empty(len(warm), dtype=np.float64)
    ranks[order] = np.arange(len(warm))
    pct[warm] = 100.0 * ranks / max(1, len(warm) - 1)
    return pct
