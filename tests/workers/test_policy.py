"""The serving policy is pure: routes and reasons without Redis, Kafka or a model."""

from __future__ import annotations

import pytest

from workers.policy import PolicySettings, chat_complexity, decide

ON = PolicySettings(cold_threshold=3, llm_available=True)
OFF = PolicySettings(cold_threshold=3, llm_available=False)


def route(kind: str, n: int, query: str | None, settings: PolicySettings = ON) -> str:
    return decide(
        kind,  # type: ignore[arg-type]
        interactions=n,
        history_len=n,
        query=query,
        settings=settings,
    ).route


def test_warm_users_are_served_by_the_model_whatever_they_say() -> None:
    assert route("request", 10, "something funny and light") == "model"
    assert route("interaction", 10, None) == "model"


def test_cold_users_with_context_go_to_the_llm_only_when_one_is_there() -> None:
    assert route("request", 0, "a light comedy for tonight") == "llm_cold"
    assert route("request", 2, "a light comedy for tonight") == "llm_cold"
    assert route("request", 0, "a light comedy for tonight", OFF) == "popular"
    off = PolicySettings(llm_available=True, llm_cold_start=False)
    assert route("request", 0, "a light comedy for tonight", off) == "popular"


def test_cold_users_without_usable_context_get_popular_items() -> None:
    assert route("request", 0, None) == "popular"
    assert route("request", 0, "   ") == "popular"
    assert route("request", 0, "fun") == "popular"  # shorter than min_query_chars


def test_triggered_lists_never_reach_the_llm() -> None:
    assert route("interaction", 0, "a light comedy for tonight") == "popular"
    assert route("interaction", 2, "a light comedy for tonight") == "model"


def test_cold_users_with_some_history_and_no_context_are_served_by_the_model() -> None:
    # Measured: the model beats popularity for users with 1-3 interactions.
    assert route("request", 1, None) == "model"
    assert route("request", 2, "fun") == "model"
    d = decide("request", interactions=2, history_len=2, query=None, settings=ON)
    assert d.reason == "cold user (2 < 3 interactions) without stated context"


def test_every_decision_carries_a_reason_naming_its_grounds() -> None:
    d = decide("request", interactions=1, history_len=1, query="a light comedy", settings=OFF)
    assert "cold user (1 < 3 interactions)" in d.reason and "no LLM" in d.reason
    d = decide("request", interactions=7, history_len=7, query=None, settings=ON)
    assert d.reason == "warm user (7 interactions)"


@pytest.mark.parametrize(
    "text,complex_",
    [
        ("hi", False),
        ("something funny", False),
        ("a comedy please", False),
        ("I want something like Star Voyage but not so violent, and without romance", True),
        ("why did you recommend that, and what is the difference from the last one?", True),
        ("no horror, no war films, something for kids from the 90s with animals", True),
    ],
)
def test_chat_complexity_separates_simple_from_complex_asks(text: str, complex_: bool) -> None:
    c = chat_complexity(text)
    assert (c.score >= ON.chat_complex_at) is complex_, c


def test_chat_route_follows_complexity_and_llm_availability() -> None:
    simple = chat_complexity("a comedy please")
    hard = chat_complexity("something like Star Voyage but not so violent, and without romance")
    assert (
        decide("chat", interactions=0, history_len=0, query="", settings=ON, chat=simple).route
        == "chat_rules"
    )
    assert (
        decide("chat", interactions=0, history_len=0, query="", settings=ON, chat=hard).route
        == "chat_llm"
    )
    d = decide("chat", interactions=0, history_len=0, query="", settings=OFF, chat=hard)
    assert d.route == "chat_rules" and "LLM is off" in d.reason


def test_exemplar_similarity_raises_complexity() -> None:
    base = chat_complexity("a comedy please")
    near = chat_complexity("a comedy please", exemplar_similarity=0.95)
    assert near.score > base.score and any("like complex" in s for s in near.signals)
