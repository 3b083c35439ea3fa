"""The seed's metrics (workers.quality) against values worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from contracts import Evidence
from workers.quality import (
    coherence,
    conversation_efficiency,
    evidence_aspects,
    explanation_relevance,
    genre_diversity,
    informativeness,
    intra_list_diversity,
    mean_reciprocal_rank,
    ndcg_at_k,
    precision_at_k,
    recall_at_k,
    reciprocal_rank,
    task_completion_rate,
    text_aspects,
)

RANKED = ["a", "b", "c", "d", "e"]


def test_precision_and_recall_at_k() -> None:
    # top 3 = a, b, c; relevant c, e, z: one hit
    assert precision_at_k(RANKED, {"c", "e", "z"}, 3) == pytest.approx(1 / 3)
    assert recall_at_k(RANKED, {"c", "e", "z"}, 3) == pytest.approx(1 / 3)
    # top 5 holds c and e: 2/5 precision, 2/3 recall
    assert precision_at_k(RANKED, {"c", "e", "z"}, 5) == pytest.approx(2 / 5)
    assert recall_at_k(RANKED, {"c", "e", "z"}, 5) == pytest.approx(2 / 3)
    # the seed divides by K even when the list is shorter than K
    assert precision_at_k(["a"], {"a"}, 10) == pytest.approx(0.1)
    assert recall_at_k(RANKED, set(), 3) == 0.0
    assert precision_at_k(RANKED, {"a"}, 0) == 0.0
    # one target (leave-one-out): P@10 = HR@10 / 10, R@10 = HR@10
    assert precision_at_k(RANKED, {"b"}, 10) == pytest.approx(0.1)
    assert recall_at_k(RANKED, {"b"}, 10) == 1.0


def test_reciprocal_rank_is_uncut() -> None:
    assert reciprocal_rank(RANKED, {"d"}) == pytest.approx(1 / 4)
    # the first relevant one counts
    assert reciprocal_rank(RANKED, {"e", "b"}) == pytest.approx(1 / 2)
    assert reciprocal_rank(RANKED, {"z"}) == 0.0
    # beyond any top K: position 15 still counts
    long = [f"i{n}" for n in range(1, 21)]
    assert reciprocal_rank(long, {"i15"}) == pytest.approx(1 / 15)
    assert mean_reciprocal_rank([(RANKED, {"a"}), (RANKED, {"d"}), (RANKED, {"z"})]) == (
        pytest.approx((1 + 0.25 + 0) / 3)
    )
    assert mean_reciprocal_rank([]) == 0.0


def test_ndcg_at_k() -> None:
    # one hit at position 2: 1/log2(3); ideal 1
    assert ndcg_at_k(RANKED, {"b"}, 10) == pytest.approx(1 / math.log2(3))
    # hits at 1 and 3 of 2 relevant: (1 + 1/2) / (1 + 1/log2(3))
    assert ndcg_at_k(RANKED, {"a", "c"}, 3) == pytest.approx(1.5 / (1 + 1 / math.log2(3)))
    assert ndcg_at_k(RANKED, {"z"}, 5) == 0.0


def test_intra_list_diversity() -> None:
    # e1, e2 orthogonal (cos 0); e1 and (1,1) cos 1/sqrt2; e2 and (1,1) cos 1/sqrt2
    v = [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]
    expected = 1 - (0 + 2 / math.sqrt(2)) / 3
    assert intra_list_diversity(v) == pytest.approx(expected)
    # the same item twice: no diversity; scale does not matter
    assert intra_list_diversity([[1.0, 2.0], [2.0, 4.0]]) == pytest.approx(0.0)
    assert intra_list_diversity([[1.0, 0.0], [-1.0, 0.0]]) == pytest.approx(2.0)
    assert intra_list_diversity(np.ones((1, 3))) == 0.0


def test_genre_diversity() -> None:
    # {A}, {A,B}, {C}: Jaccard 1/2, 0, 0 -> mean 1/6
    assert genre_diversity([{"A"}, {"A", "B"}, {"C"}]) == pytest.approx(1 - 1 / 6)
    assert genre_diversity([{"A"}, {"A"}]) == 0.0
    assert genre_diversity([{"A"}]) == 0.0


EVIDENCE = (
    Evidence("history_item", item_id="h1"),
    Evidence("history_item", item_id="x9"),
    Evidence("attribute", name="genre", value="Comedy"),
    Evidence("attribute", name="genre", value="War"),
    Evidence("popularity", value="3"),
)


def test_explanation_relevance() -> None:
    # personal: h1 (in history), Comedy (preferred) -> 2 of 5
    rel = explanation_relevance(EVIDENCE, history={"h1", "h2"}, preferred={"comedy"})
    assert rel == pytest.approx(2 / 5)
    # x9 stated as liked in chat, War stated: 4 of 5
    rel = explanation_relevance(
        EVIDENCE, history={"h1"}, preferred={"comedy", "war"}, liked_items={"x9"}
    )
    assert rel == pytest.approx(4 / 5)
    stated = (Evidence("similar_users", value="an action movie"), Evidence("popularity", "1"))
    assert explanation_relevance(stated, history=()) == pytest.approx(1 / 2)
    assert explanation_relevance((), history={"h1"}) is None


def test_informativeness_counts_distinct_aspects() -> None:
    assert evidence_aspects(EVIDENCE) == {"history_item", "attribute:genre", "popularity"}
    assert informativeness([evidence_aspects(EVIDENCE), frozenset({"popularity"})]) == 2.0
    terms = {
        "history": ["Toy Story"],
        "genre": ["comedy", "animation"],
        "popularity": ["popular", "trending"],
    }
    text = "Like Toy Story, this is a popular comedy."
    assert text_aspects(text, terms) == {"history", "genre", "popularity"}
    # whole words only: "comedy" is not in "comedymania"
    assert text_aspects("A comedymania classic.", terms) == frozenset()
    assert informativeness([]) == 0.0


def test_coherence() -> None:
    other = ["Heat", "Toy Story", "Contact", "Star Trek: First Contact", "Fargo"]
    good = coherence(
        "Star Trek: First Contact is close to Toy Story, which you watched.",
        item_names=["Star Trek: First Contact"],
        evidence_names=[["Toy Story"]],
        other_titles=other,
    )
    # "Contact" inside the item's own title is no foreign title
    assert (good.names_item, good.no_foreign_title, good.evidence_named) == (1.0, 1.0, 1.0)
    assert good.score == 1.0
    bad = coherence(
        "You will love it, much like Heat.",
        item_names=["Fargo"],
        evidence_names=[["Toy Story"], ["Contact"]],
        other_titles=other,
    )
    assert (bad.names_item, bad.no_foreign_title, bad.evidence_named) == (0.0, 0.0, 0.0)
    half = coherence(
        "Fargo, like Toy Story.",
        item_names=["Fargo"],
        evidence_names=[["Toy Story"], ["Contact"]],
        other_titles=other,
    )
    assert half.evidence_named == 0.5
    assert half.score == pytest.approx((1 + 1 + 0.5) / 3)


def test_task_completion_and_efficiency() -> None:
    turns = [2, 3, None, 5]
    assert task_completion_rate(turns) == pytest.approx(3 / 4)
    eff = conversation_efficiency(turns, messages=[4, 6, 12, 10])
    assert eff.completed == 3
    assert eff.mean_turns == pytest.approx(10 / 3)
    assert eff.median_turns == 3.0
    assert eff.max_turns == 5
    # the seed: messages / 2 turn pairs -> 2, 3, 6, 5 -> mean 4
    assert eff.mean_turn_pairs == pytest.approx(4.0)
    none = conversation_efficiency([None])
    assert none.completed == 0 and none.mean_turns is None
    assert task_completion_rate([]) == 0.0
