"""The recommendation logic of every role, on the real Redis, without Kafka.

The scorer is the in-memory one (tests/workers/memory_scorer.py) and the LLM,
where a test wants one, is the scripted LLM TEST SERVER (not a model).
"""

from __future__ import annotations

import asyncio
import time

import orjson
import pytest

from contracts import (
    CODECS,
    CatalogChange,
    ChatMessage,
    ChatReply,
    Explanation,
    Interaction,
    LLMWork,
    Recommendation,
    RecommendationRequest,
)
from tests.workers.catalog_data import MOVIES
from tests.workers.conftest import OpenRuntime
from workers.outputs import Output
from workers.testing.llm_server import Behaviour, LLMTestServer

pytestmark = pytest.mark.integration

MIN = 60_000
TITLES = {item_id: f"{title} (1995)" for item_id, title, _ in MOVIES}
GENRES = {item_id: set(genres) for item_id, _, genres in MOVIES}


def rating(eid: str, user: str, item: str, ts_ms: int, value: float = 5.0) -> Interaction:
    return Interaction(eid, user, item, "rating", ts_ms, rating=value)


def history(
    user: str, items: list[str], start_ms: int = 10 * MIN, tag: str = "e"
) -> list[Interaction]:
    return [rating(f"{user}-{tag}{n}", user, i, start_ms + n * MIN) for n, i in enumerate(items)]


def encoded(outputs: list[Output]) -> dict[str, bytes]:
    return {o.output_id: CODECS[o.topic].encode(o.event) for o in outputs}


# --- interactions ---------------------------------------------------------------


async def test_triggers_debounce_in_event_time_and_replays_emit_nothing_new(
    open_runtime: OpenRuntime,
) -> None:
    """Windows open by event time, so the first pass decides; any replay, batched in
    any way, re-emits only causes that opened a window, with identical content."""
    events: list[Interaction] = []
    for u in range(4):
        # Events 5 s apart within a burst (one window), bursts 5 minutes apart (new windows).
        for burst in range(3):
            for n in range(4):
                ts = 10 * MIN + burst * 5 * MIN + n * 5_000
                item = MOVIES[(u * 5 + burst * 3 + n) % len(MOVIES)][0]
                events.append(rating(f"u{u}-b{burst}-n{n}", f"u{u}", item, ts))
    async with open_runtime(["interactions"], stream={"debounce_ms": 30_000}) as rt:
        handle = rt.handler("interactions")
        first: list[Output] = []
        for start in range(0, len(events), 4):  # one batch per burst
            first += await handle(events[start : start + 4])
        emitted = encoded(first)
        # One list per user and burst: windows are 5 minutes apart in event time.
        assert len(emitted) == 4 * 3
        for size in (3, 50, 1):
            again: list[Output] = []
            for start in range(0, len(events), size):
                again += await handle(events[start : start + size])
            replayed = encoded(again)
            assert set(replayed) <= set(emitted), "a replay opened a new window"
            assert all(replayed[i] == emitted[i] for i in replayed), "content changed"
        print(f"\n{len(events)} events -> {len(emitted)} lists; 3 replays: nothing new")


async def test_redelivered_trigger_reemits_the_list_it_emitted_not_a_newer_one(
    open_runtime: OpenRuntime,
) -> None:
    async with open_runtime(["interactions"]) as rt:
        handle = rt.handler("interactions")
        batch = history("u1", ["m1", "m2", "m3", "m4"])
        first = encoded(await handle(batch))
        assert len(first) == 1
        # Newer events change the user's state before the old batch comes back.
        later = history("u1", ["m5", "m6", "m7", "m8"], start_ms=100 * MIN, tag="later")
        second = encoded(await handle(later))
        assert set(second).isdisjoint(first)
        redelivered = encoded(await handle(batch))
        assert redelivered == first, "a redelivery must re-emit the same bytes"


# --- requests and the llm role -----------------------------------------------------


async def test_requests_route_warm_to_model_cold_to_popular_and_context_to_llm(
    open_runtime: OpenRuntime, llm_server: LLMTestServer
) -> None:
    async with open_runtime(["interactions", "requests"], llm=llm_server) as rt:
        await rt.handler("interactions")(history("warm", ["m1", "m2", "m3", "m22"]))
        await rt.popular.refresh()
        requests = [
            RecommendationRequest("r-warm", "warm", 5, 0),
            RecommendationRequest("r-cold", "cold", 5, 0),
            RecommendationRequest("r-ctx", "cold2", 5, 0, context={"query": "scary horror films"}),
        ]
        out = await rt.handler("requests")(requests)
    by_cause = {
        o.event.cause.id: o.event for o in out if isinstance(o.event, Recommendation | LLMWork)
    }
    warm, cold, ctx = by_cause["r-warm"], by_cause["r-cold"], by_cause["r-ctx"]
    assert isinstance(warm, Recommendation) and warm.rung == "model" and warm.route == "model"
    assert not {"m1", "m2", "m3", "m22"} & {i.item_id for i in warm.items}
    assert isinstance(cold, Recommendation) and cold.route == "popular"
    assert "without stated context" in (cold.reason or "")
    assert isinstance(ctx, LLMWork) and ctx.route == "llm_cold"
    assert ctx.query == "scary horror films" and ctx.fallback_items
    assert ctx.deadline_ms > ctx.ts_ms
    assert not llm_server.records, "the requests role never calls the LLM"


async def test_without_an_llm_cold_context_requests_are_answered_at_once(
    open_runtime: OpenRuntime,
) -> None:
    async with open_runtime(["requests"]) as rt:
        out = await rt.handler("requests")(
            [RecommendationRequest("r1", "nobody", 5, 0, context={"query": "scary horror films"})]
        )
    [rec] = [o.event for o in out]
    assert isinstance(rec, Recommendation) and rec.route == "popular"
    assert "no LLM is configured" in (rec.reason or "")


async def _work(rt, query: str, request_id: str, deadline_ms: int = 2000) -> LLMWork:  # type: ignore[no-untyped-def]
    [out] = await rt.handler("requests")(
        [RecommendationRequest(request_id, f"user-{request_id}", 5, 0, context={"query": query})]
    )
    assert isinstance(out.event, LLMWork)
    return out.event


async def test_llm_role_ranks_cold_users_then_serves_the_cached_answer(
    open_runtime: OpenRuntime, llm_server: LLMTestServer
) -> None:
    async with open_runtime(["requests", "llm"], llm=llm_server) as rt:
        work = await _work(rt, "funny comedy", "q1")
        [first] = await rt.handler("llm")([work])
        work2 = await _work(rt, "funny comedy", "q2")
        [second] = await rt.handler("llm")([work2])
        calls = len(llm_server.records)
    rec, rec2 = first.event, second.event
    assert isinstance(rec, Recommendation) and isinstance(rec2, Recommendation)
    assert rec.rung == "llm" and rec.strategy == "llm" and rec.llm.used
    assert rec.llm.prompt_tokens > 0
    assert len(rec.items) == 5 and {i.item_id for i in rec.items} <= set(TITLES)
    # The same stated context and candidates: the pool's cache answers, no new call.
    assert rec2.rung == "llm_cached" and calls == 1
    assert [i.item_id for i in rec2.items] == [i.item_id for i in rec.items]


@pytest.mark.parametrize(
    "behaviour,why",
    [
        (Behaviour(kind="status", status=500), "LLM"),
        (Behaviour(kind="malformed"), "LLM"),
        (Behaviour(kind="hang"), "LLM"),
    ],
    ids=["5xx", "broken-json", "hang"],
)
async def test_llm_outage_answers_every_cold_ask_by_a_lower_rung_in_time(
    open_runtime: OpenRuntime, llm_server: LLMTestServer, behaviour: Behaviour, why: str
) -> None:
    llm_server.script(default=behaviour)
    async with open_runtime(["requests", "llm"], llm=llm_server, request_deadline_ms=800) as rt:
        works = [await _work(rt, f"scary horror films {n}", f"o{n}") for n in range(6)]
        started = time.monotonic()
        out = await rt.handler("llm")(works)
        elapsed = time.monotonic() - started
    recs = [o.event for o in out]
    assert len(recs) == 6 and all(isinstance(r, Recommendation) for r in recs)
    for rec in recs:
        assert isinstance(rec, Recommendation)
        assert rec.rung in {"model", "popular", "fresh"} and not rec.llm.used
        assert why in (rec.reason or "") and len(rec.items) == 5
    # Text similarity to "scary horror films" is the model rung here: horror first.
    assert all(
        "Horror" in GENRES[r.items[0].item_id] for r in recs if isinstance(r, Recommendation)
    )
    print(f"\n{behaviour.kind}: 6 cold asks answered by a lower rung in {elapsed:.2f}s")


async def test_work_past_its_deadline_is_answered_without_calling_the_llm(
    open_runtime: OpenRuntime, llm_server: LLMTestServer
) -> None:
    async with open_runtime(["requests", "llm"], llm=llm_server, request_deadline_ms=50) as rt:
        work = await _work(rt, "scary horror films", "late")
        await asyncio.sleep(0.2)
        [out] = await rt.handler("llm")([work])
    assert isinstance(out.event, Recommendation)
    assert "deadline passed" in (out.event.reason or "") and not llm_server.records


async def test_redelivered_llm_work_reemits_the_same_answer(
    open_runtime: OpenRuntime, llm_server: LLMTestServer
) -> None:
    async with open_runtime(["requests", "llm"], llm=llm_server) as rt:
        work = await _work(rt, "funny comedy", "again")
        first = encoded(await rt.handler("llm")([work]))
        llm_server.script(default=Behaviour(kind="status", status=500))
        again = encoded(await rt.handler("llm")([work]))
        requested_again = encoded(
            await rt.handler("requests")(
                [
                    RecommendationRequest(
                        "again", "user-again", 5, 0, context={"query": "funny comedy"}
                    )
                ]
            )
        )
    assert again == first
    # The request redelivered after the answer: the stored answer, not new work.
    assert requested_again == first


# --- chat -------------------------------------------------------------------------


def chat(session: str, user: str, n: int, text: str) -> ChatMessage:
    return ChatMessage(f"{session}-m{n}", session, user, text, 1_000 + n)


async def _conversation(rt, session: str, user: str, texts: list[str]) -> list[ChatReply]:  # type: ignore[no-untyped-def]
    replies = []
    for n, text in enumerate(texts):
        [out] = await rt.handler("chat")([chat(session, user, n, text)])
        assert isinstance(out.event, ChatReply)
        replies.append(out.event)
    return replies


async def test_stated_preferences_change_the_items_and_dislikes_never_return(
    open_runtime: OpenRuntime,
) -> None:
    async with open_runtime(["chat", "requests"]) as rt:
        greet, comedy, no_laugh, horror_off = await _conversation(
            rt,
            "s1",
            "newbie",
            ["hello", "I'd like a comedy", "not Laugh Riot", "no horror please"],
        )
        [later] = await rt.handler("requests")([RecommendationRequest("after", "newbie", 20, 0)])
    assert greet.state == "preference_elicitation" and not greet.items
    assert "history" not in greet.text and "history" not in comedy.text
    comedy_items = [i.item_id for i in comedy.items]
    assert comedy_items and all("Comedy" in GENRES[i] for i in comedy_items[:3])
    assert "m1" not in {i.item_id for i in no_laugh.items}
    assert "m1" not in {i.item_id for i in horror_off.items}
    assert not any("Horror" in GENRES[i.item_id] for i in horror_off.items)
    assert isinstance(later.event, Recommendation)
    assert "m1" not in {i.item_id for i in later.event.items}, "a dislike returned elsewhere"


async def test_a_user_with_history_hears_about_it_and_one_without_never_does(
    open_runtime: OpenRuntime,
) -> None:
    async with open_runtime(["chat", "interactions"]) as rt:
        await rt.handler("interactions")(history("fan", ["m8", "m9", "m10"]))
        [warm] = await _conversation(rt, "s2", "fan", ["something to watch tonight"])
        [cold] = await _conversation(rt, "s3", "stranger", ["something to watch tonight"])
    assert "the 3 titles in your history" in warm.text
    assert "history" not in cold.text


async def test_more_like_an_item_and_acceptance_end_the_task(open_runtime: OpenRuntime) -> None:
    async with open_runtime(["chat"]) as rt:
        replies = await _conversation(
            rt, "s4", "newbie2", ["more like Star Voyage", "great, thanks"]
        )
    first, done = replies
    assert first.items and "Sci-Fi" in GENRES[first.items[0].item_id]
    assert "m8" not in {i.item_id for i in first.items}
    assert done.state == "feedback" and done.intent == "feedback"


async def test_redelivered_chat_message_reemits_its_reply_and_keeps_the_session(
    open_runtime: OpenRuntime,
) -> None:
    async with open_runtime(["chat"]) as rt:
        handle = rt.handler("chat")
        m0, m1 = chat("s5", "u", 0, "a comedy please"), chat("s5", "u", 1, "not The Funny Farm")
        first = encoded(await handle([m0]))
        second = encoded(await handle([m1]))
        assert encoded(await handle([m0])) == first
        assert encoded(await handle([m1])) == second
        raw = await rt.redis.client.get(rt.redis.key("chat", "{s5}"))
    assert raw is not None and b'"turn_no":2' in raw


async def test_complex_chat_uses_the_llm_extractor_and_falls_back_to_rules(
    open_runtime: OpenRuntime, llm_server: LLMTestServer
) -> None:
    text = "something like Star Voyage but not so scary, and without romance, for the weekend"
    async with open_runtime(["chat"], llm=llm_server) as rt:
        [with_llm] = await _conversation(rt, "s6", "u6", [text])
        llm_server.script(default=Behaviour(kind="status", status=503))
        # Another wording (the same one would be answered from the LLM cache).
        [without] = await _conversation(rt, "s7", "u7", [text.replace("weekend", "evening")])
    assert with_llm.source == "llm" and "complex message" in (with_llm.reason or "")
    assert without.source == "model" and "LLM" in (without.reason or "")
    assert without.items, "the rules' reading still answers"


# --- explanations ------------------------------------------------------------------


async def test_every_item_gets_a_grounded_template_explanation_with_evidence(
    open_runtime: OpenRuntime,
) -> None:
    async with open_runtime(["interactions", "requests", "explain"]) as rt:
        await rt.handler("interactions")(history("fan", ["m8", "m9", "m10", "m22"]))
        [rec] = await rt.handler("requests")([RecommendationRequest("rx", "fan", 5, 0)])
        out = await rt.handler("explain")([rec.event])
    assert isinstance(rec.event, Recommendation)
    expl = [o.event for o in out]
    assert len(expl) == len(rec.event.items)
    for e in expl:
        assert isinstance(e, Explanation) and e.source == "template"
        cited = {ev.item_id for ev in e.evidence if ev.kind == "history_item"}
        assert cited <= {"m8", "m9", "m10", "m22"}
        for item_id in set(TITLES) - cited - {e.item_id}:
            assert TITLES[item_id] not in e.text


async def test_llm_explanations_pass_grounding_or_are_replaced(
    open_runtime: OpenRuntime, llm_server: LLMTestServer
) -> None:
    async with open_runtime(
        ["interactions", "requests", "explain"],
        llm=llm_server,
        llm_pool={"cache_enabled": False},
        explain_llm_routes=frozenset({"model"}),  # default: LLM routes only
    ) as rt:
        await rt.handler("interactions")(history("fan", ["m8", "m9", "m10", "m22"]))
        [rec] = await rt.handler("requests")([RecommendationRequest("ry", "fan", 5, 0)])
        assert isinstance(rec.event, Recommendation)
        good = [o.event for o in await rt.handler("explain")([rec.event])]
        top = rec.event.items[0].item_id
        # A "model" that names an item outside the evidence, then one that adds a link.
        bad_texts = [
            "You will love it as much as Zombie Harbor.",
            "See www.example-deals.com for more.",
        ]
        replaced = []
        for n, bad in enumerate(bad_texts):
            user = f"fan{n}"
            await rt.handler("interactions")(history(user, ["m8", "m9", "m10", "m22"][n:]))
            body = orjson.dumps({"item_id": top, "text": bad, "evidence": []}).decode()
            llm_server.script(default=Behaviour(kind="content", content=body))
            [again] = await rt.handler("requests")([RecommendationRequest(f"rz{n}", user, 5, 0)])
            assert isinstance(again.event, Recommendation)
            first_item = again.event.items[0].item_id
            replaced += [
                o.event
                for o in await rt.handler("explain")([again.event])
                if getattr(o.event, "item_id", None) == first_item
            ]
    llm_written = [e for e in good if isinstance(e, Explanation) and e.source == "llm"]
    assert len(llm_written) == 1, "one LLM-written explanation per list by default"
    assert len(replaced) == 2
    assert all(isinstance(e, Explanation) and e.source == "template" for e in replaced), replaced
    texts = [e.text for e in replaced if isinstance(e, Explanation)]
    assert not any("Zombie Harbor" in t or "www." in t for t in texts), texts


# --- enrichment ----------------------------------------------------------------------


async def test_enrichment_adds_llm_features_to_new_thin_items_only(
    open_runtime: OpenRuntime, llm_server: LLMTestServer
) -> None:
    new = CatalogChange("cat-new", "new-1", "upsert", 5_000, title="Nightfall", attributes={})
    trained = CatalogChange("cat-m1b", "m1", "upsert", 5_000, title="Laugh Riot", attributes={})
    async with open_runtime(["catalog", "enrich"], llm=llm_server) as rt:
        await rt.handler("catalog")([new, trained])
        await rt.handler("enrich")([new, trained])
        await rt.catalog.refresh()
        record = rt.catalog.items["new-1"]
    assert len(llm_server.records) == 1, "only the item known from text alone is sent"
    assert record.attributes.get("themes") == ["friendship"]
    assert "Themes: friendship." in record.text


async def test_model_lists_get_template_explanations_by_default(
    open_runtime: OpenRuntime, llm_server: LLMTestServer
) -> None:
    async with open_runtime(["interactions", "requests", "explain"], llm=llm_server) as rt:
        await rt.handler("interactions")(history("fan", ["m8", "m9", "m10", "m22"]))
        [rec] = await rt.handler("requests")([RecommendationRequest("rd", "fan", 5, 0)])
        out = await rt.handler("explain")([rec.event])
    assert {getattr(o.event, "source", None) for o in out} == {"template"}
    assert not llm_server.records


async def test_the_deadline_holds_when_the_llm_role_lags(
    open_runtime: OpenRuntime, llm_server: LLMTestServer
) -> None:
    """At the deadline the requests role's guard emits the fallback; the llm role,
    answering later, re-emits that same content: one answer, in time."""
    emitted: list[Output] = []

    async def collect(outputs: list[Output]) -> None:
        emitted.extend(outputs)

    async with open_runtime(["requests", "llm"], llm=llm_server, request_deadline_ms=300) as rt:
        rt.set_emitter(collect)
        work = await _work(rt, "scary horror films", "lagging")
        for _ in range(50):
            if emitted:
                break
            await asyncio.sleep(0.1)
        [late] = await rt.handler("llm")([work])
    [guarded] = emitted
    assert isinstance(guarded.event, Recommendation)
    assert "no LLM answer by the deadline" in (guarded.event.reason or "")
    assert guarded.event.rung in {"popular", "fresh"}
    assert encoded([late]) == encoded([guarded]), "the late answer re-emits the stored one"
    assert not llm_server.records, "a late llm role does not call the LLM"
