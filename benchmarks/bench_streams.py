"""Benchmark the stream processors against baselines measured in the same run.

(a) Interaction state updates end to end (Kafka -> Redis): a topic pre-filled
    with N rating events is drained by ``recstream worker --role interactions``
    (recommendation triggers off); events/s until Redis holds all N, compared
    with a raw aiokafka consumer reading the same topic (no processing), and
    with a naive per-event implementation in the style of the seed article's
    pseudo-code (json per event, one awaited Redis round trip per command).
(b) Requests -> recommendations with 200 candidates: throughput draining a
    topic pre-filled with requests for users that have state, and latency at a
    fixed 200 requests/s (request record timestamp -> recommendation record
    timestamp, both set by Kafka), compared with a naive per-request path (one
    Redis read per key, one model call per request).

Needs the local Kafka + Redis (deploy/local/infra.sh up) and a model directory
(RECSTREAM_MODEL_DIR). Prints figures; asserts nothing.

    .venv/bin/python benchmarks/bench_streams.py --events 100000 --requests 5000
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from aiokafka import AIOKafkaProducer

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from contracts import CODECS, Interaction, RecommendationRequest, topics
from streams.kafka import ensure_topics, topic_reader
from streams.replay import ml100k_events, ml100k_folder
from workers.resources import RedisResource, Resource
from workers.scoring import ModelScorer
from workers.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


def _settings(tag: str) -> Settings:
    base = Settings.from_env()
    run = f"bench{tag}{uuid.uuid4().hex[:6]}"
    return dataclasses.replace(
        base,
        kafka=dataclasses.replace(base.kafka, topic_prefix=f"{run}-"),
        redis=dataclasses.replace(base.redis, key_prefix=run),
    )


def _interactions(settings: Settings, n: int) -> list[Interaction]:
    _, stream = ml100k_events(ml100k_folder(settings), request_every=0)
    events = [e for _, e in stream]
    out: list[Interaction] = []
    round_ = 0
    while len(out) < n:  # beyond 100k: more rounds with new ids (new events, same users)
        out += [dataclasses.replace(e, event_id=f"{e.event_id}-r{round_}") for e in events]
        round_ += 1
    return out[:n]  # type: ignore[return-value]


async def _produce(settings: Settings, topic: str, items: list[tuple[bytes, bytes]]) -> None:
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka.bootstrap_servers, linger_ms=20, max_batch_size=512 * 1024
    )
    await producer.start()
    try:
        futures = []
        for key, value in items:
            futures.append(await producer.send(settings.kafka.topic(topic), value=value, key=key))
            if len(futures) >= 5000:
                await asyncio.gather(*futures)
                futures.clear()
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def raw_consume_rate(settings: Settings, topic: str, n: int) -> float:
    consumer = topic_reader(settings.kafka, topic, max_partition_fetch_bytes=4 * 1024 * 1024)
    await consumer.start()
    seen = 0
    started = time.perf_counter()
    try:
        while seen < n:
            for records in (await consumer.getmany(timeout_ms=500, max_records=5000)).values():
                seen += len(records)
    finally:
        await consumer.stop()
    return n / (time.perf_counter() - started)


async def naive_state_rate(settings: Settings, topic: str, n: int) -> float:
    """The seed-article style: per event json.loads and one awaited Redis call per command."""
    consumer = topic_reader(settings.kafka, topic)
    await consumer.start()
    seen = 0
    started = time.perf_counter()
    async with RedisResource(settings.redis) as redis:
        r = redis.client
        try:
            while seen < n:
                for records in (await consumer.getmany(timeout_ms=500)).values():
                    for record in records:
                        e = json.loads(record.value)
                        u = e["user_id"]
                        if await r.sismember(f"naive:seen:{u}", e["event_id"]):
                            continue
                        await r.sadd(f"naive:seen:{u}", e["event_id"])
                        await r.lrem(f"naive:hist:{u}", 0, e["item_id"])
                        await r.lpush(f"naive:hist:{u}", e["item_id"])
                        await r.ltrim(f"naive:hist:{u}", 0, 199)
                        await r.hincrby(f"naive:cnt:{u}", "n", 1)
                        await r.hincrby(f"naive:w:{u}", e["item_id"], 1)
                        await r.zincrby("naive:pop", 1, e["item_id"])
                        seen += 1
                        if seen >= n:
                            break
        finally:
            await consumer.stop()
    return n / (time.perf_counter() - started)


class Worker(Resource):
    """A worker subprocess (``async with``: started and ready; leaving: stopped)."""

    def __init__(self, settings: Settings, role: str, port: int, **env: str) -> None:
        super().__init__()
        self.env = dict(os.environ)
        self.env.update(
            {
                "RECSTREAM_TOPIC_PREFIX": settings.kafka.topic_prefix,
                "RECSTREAM_REDIS_KEY_PREFIX": settings.redis.key_prefix,
                "RECSTREAM_GROUP_PREFIX": settings.redis.key_prefix,
                **env,
            }
        )
        self.args = [
            sys.executable,
            "-m",
            "streams.cli",
            "worker",
            "--role",
            role,
            "--web-port",
            str(port),
        ]
        self.port = port
        self.log = settings.home / "logs" / f"bench-{role}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    async def _open(self) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as handle:
            self.proc = subprocess.Popen(
                self.args, env=self.env, stdout=handle, stderr=subprocess.STDOUT, cwd=ROOT
            )
        async with httpx.AsyncClient() as client:
            for _ in range(600):
                try:
                    r = await client.get(f"http://127.0.0.1:{self.port}/readyz", timeout=1)
                    if r.status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.2)
        await self._close()  # a failed open leaves no process behind
        raise RuntimeError(f"worker not ready; see {self.log}")

    async def _close(self) -> None:
        assert self.proc is not None
        self.proc.terminate()
        # Each agent finishes its batch in hand (bounded at 15 s) before it stops;
        # wait without blocking the loop (an in-process LLM test server may be serving).
        for _ in range(900):
            if self.proc.poll() is not None:
                return
            await asyncio.sleep(0.1)
        self.proc.kill()
        self.proc.wait(10)


async def wait_applied(
    settings: Settings, users: list[str], n: int, *, poll: float = 0.05
) -> float:
    """Seconds until Redis holds ``n`` applied events for ``users``.

    One connection for the whole wait: a connection per poll put its set-up
    cost inside the timed loops."""
    async with RedisResource(settings.redis) as redis:
        keys = [redis.key("u", "{" + u + "}", "c") for u in users]
        started = time.perf_counter()
        while True:
            async with redis.client.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.hget(key, "n")
                if sum(int(v or 0) for v in await pipe.execute()) >= n:
                    return time.perf_counter() - started
            await asyncio.sleep(poll)


async def bench_state(n: int) -> dict[str, Any]:
    settings = _settings("a")
    await ensure_topics(settings.kafka)
    events = _interactions(settings, n)
    codec = CODECS[topics.INTERACTIONS]
    await _produce(
        settings, topics.INTERACTIONS, [(e.user_id.encode(), codec.encode(e)) for e in events]
    )
    users = sorted({e.user_id for e in events})
    raw = max([await raw_consume_rate(settings, topics.INTERACTIONS, n) for _ in range(2)])
    # Triggers off: (a) measures the state path alone ("skip" never occurs here).
    async with Worker(settings, "interactions", 6190, RECSTREAM_TRIGGER_KINDS="skip"):
        ours = n / await wait_applied(settings, users, n)
    naive_n = min(n, 10_000)
    naive = await naive_state_rate(settings, topics.INTERACTIONS, naive_n)
    return {
        "events": n,
        "recstream_eps": ours,
        "raw_consume_eps": raw,
        "naive_eps": naive,
        "naive_events": naive_n,
    }


async def bench_requests(n: int, fixed_rate: float, latency_requests: int) -> dict[str, Any]:
    settings = _settings("b")
    await ensure_topics(settings.kafka)
    events = _interactions(settings, 100_000)
    codec = CODECS[topics.INTERACTIONS]
    # State first (interactions role), then the requests role alone.
    catalog, _ = ml100k_events(ml100k_folder(settings), limit=1)
    await _produce(
        settings,
        topics.CATALOG,
        [(c.item_id.encode(), CODECS[topics.CATALOG].encode(c)) for c in catalog],
    )
    await _produce(
        settings, topics.INTERACTIONS, [(e.user_id.encode(), codec.encode(e)) for e in events]
    )
    users = sorted({e.user_id for e in events})
    async with (
        Worker(settings, "catalog", 6191),
        Worker(settings, "interactions", 6192, RECSTREAM_TRIGGER_KINDS="skip"),
    ):
        await wait_applied(settings, users, len(events), poll=0.2)
    rcodec = CODECS[topics.REQUESTS]
    rng = np.random.default_rng(0)
    batch = [
        RecommendationRequest(f"tp-{i}", str(rng.choice(users)), 10, int(time.time() * 1000))
        for i in range(n)
    ]
    await _produce(
        settings, topics.REQUESTS, [(r.user_id.encode(), rcodec.encode(r)) for r in batch]
    )
    result: dict[str, Any] = {"requests": n, "candidates": settings.stream.candidates_max}
    async with Worker(settings, "requests", 6193):
        started = time.perf_counter()
        await _count_outputs(settings, n)
        result["throughput_rps"] = n / (time.perf_counter() - started)
        # Latency at a fixed rate, on top of the drained backlog.
        lat = await _latency_at_rate(settings, users, fixed_rate, latency_requests, n)
        result.update(lat)
    result["naive_rps"] = await naive_requests(settings, users, min(n, 500))
    return result


async def _count_outputs(settings: Settings, n: int) -> None:
    consumer = topic_reader(settings.kafka, topics.RECOMMENDATIONS)
    await consumer.start()
    seen = 0
    try:
        while seen < n:
            for records in (await consumer.getmany(timeout_ms=200)).values():
                seen += len(records)
    finally:
        await consumer.stop()


async def _latency_at_rate(
    settings: Settings, users: list[str], rate: float, count: int, offset: int
) -> dict[str, Any]:
    consumer = topic_reader(settings.kafka, topics.RECOMMENDATIONS, from_beginning=False)
    await consumer.start()
    await consumer.seek_to_end()
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka.bootstrap_servers, linger_ms=0)
    await producer.start()
    sent_at: dict[str, float] = {}
    latencies: list[float] = []
    rcodec = CODECS[topics.REQUESTS]
    rng = np.random.default_rng(1)

    async def send_all() -> None:
        t0 = time.perf_counter()
        for i in range(count):
            r = RecommendationRequest(
                f"lat-{i}", str(rng.choice(users)), 10, int(time.time() * 1000)
            )
            meta = await (
                await producer.send(
                    settings.kafka.topic(topics.REQUESTS),
                    value=rcodec.encode(r),
                    key=r.user_id.encode(),
                )
            )
            sent_at[r.request_id] = meta.timestamp
            delay = (i + 1) / rate - (time.perf_counter() - t0)
            if delay > 0:
                await asyncio.sleep(delay)

    sender = asyncio.create_task(send_all())
    try:
        deadline = time.monotonic() + count / rate + 60
        while len(latencies) < count and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=200)).values():
                for record in records:
                    rec = CODECS[topics.RECOMMENDATIONS].decode(record.value)
                    if rec.cause.id in sent_at:
                        latencies.append(record.timestamp - sent_at[rec.cause.id])
        await sender
    finally:
        await producer.stop()
        await consumer.stop()
    arr = np.asarray(latencies, dtype=float)
    return {
        "fixed_rate_rps": rate,
        "latency_samples": int(arr.size),
        "latency_p50_ms": float(np.percentile(arr, 50)) if arr.size else None,
        "latency_p99_ms": float(np.percentile(arr, 99)) if arr.size else None,
    }


async def naive_requests(settings: Settings, users: list[str], n: int) -> float:
    """Per request: separate Redis reads, candidates, one model call with B=1."""
    rng = np.random.default_rng(2)
    async with ModelScorer(settings.model) as scorer, RedisResource(settings.redis) as redis:
        items = scorer.known_items()
        started = time.perf_counter()
        for _ in range(n):
            u = str(rng.choice(users))
            tag = "{" + u + "}"
            hist = [h.decode() for h in await redis.client.lrange(redis.key("u", tag, "h"), 0, 49)]
            await redis.client.hgetall(redis.key("u", tag, "c"))
            seen = {x.decode() for x in await redis.client.zrange(redis.key("u", tag, "x"), 0, -1)}
            cands = [i for i in items if i not in seen][:200]
            scores = await scorer.score([list(reversed(hist))], [cands])
            _ = np.argsort(-scores[0])[:10]
        return n / (time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=5_000)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--latency-requests", type=int, default=2_000)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    print(f"cores: {os.cpu_count()}; broker {Settings.from_env().kafka.bootstrap_servers}")
    a = asyncio.run(bench_state(args.events))
    print("\n(a) interaction state updates, Kafka -> Redis")
    print(
        f"    recstream worker:        {a['recstream_eps']:>10,.0f} events/s "
        f"({a['events']:,} events)"
    )
    print(
        f"    raw aiokafka consume:    {a['raw_consume_eps']:>10,.0f} events/s "
        f"-> recstream = {a['recstream_eps'] / a['raw_consume_eps']:.2f} of raw"
    )
    print(
        f"    naive per-event (seed):  {a['naive_eps']:>10,.0f} events/s ({a['naive_events']:,}) "
        f"-> recstream = {a['recstream_eps'] / a['naive_eps']:.1f}x naive"
    )
    b = asyncio.run(bench_requests(args.requests, args.rate, args.latency_requests))
    print(f"\n(b) requests -> recommendations, {b['candidates']} candidates")
    print(
        f"    throughput (backlog):    {b['throughput_rps']:>10,.0f} requests/s ({b['requests']:,})"
    )
    print(
        f"    naive per-request:       {b['naive_rps']:>10,.0f} requests/s "
        f"-> recstream = {b['throughput_rps'] / b['naive_rps']:.1f}x naive"
    )
    print(
        f"    at {b['fixed_rate_rps']:.0f} requests/s: p50 {b['latency_p50_ms']:.1f} ms, "
        f"p99 {b['latency_p99_ms']:.1f} ms ({b['latency_samples']} samples, Kafka timestamps)"
    )
    if args.json:
        args.json.write_text(json.dumps({"a": a, "b": b}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
