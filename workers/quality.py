"""The seed's quality metrics, as pure functions (no I/O): ranking, lists, explanations, dialogue.

Definitions follow the seed article's "Evaluation Metrics" section where it
gives one, and say what they measure where it only names the metric:

* **Precision@K** = |top-K ∩ relevant| / K (the seed divides by K even when
  the list is shorter); **Recall@K** = |top-K ∩ relevant| / |relevant|.
* **Reciprocal rank, uncut**: 1 / position of the first relevant item
  anywhere in the list (not only the top K), 0 when none is in it; MRR is its
  mean over lists.
* **NDCG@K**: binary gains, ideal DCG over min(K, |relevant|) hits.
* **Intra-list diversity**: 1 − mean pairwise cosine of the list's item
  vectors (text or joint-space embeddings), or 1 − mean pairwise Jaccard of
  the items' genre sets (:func:`genre_diversity`). Callers say which.
* **Explanation relevance**: the share of the evidence an explanation cites
  that is personal — a history item the user has, an attribute their history
  or stated preferences carry, or their stated request. Popularity and recency
  are not personal and count against it.
* **Explanation coherence**: the text agrees with what it carries: it names
  the recommended item, names no catalog title outside the item and its
  evidence, and names the history items it carries as evidence. The score is
  the mean of those three parts, each in [0, 1].
* **Informativeness**: distinct aspects per explanation — of the evidence it
  carries (history, each attribute name, popularity, recency, stated request)
  or of its text (which aspects' terms the text uses).
* **Task completion**: the share of conversations with an accepted
  recommendation; **conversation efficiency**: turns to the first accepted
  recommendation, and the seed's figure, user/assistant turn pairs.
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

__all__ = [
    "Coherence",
    "Efficiency",
    "EvidenceLike",
    "coherence",
    "conversation_efficiency",
    "evidence_aspects",
    "explanation_relevance",
    "genre_diversity",
    "informativeness",
    "intra_list_diversity",
    "mean_reciprocal_rank",
    "ndcg_at_k",
    "precision_at_k",
    "recall_at_k",
    "reciprocal_rank",
    "task_completion_rate",
    "text_aspects",
]

# Evidence kinds that say something about this user; the rest describe the item.
PERSONAL_KINDS = frozenset({"history_item", "attribute", "similar_users"})


# --- ranking -----------------------------------------------------------------


def precision_at_k(ranked: Sequence[str], relevant: Collection[str], k: int) -> float:
    if k <= 0:
        return 0.0
    return len(set(ranked[:k]) & set(relevant)) / k


def recall_at_k(ranked: Sequence[str], relevant: Collection[str], k: int) -> float:
    rel = set(relevant)
    if not rel or k <= 0:
        return 0.0
    return len(set(ranked[:k]) & rel) / len(rel)


def reciprocal_rank(ranked: Sequence[str], relevant: Collection[str]) -> float:
    """Uncut: the whole list counts, not only its top K."""
    rel = set(relevant)
    for position, item in enumerate(ranked, start=1):
        if item in rel:
            return 1.0 / position
    return 0.0


def mean_reciprocal_rank(lists: Iterable[tuple[Sequence[str], Collection[str]]]) -> float:
    values = [reciprocal_rank(r, rel) for r, rel in lists]
    return float(np.mean(values)) if values else 0.0


def ndcg_at_k(ranked: Sequence[str], relevant: Collection[str], k: int) -> float:
    rel = set(relevant)
    dcg = sum(1.0 / np.log2(i + 2) for i, item in enumerate(ranked[:k]) if item in rel)
    ideal = sum(1.0 / np.log2(i + 2) for i in range(min(k, len(rel))))
    return float(dcg / ideal) if ideal > 0 else 0.0


# --- lists -------------------------------------------------------------------


def intra_list_diversity(vectors: npt.ArrayLike) -> float:
    """1 − mean pairwise cosine of the rows (one row per item); 0 for fewer than 2 rows."""
    m = np.asarray(vectors, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] < 2:
        return 0.0
    norms = np.linalg.norm(m, axis=1, keepdims=True)
    unit = m / np.where(norms == 0, 1.0, norms)
    sims = unit @ unit.T
    n = m.shape[0]
    mean = (sims.sum() - np.trace(sims)) / (n * (n - 1))
    return float(1.0 - mean)


def genre_diversity(genre_sets: Sequence[Collection[str]]) -> float:
    """1 − mean pairwise Jaccard similarity of the items' genre sets (two empty sets: 0 apart)."""
    sets = [set(g) for g in genre_sets]
    pairs = [(a, b) for i, a in enumerate(sets) for b in sets[i + 1 :]]
    if not pairs:
        return 0.0
    sims = [len(a & b) / len(a | b) if a | b else 1.0 for a, b in pairs]
    return float(1.0 - np.mean(sims))


# --- explanations ------------------------------------------------------------


class EvidenceLike(Protocol):
    """What the metrics read of :class:`contracts.Evidence`."""

    @property
    def kind(self) -> str: ...
    @property
    def item_id(self) -> str | None: ...
    @property
    def name(self) -> str | None: ...
    @property
    def value(self) -> str | None: ...


def explanation_relevance(
    evidence: Sequence[EvidenceLike],
    *,
    history: Collection[str],
    preferred: Collection[str] = (),
    liked_items: Collection[str] = (),
) -> float | None:
    """Share of the cited evidence that is in the user's history or stated preferences.

    ``history``: the user's item ids; ``preferred``: attribute values (e.g.
    genres) their history carries or they stated, compared case-insensitively;
    ``liked_items``: items they said they liked. A stated request
    (``similar_users`` evidence carrying it) counts as a stated preference.
    None when nothing is cited.
    """
    if not evidence:
        return None
    items = set(history) | set(liked_items)
    prefs = {p.lower() for p in preferred}
    hits = 0
    for e in evidence:
        if e.kind == "history_item":
            hits += bool(e.item_id and e.item_id in items)
        elif e.kind == "attribute":
            hits += bool(e.value and e.value.lower() in prefs)
        elif e.kind == "similar_users":
            hits += bool(e.value)
    return hits / len(evidence)


def evidence_aspects(evidence: Sequence[EvidenceLike]) -> frozenset[str]:
    """The distinct aspects the evidence covers: its kinds, attributes split by name."""
    return frozenset(
        f"attribute:{e.name or ''}" if e.kind == "attribute" else e.kind for e in evidence
    )


def _mentions(text: str, names: Iterable[str]) -> bool:
    """Whether ``text`` names any of ``names`` as whole words, case-insensitively."""
    lowered = text.lower()
    for name in names:
        n = name.strip().lower()
        # the substring test first: a regex per catalog title would be compiled per call
        if n and n in lowered and re.search(rf"(?<!\w){re.escape(n)}(?!\w)", lowered):
            return True
    return False


def text_aspects(text: str, aspect_terms: Mapping[str, Iterable[str]]) -> frozenset[str]:
    """The aspects whose terms ``text`` uses, e.g. ``{"history": [titles], "genre": [...],
    "popularity": ["popular", "trending"]}``."""
    return frozenset(a for a, terms in aspect_terms.items() if _mentions(text, terms))


def informativeness(aspects: Iterable[frozenset[str]]) -> float:
    """Mean number of distinct aspects per explanation."""
    counts = [len(a) for a in aspects]
    return float(np.mean(counts)) if counts else 0.0


@dataclass(frozen=True, slots=True)
class Coherence:
    names_item: float
    no_foreign_title: float
    evidence_named: float

    @property
    def score(self) -> float:
        return (self.names_item + self.no_foreign_title + self.evidence_named) / 3


def coherence(
    text: str,
    *,
    item_names: Sequence[str],
    evidence_names: Sequence[Sequence[str]],
    other_titles: Iterable[str],
) -> Coherence:
    """How well ``text`` agrees with what it carries (see the module docstring).

    ``item_names``: the recommended item's names (e.g. raw and display title);
    ``evidence_names``: the names of each history item it carries as evidence;
    ``other_titles``: catalog titles to look for; those of the item and its
    evidence are skipped. A text carrying no history evidence names all of it.
    """
    own = {n.strip().lower() for n in item_names} | {
        n.strip().lower() for names in evidence_names for n in names
    }
    # A foreign title inside an allowed one ("Contact" in "Star Trek: First Contact")
    # is no foreign mention: allowed names are taken out of the text first.
    rest = text.lower()
    for name in sorted(own, key=len, reverse=True):
        if name:
            rest = rest.replace(name, " ")
    foreign = _mentions(rest, (t for t in other_titles if t.strip().lower() not in own))
    named = [_mentions(text, names) for names in evidence_names]
    return Coherence(
        names_item=float(_mentions(text, item_names)),
        no_foreign_title=0.0 if foreign else 1.0,
        evidence_named=float(np.mean(named)) if named else 1.0,
    )


# --- conversations -----------------------------------------------------------


def task_completion_rate(turns_to_accept: Sequence[int | None]) -> float:
    """Share of conversations that reached an accepted recommendation (None: never)."""
    if not turns_to_accept:
        return 0.0
    return sum(t is not None for t in turns_to_accept) / len(turns_to_accept)


@dataclass(frozen=True, slots=True)
class Efficiency:
    """Turns to the first accepted recommendation, over the completed conversations."""

    completed: int
    mean_turns: float | None
    median_turns: float | None
    max_turns: int | None
    # The seed's figure: messages of the whole conversation / 2 (turn pairs), mean.
    mean_turn_pairs: float | None


def conversation_efficiency(
    turns_to_accept: Sequence[int | None], messages: Sequence[int] = ()
) -> Efficiency:
    """``turns_to_accept``: per conversation, the user turn of the first acceptance (1-based)
    or None; ``messages``: per conversation, user plus assistant messages (optional)."""
    done = [t for t in turns_to_accept if t is not None]
    return Efficiency(
        completed=len(done),
        mean_turns=float(statistics.fmean(done)) if done else None,
        median_turns=float(statistics.median(done)) if done else None,
        max_turns=max(done) if done else None,
        mean_turn_pairs=float(statistics.fmean(m / 2 for m in messages)) if messages else None,
    )
