"""Token efficiency of the LLM paths: tokens per recommendation, each strategy on and off.

The replay (MovieLens-100k ratings with 10% cold users carrying a stated
context and ~2% chat turns) is driven through the roles' handlers in one
process (workers.runtime, the code the workers run, without Kafka), on Redis,
the exported model (RECSTREAM_MODEL_DIR) and the LLM TEST SERVER (not a
model; it counts the tokens it receives and answers validly). One run per
configuration, each on fresh keys:

    all on       the defaults
    no cache     RECSTREAM_LLM_CACHE=false
    no batching  feature extraction and state calls one item per call
    no compress  a prompt budget large enough that nothing is cut
    no select    every request routed to the LLM (every user "cold", every
                 request carrying a stated context)
    one stage    100 candidates in the ranking prompt instead of 20

Reported per configuration: LLM calls, prompt + completion tokens, lists
emitted, tokens per list, and the ratio to "all on".

    .venv/bin/python benchmarks/bench_tokens.py --limit 3000
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import sys
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import redis.asyncio as aioredis

from contracts import (
    ChatMessage,
    Interaction,
    LLMWork,
    Recommendation,
    RecommendationRequest,
)
from streams.replay import ml100k_events, ml100k_folder
from workers import coldstart
from workers.llm import EndpointSettings, LLMSettings
from workers.roles import ROLES
from workers.runtime import Runtime
from workers.settings import Secret, Settings
from workers.testing.llm_server import LLMTestServer


def _configs(base: Settings, server: LLMTestServer) -> dict[str, Settings]:
    def llm(**pool: Any) -> LLMSettings:
        endpoint = EndpointSettings(
            name="test-server", base_url=server.url, api_key=Secret("x"), rpm=0, tpm=0
        )
        return LLMSettings(endpoints=(endpoint,), key_prefix=f"bt-{uuid.uuid4().hex[:6]}", **pool)

    serving = dataclasses.replace(base.serving, request_deadline_ms=20_000)
    on = dataclasses.replace(base, llm=llm(), serving=serving)
    return {
        "all on": on,
        "no cache": dataclasses.replace(on, llm=llm(cache_enabled=False)),
        "no batching": dataclasses.replace(on, llm=llm(batch_max_items=1)),
        "no compress": dataclasses.replace(on, llm=llm(max_prompt_tokens=100_000)),
        "no select": dataclasses.replace(
            on, stream=dataclasses.replace(on.stream, cold_threshold=10**9)
        ),
        "one stage": on,
    }


async def _drive(settings: Settings, events: list[tuple[str, Any]], catalog: list[Any]) -> int:
    """Feed the replay through every role's handler; return the lists emitted."""
    key = f"bt{uuid.uuid4().hex[:6]}"
    settings = dataclasses.replace(
        settings, redis=dataclasses.replace(settings.redis, key_prefix=key)
    )
    lists = 0
    async with Runtime(settings, list(ROLES.values())) as rt:
        await rt.handler("catalog")(catalog)
        await rt.handler("enrich")(catalog)
        for start in range(0, len(events), 200):
            batch = events[start : start + 200]
            inter = [e for t, e in batch if isinstance(e, Interaction)]
            reqs = [e for t, e in batch if isinstance(e, RecommendationRequest)]
            chats = [e for t, e in batch if isinstance(e, ChatMessage)]
            outs = await rt.handler("interactions")(inter) if inter else []
            outs += await rt.handler("requests")(reqs) if reqs else []
            work = [o.event for o in outs if isinstance(o.event, LLMWork)]
            outs += await rt.handler("llm")(work) if work else []
            recs = [o.event for o in outs if isinstance(o.event, Recommendation)]
            lists += len(recs)
            if recs:
                await rt.handler("explain")(recs)
            if chats:
                lists += len(await rt.handler("chat")(chats))
    client = aioredis.from_url(settings.redis.url.reveal())
    keys = [k async for k in client.scan_iter(match=f"{key}*", count=1000)]
    if keys:
        await client.delete(*keys)
    await client.aclose()
    return lists


async def run(limit: int) -> dict[str, Any]:
    base = Settings.from_env()
    catalog, stream = ml100k_events(
        ml100k_folder(base), limit=limit, cold_share=0.1, chat_share=0.02
    )
    events = [(t, e) for t, e in stream]
    everyone_states = [
        (t, dataclasses.replace(e, context={"query": "something good to watch tonight"}))
        if isinstance(e, RecommendationRequest) and not e.context
        else (t, e)
        for t, e in events
    ]
    results: dict[str, Any] = {}
    async with LLMTestServer() as server:
        for name, settings in _configs(base, server).items():
            server.reset()
            coldstart.PROMPT_CANDIDATES = 100 if name == "one stage" else 20
            replay = everyone_states if name == "no select" else events
            lists = await _drive(settings, replay, catalog)
            # Enrichment is a catalog cost (once per new item), kept apart from the
            # per-list cost of the stream's paths.
            stream = [r for r in server.records if r.role != "extract_features"]
            enrich = [r for r in server.records if r.role == "extract_features"]
            tokens = sum(r.tokens for r in stream)
            results[name] = {
                "llm_calls": len(stream),
                "tokens": tokens,
                "lists": lists,
                "tokens_per_list": tokens / max(lists, 1),
                "enrich_calls": len(enrich),
                "enrich_tokens": sum(r.tokens for r in enrich),
            }
            print(
                f"  {name:<12} {len(stream):>5} calls {tokens:>9,} tokens {lists:>6} lists "
                f"{tokens / max(lists, 1):>7.1f} tokens/list; enrichment {len(enrich)} calls "
                f"{results[name]['enrich_tokens']:,} tokens",
                flush=True,
            )
    coldstart.PROMPT_CANDIDATES = 20
    base_tpl = results["all on"]["tokens_per_list"] or 1.0
    for r in results.values():
        r["ratio_to_all_on"] = r["tokens_per_list"] / base_tpl
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit", type=int, default=3000, help="ratings replayed")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    print(f"token efficiency, {args.limit:,} ratings, 10% cold with context, ~2% chat:")
    results = asyncio.run(run(args.limit))
    for name, r in results.items():
        print(f"  {name:<12} tokens/list x{r['ratio_to_all_on']:.2f} of all on")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
