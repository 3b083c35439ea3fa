"""``recstream demo``: the whole system end to end on the embedded default.

1. Kafka and Redis up (deploy/local/infra.sh), topics created.
2. The model loaded from ``$RECSTREAM_MODEL_DIR``, or trained and exported
   first when there is none (``recstream train`` + ``recstream export``).
3. Worker roles started as separate processes, as a deployment runs them.
4. MovieLens-100k replayed (catalog, then ratings in time order with
   recommendation requests), with progress.
5. A readable sample of recommendations and a closing summary: events in,
   recommendations out, dead letters, throughput, latency percentiles.
6. Clean teardown: workers stopped (SIGTERM), then Kafka and Redis (unless --keep).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import signal
import subprocess
import sys
import time
import uuid
from typing import Any

import httpx
import numpy as np

from contracts import CODECS, Recommendation, topics
from streams.infra import SCRIPT
from streams.kafka import ensure_topics, topic_reader
from streams.replay import ml100k_events, ml100k_folder, replay
from streams.tail import format_event
from workers.settings import Settings

__all__ = ["main"]

ROLES = ("catalog", "interactions", "requests")


def _step(text: str) -> None:
    print(f"\n== {text}", flush=True)


def _ensure_model(settings: Settings) -> None:
    manifest = settings.model.model_dir / "manifest.json"
    if manifest.is_file():
        print(f"model: {settings.model.model_dir.resolve()}")
        return
    print("model: none yet; training on MovieLens-100k, then exporting to ONNX")
    cli = [sys.executable, "-m", "streams.cli"]
    subprocess.run([*cli, "train"], check=True)
    subprocess.run([*cli, "export"], check=True)


def _start_workers(
    settings: Settings, env: dict[str, str]
) -> list[tuple[str, int, subprocess.Popen[bytes]]]:
    logs = settings.home / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    procs = []
    for n, role in enumerate(ROLES):
        port = settings.stream.web_port + n
        with (logs / f"worker-{role}.log").open("ab") as handle:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "streams.cli",
                    "worker",
                    "--role",
                    role,
                    "--web-port",
                    str(port),
                ],
                env=env,
                stdout=handle,
                stderr=subprocess.STDOUT,
            )
        procs.append((role, port, proc))
        print(
            f"worker {role:<12} pid {proc.pid}, http://127.0.0.1:{port}/readyz, "
            f"log {logs / f'worker-{role}.log'}"
        )
    return procs


async def _wait_ready(
    procs: list[tuple[str, int, subprocess.Popen[bytes]]], limit_s: float = 120
) -> None:
    deadline = time.monotonic() + limit_s
    async with httpx.AsyncClient() as client:
        for role, port, proc in procs:
            while True:
                if proc.poll() is not None:
                    raise SystemExit(f"worker {role} exited with {proc.returncode}; see its log")
                try:
                    if (
                        await client.get(f"http://127.0.0.1:{port}/readyz", timeout=1)
                    ).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise SystemExit(f"worker {role} not ready after {limit_s:.0f}s; see its log")
                await asyncio.sleep(0.3)


async def _drain(settings: Settings, expected_requests: int, idle_s: float = 5.0) -> dict[str, Any]:
    """Read every output until the requests are answered and the topics go quiet."""
    consumer = topic_reader(
        settings.kafka, topics.REQUESTS, topics.RECOMMENDATIONS, topics.DEAD_LETTERS
    )
    await consumer.start()
    request_ts: dict[str, int] = {}
    recs: list[tuple[Recommendation, int]] = []
    dead = 0
    last = time.monotonic()
    answered: set[str] = set()
    try:
        while True:
            batch = await consumer.getmany(timeout_ms=500)
            for tp, records in batch.items():
                short = tp.topic.removeprefix(settings.kafka.topic_prefix)
                for r in records:
                    if short == topics.REQUESTS:
                        request_ts[CODECS[short].decode(r.value).request_id] = r.timestamp
                    elif short == topics.RECOMMENDATIONS:
                        rec = CODECS[short].decode(r.value)
                        recs.append((rec, r.timestamp))
                        if rec.cause.kind == "request":
                            answered.add(rec.cause.id)
                    else:
                        dead += 1
            if batch:
                last = time.monotonic()
                continue
            quiet = time.monotonic() - last
            # Done when every request is answered and the topics went quiet; give
            # up waiting for stragglers after a longer silence.
            if (len(answered) >= expected_requests and quiet > idle_s) or quiet > idle_s * 6:
                break
    finally:
        await consumer.stop()
    latencies = [ts - request_ts[rec.cause.id] for rec, ts in recs if rec.cause.id in request_ts]
    return {"recs": recs, "dead": dead, "answered": answered, "latencies_ms": latencies}


def _stop(procs: list[tuple[str, int, subprocess.Popen[bytes]]]) -> None:
    for _, _, proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for role, _, proc in procs:
        try:
            code = proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait(10)
        print(f"worker {role:<12} stopped (exit {code})")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="recstream demo",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--limit", type=int, default=0, help="ratings to replay (0 = all 100,000)")
    parser.add_argument(
        "--rate",
        type=float,
        default=2000.0,
        help="events/s (0 = as fast as possible; then requests race ahead of the "
        "interactions before them and many users still look cold)",
    )
    parser.add_argument("--request-every", type=int, default=10, help="a request every N ratings")
    parser.add_argument(
        "--malformed", type=float, default=0.01, help="fraction of invalid events mixed in"
    )
    parser.add_argument("--sample", type=int, default=5, help="recommendations to print")
    parser.add_argument("--keep", action="store_true", help="leave Kafka and Redis running")
    args = parser.parse_args(argv)

    base = Settings.from_env()
    # A fresh topic prefix and Redis key prefix per run: the demo never mixes
    # with an earlier run's state, and a rerun needs no cleanup.
    run = f"demo{uuid.uuid4().hex[:6]}"
    settings = dataclasses.replace(
        base,
        kafka=dataclasses.replace(base.kafka, topic_prefix=f"{base.kafka.topic_prefix}{run}-"),
        redis=dataclasses.replace(base.redis, key_prefix=f"{base.redis.key_prefix}:{run}"),
    )
    env = dict(os.environ)
    env.update(
        {
            "RECSTREAM_TOPIC_PREFIX": settings.kafka.topic_prefix,
            "RECSTREAM_REDIS_KEY_PREFIX": settings.redis.key_prefix,
            "RECSTREAM_GROUP_PREFIX": run,
        }
    )

    _step("infrastructure (Kafka KRaft + Redis, loopback)")
    # Tear down at the end only what this run started: a developer's running
    # Kafka and Redis stay up.
    status = subprocess.run(["bash", str(SCRIPT), "status"], capture_output=True, check=False)
    was_up = status.returncode == 0
    subprocess.run(["bash", str(SCRIPT), "up"], check=True)
    procs: list[tuple[str, int, subprocess.Popen[bytes]]] = []
    try:
        _step("model")
        _ensure_model(settings)
        _step(f"topics (prefix {settings.kafka.topic_prefix})")
        asyncio.run(ensure_topics(settings.kafka))
        _step("workers")
        procs = _start_workers(settings, env)
        asyncio.run(_wait_ready(procs))
        _step("replaying MovieLens-100k")
        stats = asyncio.run(
            replay(
                settings,
                limit=args.limit,
                rate=args.rate,
                request_every=args.request_every,
                malformed=args.malformed,
            )
        )
        print(
            f"sent {stats.catalog} catalog, {stats.interactions} ratings, "
            f"{stats.requests} requests, {stats.malformed} malformed in {stats.seconds:.1f}s"
        )
        _step("waiting for the workers to drain")
        started = time.monotonic()
        result = asyncio.run(_drain(settings, stats.requests))
        recs = result["recs"]
        _step("sample of recommendations")
        catalog, _ = ml100k_events(ml100k_folder(settings), limit=1)
        titles = {c.item_id: c.title or c.item_id for c in catalog}
        model_recs = [r for r, _ in recs if r.strategy == "model"]
        by_request = [r for r in model_recs if r.cause.kind == "request"]
        by_interaction = [r for r in model_recs if r.cause.kind == "interaction"]
        half = max(1, args.sample // 2)
        for rec in by_request[-half:] + by_interaction[-(args.sample - half) :]:
            print(format_event(rec, titles))
        _step("summary")
        lat = np.asarray(result["latencies_ms"], dtype=float)
        strategies: dict[str, int] = {}
        for rec, _ in recs:
            strategies[rec.strategy] = strategies.get(rec.strategy, 0) + 1
        wall = stats.seconds + (time.monotonic() - started)
        print(
            f"events in:        {stats.total:,} ({stats.catalog} catalog, "
            f"{stats.interactions:,} ratings, {stats.requests:,} requests, "
            f"{stats.malformed} malformed)"
        )
        print(
            f"recommendations:  {len(recs):,} ({strategies}); requests answered "
            f"{len(result['answered'])}/{stats.requests}"
        )
        print(f"dead letters:     {result['dead']} (malformed sent: {stats.malformed})")
        print(f"throughput:       {stats.total / wall:,.0f} events/s end to end ({wall:.1f}s)")
        if lat.size:
            p50, p95, p99 = np.percentile(lat, [50, 95, 99])
            print(
                f"latency request->recommendation (Kafka timestamps): p50 {p50:.0f} ms, "
                f"p95 {p95:.0f} ms, p99 {p99:.0f} ms over {lat.size:,} requests"
            )
    finally:
        _step("teardown")
        _stop(procs)
        if not args.keep and not was_up:
            subprocess.run(["bash", str(SCRIPT), "down"], check=False)
    return 0
