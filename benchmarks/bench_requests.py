"""The request path: throughput, latency against offered load, and where the time goes.

One run on fresh topics and keys: the catalog and N MovieLens-100k ratings
are applied by the catalog and interactions workers, then ``recstream worker
--role requests`` alone

    drains a backlog of requests (throughput, requests/s), then
    answers open-loop arrivals at each fixed rate (requests/s) for a few
    seconds each: p50/p99 of request -> recommendation (both Kafka record
    timestamps), and the time split by stage from each recommendation's own
    ``timings_ms``: state reads, candidates, scoring (the handler's stages),
    and the edge, the rest of the end-to-end time (faust hand-over and
    batching wait, decode, output store, encode, the producer's send and ack).

The baseline in the same run is a naive per-request path (separate Redis
reads, one model call per request), from bench_streams.

    .venv/bin/python benchmarks/bench_requests.py --rates 50,100,200 --json out.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from aiokafka import AIOKafkaProducer

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_streams import (
    Worker,
    _count_outputs,
    _interactions,
    _produce,
    _settings,
    naive_requests,
    wait_applied,
)

from contracts import CODECS, RecommendationRequest, topics
from streams.kafka import ensure_topics, topic_reader
from streams.replay import ml100k_events, ml100k_folder
from workers.settings import Settings

STAGES = ("state", "candidates", "score", "edge")


def _pct(values: list[float], q: float) -> float | None:
    return float(np.percentile(np.asarray(values), q)) if values else None


async def at_rate(
    settings: Settings, users: list[str], rate: float, seconds: float
) -> dict[str, Any]:
    """Open-loop arrivals at ``rate`` for ``seconds``; latency and stage split."""
    count = max(int(rate * seconds), 20)
    consumer = topic_reader(settings.kafka, topics.RECOMMENDATIONS, from_beginning=False)
    await consumer.start()
    await consumer.seek_to_end()
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka.bootstrap_servers, linger_ms=0)
    await producer.start()
    sent_at: dict[str, float] = {}
    rows: list[dict[str, float]] = []
    rcodec = CODECS[topics.REQUESTS]
    rng = np.random.default_rng(int(rate))
    tag = f"r{int(rate)}-{time.monotonic_ns()}"

    async def send_all() -> None:
        t0 = time.perf_counter()
        for i in range(count):
            r = RecommendationRequest(
                f"{tag}-{i}", str(rng.choice(users)), 10, int(time.time() * 1000)
            )
            future = await producer.send(
                settings.kafka.topic(topics.REQUESTS),
                value=rcodec.encode(r),
                key=r.user_id.encode(),
            )
            future.add_done_callback(
                lambda f, rid=r.request_id: sent_at.__setitem__(rid, f.result().timestamp)
            )
            delay = (i + 1) / rate - (time.perf_counter() - t0)
            if delay > 0:
                await asyncio.sleep(delay)

    sender = asyncio.create_task(send_all())
    started = time.perf_counter()
    try:
        deadline = time.monotonic() + seconds + 60
        pending: list[Any] = []
        while len(rows) < count and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=200)).values():
                pending += records
            keep = []
            for record in pending:
                rec = CODECS[topics.RECOMMENDATIONS].decode(record.value)
                if not rec.cause.id.startswith(tag):
                    continue
                if rec.cause.id not in sent_at:
                    keep.append(record)  # the send's ack callback has not run yet
                    continue
                e2e = float(record.timestamp - sent_at[rec.cause.id])
                t = rec.timings_ms
                handler = t.get("state", 0.0) + t.get("candidates", 0.0) + t.get("score", 0.0)
                rows.append(
                    {
                        "e2e": e2e,
                        "state": t.get("state", 0.0),
                        "candidates": t.get("candidates", 0.0),
                        "score": t.get("score", 0.0),
                        "edge": max(e2e - handler, 0.0),
                        "batch": t.get("batch", 1.0),
                    }
                )
            pending = keep
        await sender
    finally:
        await producer.stop()
        await consumer.stop()
    wall = time.perf_counter() - started
    e2e = [r["e2e"] for r in rows]
    out: dict[str, Any] = {
        "offered_rps": rate,
        "answered": len(rows),
        "sent": count,
        "achieved_rps": len(rows) / max(wall, 1e-9) if len(rows) < count else rate,
        "p50_ms": _pct(e2e, 50),
        "p99_ms": _pct(e2e, 99),
        "mean_batch": float(np.mean([r["batch"] for r in rows])) if rows else None,
        "stages_mean_ms": {
            s: float(np.mean([r[s] for r in rows])) if rows else None for s in STAGES
        },
        "stages_p99_ms": {s: _pct([r[s] for r in rows], 99) for s in STAGES},
    }
    return out


async def run(events: int, backlog: int, rates: list[float], seconds: float) -> dict[str, Any]:
    settings = _settings("r")
    await ensure_topics(settings.kafka)
    result: dict[str, Any] = {
        "events": events,
        "backlog_requests": backlog,
        "candidates": settings.stream.candidates_max,
        "load_before": os.getloadavg(),
    }
    evs = _interactions(settings, events)
    catalog, _ = ml100k_events(ml100k_folder(settings), limit=1)
    await _produce(
        settings,
        topics.CATALOG,
        [(c.item_id.encode(), CODECS[topics.CATALOG].encode(c)) for c in catalog],
    )
    codec = CODECS[topics.INTERACTIONS]
    await _produce(
        settings, topics.INTERACTIONS, [(e.user_id.encode(), codec.encode(e)) for e in evs]
    )
    users = sorted({e.user_id for e in evs})
    async with (
        Worker(settings, "catalog", 6195),
        Worker(settings, "interactions", 6196, RECSTREAM_TRIGGER_KINDS="skip"),
    ):
        await wait_applied(settings, users, len(evs), poll=0.2)
    rcodec = CODECS[topics.REQUESTS]
    rng = np.random.default_rng(0)
    batch = [
        RecommendationRequest(f"tp-{i}", str(rng.choice(users)), 10, int(time.time() * 1000))
        for i in range(backlog)
    ]
    warm = [
        RecommendationRequest(f"warm-{i}", str(rng.choice(users)), 10, int(time.time() * 1000))
        for i in range(200)
    ]

    def encoded(requests: list[RecommendationRequest]) -> list[tuple[bytes, bytes]]:
        return [(r.user_id.encode(), rcodec.encode(r)) for r in requests]

    async with Worker(settings, "requests", 6197):
        # Warm-up first (the model's first runs, the catalog view, connections), so
        # that the backlog's rate is the steady one, like the naive path's.
        await _produce(settings, topics.REQUESTS, encoded(warm))
        await _count_outputs(settings, len(warm))
        # The clock starts before the backlog is sent: the worker drains it as it arrives.
        started = time.perf_counter()
        await _produce(settings, topics.REQUESTS, encoded(batch))
        await _count_outputs(settings, len(warm) + backlog)
        result["throughput_rps"] = backlog / (time.perf_counter() - started)
        result["rates"] = [await at_rate(settings, users, r, seconds) for r in rates]
    result["naive_rps"] = await naive_requests(settings, users, 300)
    result["load_after"] = os.getloadavg()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=20_000, help="ratings applied first")
    parser.add_argument("--backlog", type=int, default=3_000, help="requests drained")
    parser.add_argument("--rates", default="50,100,200", help="fixed arrival rates, requests/s")
    parser.add_argument("--seconds", type=float, default=10.0, help="per rate")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    rates = [float(r) for r in args.rates.split(",") if r.strip()]
    r = asyncio.run(run(args.events, args.backlog, rates, args.seconds))
    print(f"request path, {r['candidates']} candidates, load {r['load_before'][0]:.1f}")
    print(
        f"  throughput (backlog)   {r['throughput_rps']:>8,.0f} requests/s "
        f"({r['backlog_requests']:,})"
    )
    print(
        f"  naive per-request      {r['naive_rps']:>8,.0f} requests/s "
        f"-> recstream = {r['throughput_rps'] / r['naive_rps']:.1f}x naive"
    )
    for row in r["rates"]:
        m = row["stages_mean_ms"]
        print(
            f"  at {row['offered_rps']:>5.0f}/s: {row['answered']}/{row['sent']} answered, "
            f"p50 {row['p50_ms']:.1f} ms, p99 {row['p99_ms']:.1f} ms; mean ms: "
            + ", ".join(f"{s} {m[s]:.1f}" for s in STAGES)
            + f" (batch {row['mean_batch']:.1f})"
        )
    if args.json:
        args.json.write_text(json.dumps(r, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
