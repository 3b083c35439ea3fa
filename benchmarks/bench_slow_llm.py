"""An LLM slower than Kafka's poll interval must not slow the interactions path.

Two phases in one run, each on its own topics and keys, the same input: N
MovieLens-100k ratings with 10% of users arriving cold with a stated-context
request and ~2% chat turns, pre-filled, then drained by one ``recstream
worker --role all``:

    A  no LLM configured (the LLM paths fall back at once);
    B  the LLM TEST SERVER (not a model) answering every call after 30 s.

Reported: interactions applied per second in each phase and B/A (target
>= 0.9), the group joins of the worker in each phase (a rebalance loop would
show as many), and how phase B's cold requests were answered (rung, and the
largest gap between request and answer against the deadline).

    .venv/bin/python benchmarks/bench_slow_llm.py --events 20000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench_streams import Worker, _produce, _settings, wait_applied

from contracts import CODECS, ChatMessage, Recommendation, topics
from streams.kafka import ensure_topics, topic_reader
from streams.replay import ml100k_events, ml100k_folder
from workers.settings import Settings
from workers.testing.llm_server import Behaviour, LLMTestServer


def _records(settings: Settings, n: int) -> tuple[list[Any], list[tuple[str, bytes, bytes]]]:
    catalog, stream = ml100k_events(
        ml100k_folder(settings), limit=n, cold_share=0.1, chat_share=0.02
    )
    records = []
    for topic, event in stream:
        key = event.session_id if isinstance(event, ChatMessage) else event.user_id
        records.append((topic, key.encode(), CODECS[topic].encode(event)))
    return catalog, records


async def _send(settings: Settings, records: list[tuple[str, bytes, bytes]]) -> None:
    by_topic: dict[str, list[tuple[bytes, bytes]]] = {}
    for topic, key, value in records:
        by_topic.setdefault(topic, []).append((key, value))
    for topic, items in by_topic.items():
        await _produce(settings, topic, items)


def _users(records: list[tuple[str, bytes, bytes]]) -> tuple[list[str], int]:
    users = {key.decode() for topic, key, _ in records if topic == topics.INTERACTIONS}
    return sorted(users), sum(1 for topic, _, _ in records if topic == topics.INTERACTIONS)


async def _phase(n: int, llm_url: str | None, port: int) -> dict[str, Any]:
    """Warm the worker on the first 10% (catalog embedding, model load), then time
    how fast it applies the remaining interactions while the other roles run."""
    settings = _settings("slow" if llm_url else "nollm")
    await ensure_topics(settings.kafka)
    catalog, records = _records(settings, n)
    await _produce(
        settings,
        topics.CATALOG,
        [(c.item_id.encode(), CODECS[topics.CATALOG].encode(c)) for c in catalog],
    )
    split = len(records) // 10
    warm, timed = records[:split], records[split:]
    await _send(settings, warm)
    env = {"RECSTREAM_LLM_BASE_URL": llm_url, "RECSTREAM_LLM_RPM": "0"} if llm_url else {}
    worker = Worker(settings, "all", port, **env)
    worker.log = settings.home / "logs" / f"bench-slow-llm-{'b' if llm_url else 'a'}.log"
    async with worker:
        warm_users, warm_n = _users(warm)
        await wait_applied(settings, warm_users, warm_n, poll=0.1)
        await asyncio.sleep(5)  # let the catalog embedding and first lists settle
        all_users, all_n = _users(records)
        await _send(settings, timed)
        eps = (all_n - warm_n) / await wait_applied(settings, all_users, all_n)
        cold = {
            CODECS[topics.REQUESTS].decode(v).request_id
            for t, _, v in records
            if t == topics.REQUESTS and b'"context":{' in v
        }
        answers = await _cold_answers(settings, cold)
    joins = worker.log.read_text(errors="replace").count("Joined group")
    return {"events": all_n - warm_n, "interactions_eps": eps, "group_joins": joins, **answers}


async def _cold_answers(settings: Settings, cold: set[str]) -> dict[str, Any]:
    """How the cold requests were answered: rung, and the time from the requests
    role's receipt to the answer (what the deadline bounds; not time in the backlog)."""
    consumer = topic_reader(settings.kafka, topics.RECOMMENDATIONS)
    await consumer.start()
    answered: dict[str, Recommendation] = {}
    deadline = time.monotonic() + 120
    try:
        while len(answered) < len(cold) and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                for r in records:
                    rec = CODECS[topics.RECOMMENDATIONS].decode(r.value)
                    if rec.cause.id in cold:
                        answered[rec.cause.id] = rec
    finally:
        await consumer.stop()
    waits = [rec.timings_ms.get("total", 0.0) for rec in answered.values()]
    return {
        "cold_requests": len(cold),
        "cold_answered": len(answered),
        "cold_rungs": dict(Counter(rec.rung or "" for rec in answered.values())),
        "cold_max_receipt_to_answer_ms": max(waits, default=None),
    }


async def run(n: int) -> dict[str, Any]:
    a = await _phase(n, None, 6290)
    async with LLMTestServer() as server:
        server.script(default=Behaviour(latency_s=30.0))
        b = await _phase(n, server.url, 6291)
        b["llm_calls_started"] = len(server.records)
    return {"no_llm": a, "slow_llm": b, "ratio": b["interactions_eps"] / a["interactions_eps"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    result = asyncio.run(run(args.events))
    a, b = result["no_llm"], result["slow_llm"]
    print(f"interactions applied, {args.events:,} events, worker --role all:")
    for label, phase in (("A no LLM:          ", a), ("B LLM at 30 s/call:", b)):
        eps, joins = phase["interactions_eps"], phase["group_joins"]
        print(f"  {label} {eps:>9,.0f} events/s, group joins {joins}")
    print(f"  B/A = {result['ratio']:.2f} (target >= 0.90)")
    print(
        f"  B cold requests: {b['cold_answered']}/{b['cold_requests']} answered, rungs "
        f"{b['cold_rungs']}, longest receipt->answer {b['cold_max_receipt_to_answer_ms']} ms "
        f"(deadline 2000 ms); "
        f"LLM calls started {b['llm_calls_started']}"
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
