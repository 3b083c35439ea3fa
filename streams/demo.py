"""``recstream demo``: the whole system end to end on the embedded default.

1. Kafka and Redis up (deploy/local/infra.sh), topics created.
2. The model loaded from ``$RECSTREAM_MODEL_DIR``, or trained and exported
   first when there is none (``recstream train`` + ``recstream export``).
3. Worker roles started as separate processes, as a deployment runs them:
   catalog, interactions, requests, chat and explain always; with an LLM
   (``--llm test``: the scripted LLM TEST SERVER, not a model; ``--llm local``:
   the real local model; or ``RECSTREAM_LLM_BASE_URL``) also llm and enrich.
4. MovieLens-100k replayed (catalog, then ratings in time order with
   recommendation requests, 10% of users arriving cold with a stated context,
   scripted chat turns), with progress.
5. A readable sample of recommendations with their explanations, one
   conversation turn by turn, and a closing summary: events in, outputs by
   rung, dead letters, throughput, latency percentiles.
6. Clean teardown: workers stopped (SIGTERM), then Kafka and Redis (unless --keep).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from typing import Any

import httpx
import numpy as np

from contracts import CODECS, ChatMessage, ChatReply, Explanation, Recommendation, topics
from streams.infra import SCRIPT
from streams.kafka import ensure_topics, topic_reader
from streams.replay import ml100k_events, ml100k_folder, replay
from streams.tail import format_event
from workers.settings import Settings

__all__ = ["main"]

# Roles that run with or without an LLM (chat and explain fall back to rules and
# templates); the LLM-only roles join when an endpoint is configured.
ROLES = ("catalog", "interactions", "requests", "chat", "explain")
LLM_ROLES = ("llm", "enrich")


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
    settings: Settings, env: dict[str, str], roles: tuple[str, ...]
) -> list[tuple[str, int, subprocess.Popen[bytes]]]:
    logs = settings.home / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    procs = []
    for n, role in enumerate(roles):
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
        settings.kafka,
        topics.REQUESTS,
        topics.RECOMMENDATIONS,
        topics.DEAD_LETTERS,
        topics.EXPLANATIONS,
        topics.CHAT,
        topics.CHAT_REPLIES,
    )
    await consumer.start()
    request_ts: dict[str, int] = {}
    recs: list[tuple[Recommendation, int]] = []
    explanations: dict[tuple[str, str], Explanation] = {}
    chat: list[Any] = []
    dead = 0
    last = time.monotonic()
    answered: set[str] = set()
    try:
        while True:
            batch = await consumer.getmany(timeout_ms=500)
            for tp, records in batch.items():
                short = tp.topic.removeprefix(settings.kafka.topic_prefix)
                for r in records:
                    if short == topics.DEAD_LETTERS:
                        dead += 1
                        continue
                    event = CODECS[short].decode(r.value)
                    if short == topics.REQUESTS:
                        request_ts[event.request_id] = r.timestamp
                    elif short == topics.RECOMMENDATIONS:
                        recs.append((event, r.timestamp))
                        if event.cause.kind == "request":
                            answered.add(event.cause.id)
                    elif short == topics.EXPLANATIONS:
                        explanations[(event.rec_id, event.item_id)] = event
                    else:
                        chat.append(event)
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
    return {
        "recs": recs,
        "dead": dead,
        "answered": answered,
        "latencies_ms": latencies,
        "explanations": explanations,
        "chat": chat,
    }


def _start_llm(mode: str, env: dict[str, str]) -> tuple[str, subprocess.Popen[bytes] | None]:
    """The endpoint URL for ``mode`` and the process serving it (None if not ours)."""
    cli = [sys.executable, "-m", "streams.cli"]
    if mode == "test":
        port = _free_port()
        proc = subprocess.Popen(
            [*cli, "llm-test-server", "--port", str(port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait_port(port)
        print(f"LLM: the LLM TEST SERVER (scripted, not a model) on 127.0.0.1:{port}")
        return f"http://127.0.0.1:{port}/v1", proc
    if mode == "local":
        port = _free_port()
        subprocess.run([*cli, "llm-local", "up", "--port", str(port)], env=env, check=True)
        print(f"LLM: the local model (Qwen2.5 1.5B, CPU) on 127.0.0.1:{port}")
        return f"http://127.0.0.1:{port}/v1", None
    return env.get("RECSTREAM_LLM_BASE_URL", ""), None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_port(port: int, limit_s: float = 30) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return
        time.sleep(0.2)
    raise SystemExit(f"the LLM server did not listen on {port}")


def _print_conversation(chat: list[Any], titles: dict[str, str]) -> None:
    """The longest session of the run, the user's turns and the replies in order."""
    messages = [e for e in chat if isinstance(e, ChatMessage)]
    replies = {e.in_reply_to: e for e in chat if isinstance(e, ChatReply)}
    sessions: dict[str, list[ChatMessage]] = {}
    for m in messages:
        sessions.setdefault(m.session_id, []).append(m)
    if not sessions:
        print("(no chat in this replay)")
        return
    session = max(sessions.values(), key=len)
    for m in session:
        print(f"  user:      {m.text}")
        reply = replies.get(m.event_id)
        if reply is not None:
            print(f"  assistant: {reply.text}  [{reply.source}, state {reply.state}]")


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
    parser.add_argument(
        "--llm",
        choices=("off", "test", "local"),
        default=None,
        help="the LLM: off; test = the scripted LLM TEST SERVER (not a model); local = the "
        "real local model (recstream llm-local; fetches ~1.1 GB once). Default: "
        "RECSTREAM_LLM_BASE_URL if set, else off",
    )
    parser.add_argument(
        "--cold-share", type=float, default=0.1, help="users arriving cold with stated context"
    )
    parser.add_argument("--chat-share", type=float, default=0.02, help="chat turns per rating")
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
    llm_proc: subprocess.Popen[bytes] | None = None
    try:
        _step("model")
        _ensure_model(settings)
        _step(f"topics (prefix {settings.kafka.topic_prefix})")
        asyncio.run(ensure_topics(settings.kafka))
        _step("LLM")
        mode = args.llm or ("endpoint" if env.get("RECSTREAM_LLM_BASE_URL") else "off")
        url = ""
        if mode != "off":
            url, llm_proc = _start_llm(mode, env)
        roles: tuple[str, ...] = ROLES
        if url:
            env["RECSTREAM_LLM_BASE_URL"] = url
            roles = ROLES + LLM_ROLES
            if mode == "local":
                # A 1.5B model on CPU answers in 10-120 s (docs/llm-local.md): give
                # the LLM paths deadlines it can meet, or every call falls back.
                for name, value in (
                    ("RECSTREAM_REQUEST_DEADLINE_MS", "150000"),
                    ("RECSTREAM_CHAT_DEADLINE_MS", "150000"),
                    ("RECSTREAM_EXPLAIN_DEADLINE_MS", "150000"),
                    ("RECSTREAM_LLM_READ_TIMEOUT_S", "180"),
                ):
                    env.setdefault(name, value)
            if mode == "endpoint":
                print(f"LLM: the endpoint in RECSTREAM_LLM_BASE_URL ({url})")
        else:
            env.pop("RECSTREAM_LLM_BASE_URL", None)
            print("LLM: off (no endpoint): chat uses rules, explanations the grounded template")
        _step("workers")
        procs = _start_workers(settings, env, roles)
        asyncio.run(_wait_ready(procs))
        _step("replaying MovieLens-100k")
        stats = asyncio.run(
            replay(
                settings,
                limit=args.limit,
                rate=args.rate,
                request_every=args.request_every,
                malformed=args.malformed,
                cold_share=args.cold_share,
                chat_share=args.chat_share,
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
        explanations = result["explanations"]
        for rec in by_request[-half:] + by_interaction[-(args.sample - half) :]:
            print(format_event(rec, titles))
            for item in rec.items[:2]:
                expl = explanations.get((rec.rec_id, item.item_id))
                if expl is not None:
                    name = titles.get(item.item_id, item.item_id)
                    print(f"    why {name}: {expl.text} [{expl.source}]")
        cold = [r for r, _ in recs if r.route == "llm_cold"]
        if cold:
            print(f"\ncold user with stated context (rung {cold[-1].rung}):")
            print(format_event(cold[-1], titles))
        _step("one conversation, turn by turn")
        _print_conversation(result["chat"], titles)
        _step("summary")
        lat = np.asarray(result["latencies_ms"], dtype=float)
        strategies: dict[str, int] = {}
        for rec, _ in recs:
            key = rec.rung or rec.strategy
            strategies[key] = strategies.get(key, 0) + 1
        wall = stats.seconds + (time.monotonic() - started)
        print(
            f"events in:        {stats.total:,} ({stats.catalog} catalog, "
            f"{stats.interactions:,} ratings, {stats.requests:,} requests, "
            f"{stats.malformed} malformed)"
        )
        print(
            f"recommendations:  {len(recs):,} (by rung: {strategies}); requests answered "
            f"{len(result['answered'])}/{stats.requests}"
        )
        print(f"dead letters:     {result['dead']} (malformed sent: {stats.malformed})")
        sources: dict[str, int] = {}
        for expl in explanations.values():
            sources[expl.source] = sources.get(expl.source, 0) + 1
        print(f"explanations:     {len(explanations):,} ({sources})")
        print(f"chat:             {stats.chat} turns sent, mode {mode}")
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
        if llm_proc is not None:
            llm_proc.terminate()
            llm_proc.wait(10)
        if args.llm == "local":
            subprocess.run([sys.executable, "-m", "streams.cli", "llm-local", "down"], check=False)
        if not args.keep and not was_up:
            subprocess.run(["bash", str(SCRIPT), "down"], check=False)
    return 0
