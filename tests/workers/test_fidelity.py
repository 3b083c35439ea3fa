"""The seed's mechanisms behind configuration (docs/seed-fidelity.md): the two-stage score
blend, RA-Rec's retrieved facts, few-shot examples chosen per call, the two-step chain of
thought, dialogue in the ranking context, and XRec's several drafts with a ranker.

Each is checked on what reaches the LLM TEST SERVER (not a model) and what comes out."""

from __future__ import annotations

import re
from typing import Any

import orjson
import pytest

from contracts import Evidence, Explanation, LLMWork, Recommendation, RecommendationRequest
from tests.workers.catalog_data import MOVIES
from tests.workers.conftest import OpenRuntime, llm_settings
from workers import coldstart
from workers.catalog import ItemRecord
from workers.coldstart import blend
from workers.explain import best_draft
from workers.llm import LLM, Item, LLMPool, Turn, UserContext
from workers.testing.llm_server import Behaviour, LLMTestServer

TITLES = {item_id: title for item_id, title, _ in MOVIES}
_DATA = re.compile(r"<data>\s*(.*?)\s*</data>", re.DOTALL)


def sent(server: LLMTestServer) -> list[tuple[str, dict[str, Any]]]:
    """(role, fenced data) of every request the server received, in order."""
    out = []
    for record in server.records:
        messages = orjson.loads(record.body)["messages"]
        user = next(m["content"] for m in messages if m["role"] == "user")
        found = _DATA.search(user)
        out.append((record.role, orjson.loads(found.group(1)) if found else {}))
    return out


def test_blend_is_the_seeds_weighted_sum() -> None:
    # LLM order a, b, c (scores 1, 2/3, 1/3); model similarity c 0.9, b 0.5, a 0.1
    # -> scaled c 1, b 0.5, a 0. With w = 0.6: a 0.4, b 0.3 + 0.2667 = 0.5667, c 0.6 + 0.1333.
    order, scores = blend(["a", "b", "c"], {"a": 0.1, "b": 0.5, "c": 0.9}, ["a", "b", "c"], 0.6)
    assert order == ["c", "b", "a"]
    assert scores == pytest.approx([0.733333, 0.566667, 0.4], abs=1e-6)
    # w = 0: the LLM's order stands
    assert blend(["a", "b", "c"], {"c": 1.0}, ["a", "b", "c"], 0.0)[0] == ["a", "b", "c"]
    # an item the LLM left out can win on the model score alone (list length kept)
    order, _ = blend(["a", "b"], {"z": 1.0, "a": 0.0}, ["a", "b", "z"], 0.9)
    assert order == ["z", "a"]


async def _work(rt: Any, query: str, request_id: str) -> LLMWork:
    [out] = await rt.handler("requests")(
        [RecommendationRequest(request_id, f"user-{request_id}", 5, 0, context={"query": query})]
    )
    assert isinstance(out.event, LLMWork)
    return out.event


async def test_ra_rec_facts_reach_the_ranking_prompt(
    open_runtime: OpenRuntime, llm_server: LLMTestServer
) -> None:
    async with open_runtime(["requests", "llm"], llm=llm_server, llm_rag_facts=6) as rt:
        [out] = await rt.handler("llm")([await _work(rt, "a scary horror night", "f1")])
    [(role, data)] = sent(llm_server)
    assert role == "rank_rag"
    facts = data["facts"]
    assert 0 < len(facts) <= 6
    # the relation filter: only genres the request names (horror), then years
    assert {tuple(f[1:]) for f in facts if f[1] == "has genre"} == {("has genre", "Horror")}
    assert all(f[0] in {c["title"] for c in data["candidates"]} for f in facts)
    assert isinstance(out.event, Recommendation) and out.event.rung == "llm"


async def test_without_facts_the_plain_ranking_prompt_is_used(
    open_runtime: OpenRuntime, llm_server: LLMTestServer
) -> None:
    async with open_runtime(["requests", "llm"], llm=llm_server) as rt:
        await rt.handler("llm")([await _work(rt, "a scary horror night", "f2")])
    [(role, data)] = sent(llm_server)
    assert role == "rank" and "facts" not in data and "examples" not in data


async def test_few_shot_examples_are_chosen_per_call(
    open_runtime: OpenRuntime, llm_server: LLMTestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 24 items in the test catalog: a shorter prompt leaves items of each genre outside it
    monkeypatch.setattr(coldstart, "PROMPT_CANDIDATES", 3)
    async with open_runtime(["requests", "llm"], llm=llm_server, llm_rank_style="few_shot") as rt:
        await rt.handler("llm")([await _work(rt, "a funny comedy", "e1")])
        await rt.handler("llm")([await _work(rt, "a scary horror night", "e2")])
    (role1, comedy), (role2, horror) = sent(llm_server)
    assert role1 == role2 == "rank_few_shot"
    assert [e["request"] for e in comedy["examples"]] == ["I enjoy comedy films"]
    assert [e["request"] for e in horror["examples"]] == ["I enjoy horror films"]
    for data in (comedy, horror):
        candidates = {c["id"] for c in data["candidates"]}
        shown = {i["id"] for e in data["examples"] for i in e["ranking"]}
        assert shown and not shown & candidates, "an example never answers its own question"


async def test_two_step_chain_of_thought_ranks_with_the_first_calls_analysis(
    open_runtime: OpenRuntime, llm_server: LLMTestServer
) -> None:
    async with open_runtime(["requests", "llm"], llm=llm_server, llm_rank_style="two_step") as rt:
        [out] = await rt.handler("llm")([await _work(rt, "a funny comedy", "t1")])
    (first, _), (second, data) = sent(llm_server)
    assert (first, second) == ("rank_cot", "rank")
    assert data["user"]["analysis"].startswith("The history leans")
    rec = out.event
    assert isinstance(rec, Recommendation) and rec.rung == "llm"
    # both calls are paid for
    assert rec.llm.prompt_tokens > sum(1 for _ in data["candidates"]) * 5


async def test_two_stage_blend_reorders_the_llm_list(
    open_runtime: OpenRuntime, llm_server: LLMTestServer
) -> None:
    async with open_runtime(["requests", "llm"], llm=llm_server) as rt:
        [plain] = await rt.handler("llm")([await _work(rt, "a scary horror night", "b1")])
    async with open_runtime(["requests", "llm"], llm=llm_server, llm_blend_model_weight=0.6) as rt:
        [blended] = await rt.handler("llm")([await _work(rt, "a scary horror night", "b2")])
    a, b = plain.event, blended.event
    assert isinstance(a, Recommendation) and isinstance(b, Recommendation)
    # the test server ranks by id (m10 < m11 < ...); the blend brings the stated
    # context's nearest items (horror) up
    horror = {i for i, _, g in MOVIES if "Horror" in g}
    top_a = [i.item_id for i in a.items[:3]]
    top_b = [i.item_id for i in b.items[:3]]
    assert len(set(top_b) & horror) > len(set(top_a) & horror), (top_a, top_b)
    assert b.rung == "llm"


async def test_dialogue_turns_go_in_the_ranking_context(llm_server: LLMTestServer) -> None:
    turns = [Turn("user" if n % 2 == 0 else "assistant", f"turn {n}") for n in range(7)]
    candidates = [Item(i, t) for i, t in list(TITLES.items())[:4]]
    async with LLMPool(llm_settings(llm_server)) as pool:
        llm = LLM(pool)
        await llm.rank(UserContext(query="funny", dialogue=turns), candidates, k=2, deadline=10)
    [(_, data)] = sent(llm_server)
    # the last five turns (Chat-Rec), oldest first
    assert [t["text"] for t in data["user"]["dialogue"]] == [f"turn {n}" for n in range(2, 7)]


def test_best_draft_prefers_the_coherent_informative_one() -> None:
    item = ItemRecord("m8", "Star Voyage (1995)", {}, False)
    evidence = [
        Evidence("history_item", item_id="m9"),
        Evidence("attribute", name="genre", value="Sci-Fi"),
    ]
    titles = {"m9": "Galaxy Outpost (1995)"}
    vague = "Recommended because it shares themes with items you enjoyed."
    partial = "Star Voyage is a fine pick for you."
    full = "Star Voyage is Sci-Fi like Galaxy Outpost, which you watched."
    assert best_draft([vague, partial, full], item, evidence, titles) == full
    assert best_draft([vague, partial], item, evidence, titles) == partial
    assert best_draft([vague], item, evidence, titles) == vague


async def test_xrec_drafts_are_generated_checked_and_the_best_kept(
    open_runtime: OpenRuntime, llm_server: LLMTestServer
) -> None:
    from tests.workers.test_paths import history

    async with open_runtime(
        ["interactions", "requests", "explain"],
        llm=llm_server,
        llm_pool={"cache_enabled": False},
        explain_llm_routes=frozenset({"model"}),
        explain_candidates=3,
    ) as rt:
        await rt.handler("interactions")(history("fan", ["m8", "m9", "m10", "m22"]))
        [rec] = await rt.handler("requests")([RecommendationRequest("rx", "fan", 5, 0)])
        assert isinstance(rec.event, Recommendation)
        top = rec.event.items[0].item_id
        name = TITLES[top]
        drafts = [
            f"You will love {name} as much as Zombie Harbor.",  # names a foreign title
            "Recommended because it shares themes with items you enjoyed.",
            f"{name} is recommended: it suits what you watch.",
        ]
        llm_server.script(
            roles={
                "explain": [
                    Behaviour(
                        kind="content",
                        content=orjson.dumps(
                            {"item_id": top, "text": t, "evidence": ["m8", "m9", "m10", "m22"]}
                        ).decode(),
                    )
                    for t in drafts
                ]
            }
        )
        outs = await rt.handler("explain")([rec.event])
    [first] = [o.event for o in outs if getattr(o.event, "item_id", None) == top]
    assert isinstance(first, Explanation)
    assert sum(1 for role, _ in sent(llm_server) if role == "explain") == 3
    drafts_seen = [d.get("draft") for role, d in sent(llm_server) if role == "explain"]
    assert sorted(drafts_seen, key=str) == sorted([None, 2, 3], key=str)
    assert first.source == "llm" and first.text == drafts[2], first.text


async def test_listwise_rerank_shows_initial_scores_and_unplaced_items_keep_their_order(
    llm_server: LLMTestServer,
) -> None:
    candidates = [Item(f"c{n}", f"Film {n}") for n in range(1, 7)]
    # a model that places only c5 and c3, whatever order it is shown
    body = orjson.dumps({"ranking": ["c5", "c3"]}).decode()
    llm_server.script(default=Behaviour(kind="content", content=body))
    scores = {c.id: 1.0 - n / 10 for n, c in enumerate(candidates)}
    async with LLMPool(llm_settings(llm_server, cache_enabled=False)) as pool:
        llm = LLM(pool)
        result = await llm.rerank(
            UserContext(query="calm"),
            candidates,
            k=6,
            deadline=10,
            permutations=3,
            initial_scores=scores,
        )
    calls = sent(llm_server)
    assert len(calls) == 3
    assert all(
        c["initial_score"] == pytest.approx(scores[c["id"]])
        for _, d in calls
        for c in d["candidates"]
    )
    # shuffled orders differ, yet the unplaced items follow the caller's order
    assert len({tuple(c["id"] for c in d["candidates"]) for _, d in calls}) > 1
    assert result.item_ids == ("c5", "c3", "c1", "c2", "c4", "c6")
