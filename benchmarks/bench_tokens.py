"""Token efficiency of the LLM paths: tokens per recommendation, each strategy on and off.

The replay (MovieLens-100k ratings with 10% cold users carrying a stated
context and ~2% chat turns, plus ``--new-items`` thin-text catalog items the
model was not trained on, so the enrichment path has work) is driven through
the roles' handlers in one process (workers.runtime, the code the workers
run, without Kafka), on Redis, the exported model (RECSTREAM_MODEL_DIR) and
the LLM TEST SERVER (not a model: it counts the tokens it receives and
answers validly). One run per arm, each on fresh Redis keys and a fresh LLM
cache prefix:

    all on        the defaults (every strategy on; the seed's optional mechanisms off)
    no compress   a prompt budget large enough that nothing is ever cut
    no batching   feature extraction (and state) calls one item per call
    no cache      RECSTREAM_LLM_CACHE=false
    no select     the policy off: every user cold, every request carrying a
                  stated context (its user's liked genres so far, so prompts
                  differ as real ones would), every chat message to the LLM
    one stage     100 candidates in the ranking prompt instead of 20

and, on the "no select" replay (the LLM on every ask, so there is LLM work to
save or spend): caching off, and each of the seed's optional mechanisms on
(RA-Rec facts, few-shot examples per call, two-step chain of thought, three
XRec drafts), against "no select" itself.

Tokens are the pool's usage counters (prompt + completion, from the
responses), split into the stream's paths (ranking, chat, explanations) and
enrichment (a catalog cost, once per new item, reported per enriched item).
Tokens per recommendation = stream tokens / lists emitted (recommendation
lists + chat replies with items). Explanation quality (workers.quality:
relevance, informativeness, coherence) is computed over every explanation
the explain role emitted in the "all on" arm.

    .venv/bin/python benchmarks/bench_tokens.py --limit 3000 \\
        --out benchmarks/results/tokens-2026-11-30
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import re
import statistics
import sys
import time
import uuid
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import orjson
import redis.asyncio as aioredis

from contracts import (
    CatalogChange,
    ChatMessage,
    ChatReply,
    Explanation,
    Interaction,
    LLMWork,
    Recommendation,
    RecommendationRequest,
)
from streams.replay import CATALOG_TS_MS, ml100k_events, ml100k_folder
from workers import coldstart, quality
from workers.catalog import display_title
from workers.llm import EndpointSettings, LLMSettings
from workers.llm import metrics as llm_metrics
from workers.roles import ROLES
from workers.runtime import Runtime
from workers.settings import Secret, Settings
from workers.testing.llm_server import LLMTestServer

ENDPOINT = "test-server"
# Arms beyond the five strategies, against "no select" (the LLM on every ask).
EXTRA = {
    "no select, no cache": "caching off",
    "no select + rag facts": "RA-Rec facts (10) in the ranking prompt",
    "no select + few shot": "few-shot examples chosen per call",
    "no select + two step": "two-step chain of thought",
    "no select + 3 drafts": "XRec: 3 explanation drafts, best kept",
}
# Which strategy each "off" arm takes away.
STRATEGY = {
    "no compress": "compression",
    "no batching": "batching",
    "no cache": "caching",
    "no select": "selective use",
    "one stage": "two-stage ranking",
}


def _configs(base: Settings, server: LLMTestServer) -> dict[str, Settings]:
    def llm(**pool: Any) -> LLMSettings:
        endpoint = EndpointSettings(
            name=ENDPOINT, base_url=server.url, api_key=Secret("x"), rpm=0, tpm=0
        )
        return LLMSettings(endpoints=(endpoint,), key_prefix=f"bt-{uuid.uuid4().hex[:6]}", **pool)

    # Generous deadlines: the arms compare tokens, not the deadline ladder.
    serving = dataclasses.replace(base.serving, request_deadline_ms=20_000, chat_deadline_ms=20_000)
    on = dataclasses.replace(base, llm=llm(), serving=serving)
    arms = {
        "all on": on,
        "no compress": dataclasses.replace(on, llm=llm(max_prompt_tokens=1_000_000)),
        "no batching": dataclasses.replace(on, llm=llm(batch_max_items=1)),
        "no cache": dataclasses.replace(on, llm=llm(cache_enabled=False)),
        "no select": dataclasses.replace(
            on,
            llm=llm(),
            stream=dataclasses.replace(on.stream, cold_threshold=10**9),
            serving=dataclasses.replace(serving, chat_complex_at=0.0),
        ),
        "one stage": dataclasses.replace(on, llm=llm()),
    }
    # Where the LLM is used on every ask ("no select"): caching's effect at that scale,
    # and what each of the seed's optional mechanisms costs on top.
    every = arms["no select"]

    def also(**serving: Any) -> Settings:
        return dataclasses.replace(
            every, llm=llm(), serving=dataclasses.replace(every.serving, **serving)
        )

    arms |= {
        "no select, no cache": dataclasses.replace(every, llm=llm(cache_enabled=False)),
        "no select + rag facts": also(llm_rag_facts=10),
        "no select + few shot": also(llm_rank_style="few_shot"),
        "no select + two step": also(llm_rank_style="two_step"),
        "no select + 3 drafts": also(explain_candidates=3),
    }
    return arms


def _new_items(n: int) -> list[CatalogChange]:
    """Thin-text items the model never saw: the enrichment path's work."""
    names = ["Night Train", "Quiet Harbour", "Paper Moons", "Glass City", "Last Orchard"]
    return [
        CatalogChange(
            f"bt-new-{i}",
            f"bt-new-{i}",
            "upsert",
            CATALOG_TS_MS + 1,
            title=f"{names[i % len(names)]} {i}",
            attributes={"year": 1998},
        )
        for i in range(n)
    ]


def _stating_everyone(
    events: list[tuple[str, Any]], genres_of: dict[str, tuple[str, ...]]
) -> list[tuple[str, Any]]:
    """Every request without a context gets its user's liked genres so far as a query."""
    liked: dict[str, Counter[str]] = defaultdict(Counter)
    out = []
    for topic, e in events:
        if isinstance(e, Interaction) and (e.rating or 0) >= 4:
            liked[e.user_id].update(genres_of.get(e.item_id, ()))
        if isinstance(e, RecommendationRequest) and not e.context:
            top = [g.lower() for g, _ in liked[e.user_id].most_common(2)]
            query = f"I enjoy {' and '.join(top)} films" if top else "I like good films"
            out.append((topic, dataclasses.replace(e, context={"query": query})))
        else:
            out.append((topic, e))
    return out


def _tokens() -> tuple[float, float]:
    return (
        llm_metrics.TOKENS.labels(ENDPOINT, "prompt")._value.get(),
        llm_metrics.TOKENS.labels(ENDPOINT, "completion")._value.get(),
    )


def _cache() -> dict[str, float]:
    return {r: llm_metrics.CACHE.labels(r)._value.get() for r in ("hit", "miss", "shared")}


@dataclasses.dataclass
class Drive:
    lists: int = 0
    llm_lists: int = 0
    rungs: Counter[str] = dataclasses.field(default_factory=Counter)
    # route of every stated-context (cold-) request's answer, and why
    cold_routes: Counter[str] = dataclasses.field(default_factory=Counter)
    explanations: list[tuple[Explanation, list[str], set[str]]] = dataclasses.field(
        default_factory=list
    )
    enrich_tokens: float = 0.0
    stream_prompt: float = 0.0
    stream_completion: float = 0.0
    cache: dict[str, float] = dataclasses.field(default_factory=dict)


def _in_order(events: list[tuple[str, Any]], most: int = 200) -> list[list[tuple[str, Any]]]:
    """Batches of consecutive events of one kind (at most ``most``): a request is handled
    after the interactions before it and before those after it, as in the replay's order
    (a user's first rating, then their stated-context request, then more ratings)."""
    batches: list[list[tuple[str, Any]]] = []
    for event in events:
        last = batches[-1] if batches else None
        if last and type(last[0][1]) is type(event[1]) and len(last) < most:
            last.append(event)
        else:
            batches.append([event])
    return batches


async def _drive(
    settings: Settings,
    events: list[tuple[str, Any]],
    catalog: list[CatalogChange],
    genres_of: dict[str, tuple[str, ...]],
) -> Drive:
    """Feed the replay through every role's handler."""
    key = f"bt{uuid.uuid4().hex[:6]}"
    settings = dataclasses.replace(
        settings, redis=dataclasses.replace(settings.redis, key_prefix=key)
    )
    out = Drive()
    history: dict[str, list[str]] = defaultdict(list)
    stated: dict[str, set[str]] = defaultdict(set)
    genre_words = {g.lower(): g for gs in genres_of.values() for g in gs}
    async with Runtime(settings, list(ROLES.values())) as rt:
        p0, c0 = _tokens()
        await rt.handler("catalog")(catalog)
        await rt.handler("enrich")(catalog)
        p1, c1 = _tokens()
        out.enrich_tokens = (p1 - p0) + (c1 - c0)
        cache0 = _cache()
        for batch in _in_order(events):
            inter = [e for t, e in batch if isinstance(e, Interaction)]
            reqs = [e for t, e in batch if isinstance(e, RecommendationRequest)]
            chats = [e for t, e in batch if isinstance(e, ChatMessage)]
            for e in inter:
                history[e.user_id].append(e.item_id)
            for r in reqs:
                query = str((r.context or {}).get("query", "")).lower()
                stated[r.user_id] |= {
                    genre_words[w] for w in re.findall(r"[a-z'-]+", query) if w in genre_words
                }
            outs = await rt.handler("interactions")(inter) if inter else []
            outs += await rt.handler("requests")(reqs) if reqs else []
            work = [o.event for o in outs if isinstance(o.event, LLMWork)]
            outs += await rt.handler("llm")(work) if work else []
            recs = [o.event for o in outs if isinstance(o.event, Recommendation)]
            out.lists += len(recs)
            out.llm_lists += sum(r.route == "llm_cold" for r in recs)
            out.rungs.update(r.rung or "" for r in recs if r.route == "llm_cold")
            out.cold_routes.update(
                f"{r.route}: {(r.reason or '').split(';')[0]}"
                for r in recs
                if r.cause.id.startswith("cold-")
            )
            if recs:
                for o in await rt.handler("explain")(recs):
                    if isinstance(o.event, Explanation):
                        u = o.event.user_id
                        out.explanations.append((o.event, list(history[u]), set(stated[u])))
            if chats:
                replies = await rt.handler("chat")(chats)
                out.lists += sum(
                    1 for o in replies if isinstance(o.event, ChatReply) and o.event.items
                )
        p2, c2 = _tokens()
        out.stream_prompt, out.stream_completion = p2 - p1, c2 - c1
        cache1 = _cache()
        out.cache = {k: cache1[k] - cache0[k] for k in cache1}
    client = aioredis.from_url(settings.redis.url.reveal())
    keys = [k async for k in client.scan_iter(match=f"{key}*", count=1000)]
    if keys:
        await client.delete(*keys)
    await client.aclose()
    return out


def explanation_quality(
    drive: Drive, titles: dict[str, str], genres_of: dict[str, tuple[str, ...]]
) -> dict[str, Any]:
    """workers.quality over the emitted explanations, by source (llm / template)."""

    def names(item_id: str) -> list[str]:
        t = titles.get(item_id, "")
        return [n for n in {t, display_title(t), display_title(t, year=False)} if n]

    others = sorted(
        {n for t in titles.values() for n in (t, display_title(t)) if n}
        | {display_title(t, year=False) for t in titles.values() if len(t.split()) >= 3}
    )
    by_source: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for e, history, stated in drive.explanations:
        preferred = {g for i in history for g in genres_of.get(i, ())} | stated
        rel = quality.explanation_relevance(e.evidence, history=history, preferred=preferred)
        cited = [ev.item_id for ev in e.evidence if ev.kind == "history_item" and ev.item_id]
        terms = {
            "history": [n for i in cited for n in names(i)],
            "genre": [ev.value for ev in e.evidence if ev.kind == "attribute" and ev.value]
            + list(genres_of.get(e.item_id, ())),
            "popularity": ["trending", "popular"],
            "stated request": ["asked for", "you asked", "stated"],
        }
        coh = quality.coherence(
            e.text,
            item_names=names(e.item_id),
            evidence_names=[names(i) for i in cited],
            other_titles=others,
        )
        s = by_source[e.source]
        if rel is not None:
            s["relevance"].append(rel)
        s["evidence_aspects"].append(len(quality.evidence_aspects(e.evidence)))
        s["text_aspects"].append(len(quality.text_aspects(e.text, terms)))
        s["coherence"].append(coh.score)
        s["names_item"].append(coh.names_item)
        s["no_foreign_title"].append(coh.no_foreign_title)
        s["evidence_named"].append(coh.evidence_named)
        s["n"].append(1.0)
    return {
        src: {
            "explanations": len(v["n"]),
            "with_evidence": len(v["relevance"]),
            **{k: round(statistics.fmean(x), 4) for k, x in v.items() if k != "n" and x},
        }
        for src, v in by_source.items()
    }


async def run(limit: int, new_items: int, only: list[str]) -> dict[str, Any]:
    base = Settings.from_env()
    catalog, stream = ml100k_events(
        ml100k_folder(base), limit=limit, cold_share=0.1, chat_share=0.02
    )
    catalog = [*catalog, *_new_items(new_items)]
    events = list(stream)
    genres_of: dict[str, tuple[str, ...]] = {}
    titles = {c.item_id: c.title or c.item_id for c in catalog}
    for c in catalog:
        value = (c.attributes or {}).get("genres", ())
        genres_of[c.item_id] = tuple(value) if isinstance(value, tuple) else (str(value),)
    everyone_states = _stating_everyone(events, genres_of)
    counts = Counter(type(e).__name__ for _, e in events)
    cold = sum(1 for _, e in events if isinstance(e, RecommendationRequest) and e.context)
    print(
        f"replay: {len(events)} events {dict(counts)}, {cold} cold requests with context; "
        f"{new_items} thin-text new items",
        flush=True,
    )
    results: dict[str, Any] = {
        "events": len(events),
        "event_kinds": dict(counts),
        "cold_requests_with_context": cold,
        "new_items": new_items,
        "arms": {},
    }
    async with LLMTestServer() as server:
        for name, settings in _configs(base, server).items():
            if only and name not in only:
                continue
            server.reset()
            coldstart.PROMPT_CANDIDATES = 100 if name == "one stage" else 20
            replay = everyone_states if name.startswith("no select") else events
            started = time.monotonic()
            try:
                d = await _drive(settings, replay, catalog, genres_of)
            finally:
                coldstart.PROMPT_CANDIDATES = 20
            by_role = Counter(r.role for r in server.records)
            biggest: dict[str, int] = {}
            for rec in server.records:
                prompt = rec.tokens - int(orjson.loads(rec.body).get("max_tokens", 0))
                biggest[rec.role] = max(biggest.get(rec.role, 0), prompt)
            stream_calls = sum(n for role, n in by_role.items() if role != "extract_features")
            tokens = d.stream_prompt + d.stream_completion
            lookups = d.cache["hit"] + d.cache["miss"]
            row = {
                "llm_calls": stream_calls,
                "calls_by_role": dict(by_role),
                "prompt_tokens": int(d.stream_prompt),
                "completion_tokens": int(d.stream_completion),
                "tokens": int(tokens),
                "lists": d.lists,
                "llm_routed_lists": d.llm_lists,
                "llm_cold_rungs": dict(d.rungs),
                "stated_context_requests": dict(d.cold_routes),
                "tokens_per_list": round(tokens / max(d.lists, 1), 2),
                "tokens_per_llm_routed_list": round(tokens / max(d.llm_lists, 1), 2),
                "cache": d.cache,
                "cache_hit_rate": round(d.cache["hit"] / lookups, 4) if lookups else None,
                "largest_prompt_by_role": biggest,
                "enrich_calls": by_role.get("extract_features", 0),
                "enrich_tokens": int(d.enrich_tokens),
                "enrich_tokens_per_item": round(d.enrich_tokens / max(new_items, 1), 2),
                "explanations": len(d.explanations),
                "explanation_quality": explanation_quality(d, titles, genres_of),
                "wall_s": round(time.monotonic() - started, 1),
            }
            results["arms"][name] = row
            print(
                f"  {name:<12} {stream_calls:>5} calls {int(tokens):>9,} tokens "
                f"{d.lists:>6} lists {row['tokens_per_list']:>8.2f} tokens/list "
                f"(llm-routed {d.llm_lists}: {row['tokens_per_llm_routed_list']:.1f}); "
                f"cache hit {row['cache_hit_rate']}; enrichment {row['enrich_calls']} calls "
                f"{row['enrich_tokens_per_item']:.1f} tokens/item; {row['wall_s']} s",
                flush=True,
            )
    on = results["arms"].get("all on")
    if on:
        results["table"] = {}
        for arm, strategy in STRATEGY.items():
            off = results["arms"].get(arm)
            if off is None:
                continue
            metric = "enrich_tokens_per_item" if strategy == "batching" else "tokens_per_list"
            results["table"][strategy] = {
                "metric": metric,
                "on": on[metric],
                "off": off[metric],
                "off_over_on": round(off[metric] / on[metric], 3) if on[metric] else None,
            }
    every = results["arms"].get("no select")
    if every:
        results["with_the_llm_on_every_ask"] = {}
        for arm, what in EXTRA.items():
            row = results["arms"].get(arm)
            if row is None:
                continue
            results["with_the_llm_on_every_ask"][what] = {
                "tokens_per_list": row["tokens_per_list"],
                "baseline": every["tokens_per_list"],
                "over_baseline": round(row["tokens_per_list"] / every["tokens_per_list"], 3)
                if every["tokens_per_list"]
                else None,
            }
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit", type=int, default=3000, help="ratings replayed per arm")
    parser.add_argument("--new-items", type=int, default=40, help="thin-text items to enrich")
    parser.add_argument("--only", default="", help="comma-separated arms (default: all)")
    parser.add_argument("--out", type=Path, default=None, help="folder for result.json")
    args = parser.parse_args()
    print(
        f"token efficiency, {args.limit:,} ratings per arm, 10% cold with context, ~2% chat:",
        flush=True,
    )
    only = [a.strip() for a in args.only.split(",") if a.strip()]
    results = asyncio.run(run(args.limit, args.new_items, only))
    results["limit"] = args.limit
    print("\nstrategy            metric                     on        off   off/on")
    for strategy, row in results.get("table", {}).items():
        print(
            f"  {strategy:<18}{row['metric']:<24}{row['on']:>9.2f}{row['off']:>11.2f}"
            f"{row['off_over_on'] if row['off_over_on'] is not None else '-':>9}"
        )
    print("\nwith the LLM on every ask (no select), tokens/list against that arm:")
    for what, row in results.get("with_the_llm_on_every_ask", {}).items():
        print(
            f"  {what:<42}{row['tokens_per_list']:>9.2f}{row['baseline']:>9.2f}"
            f"{row['over_baseline'] if row['over_baseline'] is not None else '-':>9}"
        )
    q = results["arms"].get("all on", {}).get("explanation_quality", {})
    for src, v in q.items():
        print(f"  explanations ({src}): {json.dumps(v)}")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "result.json").write_bytes(
            orjson.dumps(results, option=orjson.OPT_INDENT_2) + b"\n"
        )
        print(f"wrote {args.out / 'result.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
