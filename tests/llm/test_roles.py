"""Every prompt role returns its typed, validated result; batching saves tokens."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import orjson
import pytest

from workers.llm import LLM, Fact, Item, LLMPool, LLMSettings, Preferences, Turn, UserContext
from workers.llm.prompts import (
    AspectExplanation,
    ComparativeExplanation,
    ConversationState,
    GroundedExplanation,
    ItemFeatures,
    RankResult,
)
from workers.testing.llm_server import LLMTestServer

pytestmark = pytest.mark.integration

ITEMS = [Item(f"m{n:02d}", f"Movie {n}", f"Plot of movie {n}. " * 5) for n in range(30)]
USER = UserContext(history=ITEMS[20:23], preferences={"genres": ["drama"]}, query="calm")


async def test_every_role(server: LLMTestServer, make_settings: Callable[..., LLMSettings]) -> None:
    async with LLMPool(make_settings()) as pool:
        llm = LLM(pool)
        cands = ITEMS[:8]
        for style in ("zero_shot", "few_shot", "chain_of_thought"):
            ranked = await llm.rank(USER, cands, k=4, style=style, deadline=5)
            assert isinstance(ranked, RankResult) and len(ranked.item_ids) == 4
        cot = await llm.rank(USER, cands, k=4, style="chain_of_thought", deadline=5)
        assert cot.analysis
        listwise = await llm.rerank(USER, cands, k=5, deadline=5, permutations=3)
        assert listwise.item_ids == ("m00", "m01", "m02", "m03", "m04")
        pairwise = await llm.rerank_pairwise(USER, cands[:4], deadline=5)
        assert pairwise.item_ids == ("m00", "m01", "m02", "m03")
        batched = await llm.rerank_batched(USER, ITEMS, k=5, deadline=5, window=10)
        assert batched.item_ids == ("m00", "m01", "m02", "m03", "m04")
        rag = await llm.rank_retrieval_augmented(
            "space opera", cands, [Fact("Movie 1", "sequel_of", "Movie 0")], k=3, deadline=5
        )
        assert len(rag.item_ids) == 3
        assert isinstance(await llm.extract_features(ITEMS[0], deadline=5), ItemFeatures)
        prefs = await llm.extract_preferences(
            [Turn("user", "I loved Movie 1, no horror please")],
            mentioned_items=[ITEMS[1]],
            deadline=5,
        )
        assert isinstance(prefs, Preferences) and prefs.liked_items == ("m01",)
        state = await llm.classify_conversation([], "hello", current_state="greeting", deadline=5)
        assert isinstance(state, ConversationState)
        explanation = await llm.explain(USER, ITEMS[0], ITEMS[20:23], deadline=5)
        assert isinstance(explanation, GroundedExplanation)
        assert set(explanation.evidence_ids) <= {"m20", "m21", "m22"}
        aspects = await llm.explain_aspects(USER, ITEMS[0], signals={"views_7d": 120}, deadline=5)
        assert isinstance(aspects, AspectExplanation) and aspects.timeliness
        comparison = await llm.explain_comparative(USER, ITEMS[:3], deadline=5)
        assert isinstance(comparison, ComparativeExplanation)
        assert set(comparison.notes) <= {"m00", "m01", "m02"}
    # listwise reranking really sent shuffled permutations
    rerank_orders = [
        [c["id"] for c in _data(r.body)["candidates"]] for r in server.records if r.role == "rerank"
    ]
    assert len({tuple(o) for o in rerank_orders[:3]}) == 3


def _data(body: bytes) -> dict[str, object]:
    content = orjson.loads(body)["messages"][1]["content"]
    return orjson.loads(content.split("<data>", 1)[1].rsplit("</data>", 1)[0])  # type: ignore[no-any-return]


async def test_batching_combines_small_tasks_and_saves_tokens(
    server: LLMTestServer, make_settings: Callable[..., LLMSettings]
) -> None:
    settings = make_settings(llm_batch_max_items=8, llm_batch_max_wait_ms=30)
    async with LLMPool(settings) as pool:
        llm = LLM(pool)
        features = await asyncio.gather(
            *(llm.extract_features(item, deadline=5) for item in ITEMS[:16])
        )
        stats = llm.batch_stats("extract_features")
    assert all(isinstance(f, ItemFeatures) for f in features)
    assert len(server.records) == 2  # 16 tasks, 8 per call
    assert stats.tasks == 16 and stats.calls == 2
    print(
        f"\nbatching extract_features: 16 tasks in {stats.calls} calls, prompt+max_tokens "
        f"{stats.tokens_batched} vs {stats.tokens_separate} separately: saving {stats.saving:.1%}"
    )
    # measured on what the server counted, too: one call per 8 tasks
    assert server.counters()["tokens"] == stats.tokens_batched
    assert stats.saving > 0.3


async def test_compression_keeps_prompts_in_budget(
    server: LLMTestServer, make_settings: Callable[..., LLMSettings]
) -> None:
    long_items = [Item(f"l{n}", f"Long {n}", "very long description " * 400) for n in range(10)]
    async with LLMPool(make_settings(llm_max_prompt_tokens=1200)) as pool:
        ranked = await LLM(pool).rank(USER, long_items, k=3, deadline=5)
    assert len(ranked.item_ids) == 3
    sent = orjson.loads(server.records[0].body)["messages"]
    from workers.llm.tokens import estimate_messages

    assert estimate_messages(sent) <= 1200
    assert len(_data(server.records[0].body)["candidates"]) == 10  # type: ignore[arg-type]
