"""``recstream demo``: the whole system end to end on the embedded default.

1. Kafka and Redis up (deploy/local/infra.sh), topics created (a fresh topic
   and Redis key prefix per run).
2. The model loaded from ``$RECSTREAM_HOME/models/current`` (or
   ``$RECSTREAM_MODEL_DIR``), trained and exported first when there is none.
3. Worker roles started as separate processes, as a deployment runs them:
   catalog, interactions, requests, chat and explain always; with an LLM also
   llm and enrich. LLM modes: none configured = LLM paths off (chat by rules,
   explanations by template); ``--llm test`` = the LLM TEST SERVER (scripted,
   not a model); ``--llm local`` = the real local model (recstream llm-local);
   or any OpenAI-compatible endpoint in ``RECSTREAM_LLM_BASE_URL``.
4. MovieLens-100k replayed (catalog, then the first ``--limit`` ratings in
   time order at ``--rate`` events/s with recommendation requests, 10% of
   users arriving cold with a stated context, scripted chat turns, malformed
   events), then one five-turn conversation of the demo's own.
5. A live dashboard meanwhile (plain lines when stdout is not a terminal):
   throughput per topic, consumer lag per role, request -> list latency,
   serving rungs and routes, LLM calls, tokens, cost and cache hits, dead
   letters, and the online hit rate (was each interaction's item in the
   latest list recommended to that user before it?) next to the model's
   offline HR@10. An observer in this process reads the topics; the workers
   do no extra work for it.
6. Samples (lists with their explanations, the conversation turn by turn),
   a summary, also written to ``$RECSTREAM_HOME/demo/<run>/`` (summary.json,
   summary.md, dashboard.txt).
7. Teardown: workers and the LLM server stopped; the run's topics and Redis
   keys deleted, and Kafka and Redis stopped if this run started them; all
   left in place with ``--keep``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
from aiokafka.admin import AIOKafkaAdminClient
from rich.console import Console

from contracts import CODECS, ChatMessage, Recommendation, topics
from streams.dashboard import LLM_TEST_LABEL, Dashboard, Snapshot, render
from streams.infra import SCRIPT
from streams.kafka import KafkaProducerResource, client_security, ensure_topics
from streams.observe import Observer, Samples
from streams.replay import ReplayStats, ml100k_events, ml100k_folder, replay
from streams.tail import format_event
from workers.catalog import display_title
from workers.resources import open_redis
from workers.settings import Settings

__all__ = ["main"]

# Roles that run with or without an LLM (chat and explain fall back to rules and
# templates); the LLM-only roles join when an endpoint is configured.
ROLES = ("catalog", "interactions", "requests", "chat", "explain")
LLM_ROLES = ("llm", "enrich")
# Ratings in MovieLens-100k (the replay's whole stream when --limit is 0).
ML100K_RATINGS = 100_000
SHOWCASE_TURNS = 5


def _step(text: str) -> None:
    print(f"\n== {text}", flush=True)


def _ensure_model(settings: Settings) -> None:
    manifest = settings.model.model_dir / "manifest.json"
    if manifest.is_file():
        print(f"model: {settings.model.model_dir.resolve()}")
        return
    print("model: none yet; training on MovieLens-100k, evaluating, exporting to ONNX")
    cli = [sys.executable, "-m", "streams.cli"]
    version = time.strftime("ml100k-%Y%m%d-%H%M%S")
    run = settings.home / "runs" / version
    # --no-eval leaves out the SASRec and BPR-MF baselines, so the content
    # model is served without the SASRec half of the full recipe's pair
    # (docs/model.md: the shorter recipe, about 3 minutes sooner, 0.004-0.006
    # lower full NDCG@10); `evaluate` then scores the served model alone, and
    # `export` copies its figures into the manifest for the dashboard's
    # offline HR@10.
    subprocess.run([*cli, "train", "--version", version, "--no-eval"], check=True)
    evaluated = subprocess.run([*cli, "evaluate", "--run", str(run)], check=False)
    if evaluated.returncode != 0:
        print("model: evaluation failed; the dashboard will show no offline HR@10")
    subprocess.run([*cli, "export", "--run", str(run)], check=True)


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
        return f"http://127.0.0.1:{port}/v1", proc
    if mode == "local":
        port = _free_port()
        subprocess.run([*cli, "llm-local", "up", "--port", str(port)], env=env, check=True)
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


# --------------------------------------------------------------- the run


def _offline_metrics(settings: Settings) -> tuple[dict[str, float], str]:
    """HR@10 of the served model offline (manifest, else the run's metrics.json)."""
    model_dir = settings.model.model_dir
    try:
        manifest = json.loads((model_dir / "manifest.json").read_text())
    except (OSError, ValueError):
        return {}, "no model manifest"
    report = manifest.get("metrics") or {}
    if not report.get("results"):
        # `recstream evaluate` after a --no-eval training writes only the run's file.
        path = settings.home / "runs" / str(manifest.get("version", "")) / "metrics.json"
        with contextlib.suppress(OSError, ValueError):
            report = json.loads(path.read_text())
    results = report.get("results") or {}
    out: dict[str, float] = {}
    # mixed: ranking over warm + cold items, as the stream serves; full: warm items only.
    for proto, label in (("mixed", "HR@10 mixed"), ("full", "HR@10 warm")):
        value = results.get(proto, {}).get("A-LLMRec", {}).get("HR@10")
        if value is not None:
            out[label] = float(value)
    note = "" if out else "not evaluated (trained with --no-eval; run `recstream evaluate`)"
    return out, note


def _llm_label(mode: str, url: str) -> str:
    if mode == "test":
        return f"{LLM_TEST_LABEL} at {url}"
    if mode == "local":
        return f"the local model (Qwen2.5-Coder-1.5B Q4_K_M, CPU) at {url}"
    if mode == "endpoint":
        return f"the configured endpoint {url}"
    return "off (no endpoint configured): LLM paths off; chat by rules, explanations by template"


def _source(source: str, mode: str) -> str:
    """An output's source, labelled when it is the test server's canned text."""
    return f"llm: {LLM_TEST_LABEL}" if source == "llm" and mode == "test" else source


async def _showcase_chat(settings: Settings, observer: Observer, titles: dict[str, str]) -> str:
    """One scripted conversation of the demo's own, for the turn-by-turn sample.

    The replay's chat turns are spread thin over many users; this one is five
    turns in one session of a user who already got a model list, turning down
    that list's first item. Returns the session id ('' when no such user yet).
    """
    recs = [*observer.samples.by_request, *observer.samples.by_interaction]
    if not recs:
        return ""
    rec = recs[-1]
    first = display_title(titles.get(rec.items[0].item_id, "Heat"), year=False)
    texts = ["hi", "I'd like a thriller", f"not {first}", "more like Star Wars", "great, thanks"]
    session = f"showcase-{rec.user_id}"
    now = int(time.time() * 1000)
    async with KafkaProducerResource(settings.kafka) as resource:
        for n, text in enumerate(texts):
            message = ChatMessage(f"{session}-{n}", session, rec.user_id, text, now + n)
            await resource.producer.send_and_wait(
                settings.kafka.topic(topics.CHAT),
                CODECS[topics.CHAT].encode(message),
                key=session.encode(),
            )
    return session


async def _run(
    settings: Settings,
    args: argparse.Namespace,
    observer: Observer,
    dashboard: Dashboard,
    titles: dict[str, str],
) -> tuple[ReplayStats, Snapshot, dict[str, float]]:
    """Replay while the observer reads and the dashboard draws; then drain."""
    stop = asyncio.Event()
    loops = [
        asyncio.create_task(observer.consume(stop), name="observe"),
        asyncio.create_task(observer.scrape(stop), name="scrape"),
    ]
    draw = asyncio.create_task(dashboard.run(observer.snapshot, stop), name="dashboard")
    phases: dict[str, float] = {}
    try:
        observer.phase = "replaying"
        t = time.monotonic()
        stats = await replay(
            settings,
            limit=args.limit,
            rate=args.rate,
            request_every=args.request_every,
            malformed=args.malformed,
            cold_share=args.cold_share,
            chat_share=args.chat_share,
            progress=False,
        )
        observer.malformed_sent = stats.malformed
        observer.showcase = await _showcase_chat(settings, observer, titles)
        chats = stats.chat + (SHOWCASE_TURNS if observer.showcase else 0)
        phases["replay_s"] = time.monotonic() - t
        observer.phase = "draining"
        t = time.monotonic()
        while True:
            await asyncio.sleep(0.5)
            for task in loops:
                if task.done():
                    task.result()  # the observer failed: raise its error
                    raise RuntimeError(f"{task.get_name()} stopped early")
            quiet = observer.quiet_s()
            # Done when every request and chat turn is answered, no role is behind
            # and the topics went quiet (explanations have no count to wait for);
            # give up on stragglers after a long silence (a role may be stuck).
            answered = (
                observer.answered >= stats.requests
                and observer.counts.get(topics.CHAT_REPLIES, 0) >= chats
            )
            caught_up = all(v == 0 for v in observer.lag.values())
            if (answered and caught_up and quiet > args.idle) or quiet > 12 * args.idle:
                break
        phases["drain_s"] = time.monotonic() - t
        observer.phase = "done"
        async with httpx.AsyncClient(timeout=2.0) as client:
            await observer.scrape_once(client)
    finally:
        stop.set()
        await asyncio.gather(*loops, return_exceptions=True)
        last = await draw
    return stats, last, phases


def _print_why(rec: Recommendation, s: Samples, titles: dict[str, str], mode: str) -> None:
    for item in rec.items[:2]:
        expl = s.explanations.get((rec.rec_id, item.item_id))
        if expl is not None:
            name = titles.get(item.item_id, item.item_id)
            print(f"    why {name}: {expl.text} [{_source(expl.source, mode)}]")


def _print_samples(observer: Observer, titles: dict[str, str], n: int, mode: str) -> None:
    s = observer.samples
    half = max(1, n // 2)
    shown = list(s.by_request)[-half:] + list(s.by_interaction)[-(n - half) :]
    for rec in shown:
        print(format_event(rec, titles))
        _print_why(rec, s, titles, mode)
    if s.cold:
        rec = s.cold[-1]
        by = f", ranked by the {LLM_TEST_LABEL}" if mode == "test" and rec.llm.used else ""
        print(f"\ncold user with stated context (route {rec.route}, rung {rec.rung}{by}):")
        print(f"  {rec.reason}")
        print(format_event(rec, titles))
        _print_why(rec, s, titles, mode)


def _print_conversation(observer: Observer, mode: str) -> None:
    """The longest answered session of the run, the user's turns and the replies in order."""
    s = observer.samples
    answered = {
        sid: turns
        for sid, turns in s.sessions.items()
        if any(m.event_id in s.replies for m in turns)
    }
    if not answered:
        print("(no chat answered in this replay)")
        return
    if observer.showcase in answered:
        sid, turns = observer.showcase, answered[observer.showcase]
    else:
        sid, turns = max(answered.items(), key=lambda kv: (len(kv[1]), kv[0]))
    print(f"session {sid}")
    for m in sorted(turns, key=lambda m: (m.ts_ms, m.event_id)):
        print(f"  user:      {m.text}")
        reply = s.replies.get(m.event_id)
        if reply is None:
            print("  assistant: (no reply)")
            continue
        print(
            f"  assistant: {reply.text}  [{_source(reply.source, mode)}, "
            f"intent {reply.intent}, state {reply.state}]"
        )


def _summary(
    run: str,
    args: argparse.Namespace,
    mode: str,
    stats: ReplayStats,
    observer: Observer,
    phases: dict[str, float],
) -> dict[str, Any]:
    data = observer.summary()
    replay_s = phases.get("replay_s", 0.0)
    data.update(
        run=run,
        llm_mode=mode,
        options={k: v for k, v in vars(args).items() if k != "keep"},
        sent={
            "catalog": stats.catalog,
            "ratings": stats.interactions,
            "requests": stats.requests,
            "cold_requests": stats.cold_requests,
            "chat": stats.chat,
            "malformed": stats.malformed,
            "total": stats.total,
        },
        seconds={k: round(v, 1) for k, v in phases.items()},
        replay_events_per_s=round(stats.total / replay_s, 1) if replay_s else 0.0,
    )
    return data


def _summary_lines(data: dict[str, Any]) -> list[str]:
    sent, hit, sec = data["sent"], data["hit_rate"], data["seconds"]
    lat = data["latency_ms"]
    offline = data["offline"]
    offline_text = (
        ", ".join(f"{k} {v:.4f}" for k, v in offline.items()) if offline else data["offline_note"]
    )
    lines = [
        f"run:              {data['run']} (model {data['model_version']}; LLM: {data['llm']})",
        f"events sent:      {sent['total']:,} ({sent['catalog']:,} catalog, {sent['ratings']:,} "
        f"ratings, {sent['requests']:,} requests of which {sent['cold_requests']:,} cold with "
        f"context, {sent['chat']:,} chat turns, {sent['malformed']:,} malformed)",
        f"requests answered: {data['answered']:,}/{data['requests']:,}",
        "recommendations:  "
        + ", ".join(f"{k} {v:,}" for k, v in sorted(data["rungs"].items(), key=lambda kv: -kv[1]))
        + " (by rung)",
        "routes:           "
        + ", ".join(f"{k} {v:,}" for k, v in sorted(data["routes"].items(), key=lambda kv: -kv[1])),
        "explanations:     "
        + (", ".join(f"{k} {v:,}" for k, v in data["explanations"].items()) or "none"),
        "chat replies:     "
        + (", ".join(f"{k} {v:,}" for k, v in data["chat_replies"].items()) or "none"),
        f"dead letters:     {data['dead_letters']:,} (malformed sent: {sent['malformed']:,})",
    ]
    if data["llm_on"]:
        tokens = data["llm_tokens"]
        lines.append(
            f"LLM:              calls {data['llm_calls']}, tokens {tokens}, cost "
            f"${data['llm_cost_usd']:.4f}, cache {data['llm_cache']}"
        )
    if lat:
        lines.append(
            f"latency:          request -> list (Kafka timestamps) p50 {lat[0]:,.0f} ms, p95 "
            f"{lat[1]:,.0f} ms, p99 {lat[2]:,.0f} ms over {data['latency_n']:,} requests"
        )
    lines += [
        f"online HR@10:     {hit['rate']:.4f} ({hit['hits']:,} of {hit['evaluated']:,} "
        f"interactions were in the user's latest earlier list; {hit['no_list']:,} had none)",
        f"  lists emitted before the interaction was sent: {hit['shown_rate']:.4f} "
        f"({hit['shown_hits']:,} of {hit['shown_evaluated']:,})",
        f"offline HR@10:    {offline_text} (same model, leave-one-out on each user's last item)",
        f"time:             setup {sec.get('setup_s', 0):.0f} s, replay "
        f"{sec.get('replay_s', 0):.0f} s ({data['replay_events_per_s']:,.0f} events/s), "
        f"drain {sec.get('drain_s', 0):.0f} s, total {sec.get('total_s', 0):.0f} s",
    ]
    return lines


def _write_summary(folder: Path, data: dict[str, Any], lines: list[str], screen: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "summary.json").write_text(json.dumps(data, indent=2, default=str) + "\n")
    (folder / "dashboard.txt").write_text(screen)
    md = [f"# recstream demo {data['run']}", "", "```", *lines, "```", "", "Last dashboard:", ""]
    md += ["```", screen.rstrip(), "```", ""]
    (folder / "summary.md").write_text("\n".join(md))


async def _cleanup(settings: Settings, run: str) -> None:
    """Delete the run's topics and Redis keys (a shared Kafka and Redis stay tidy)."""
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.kafka.bootstrap_servers, **client_security(settings.kafka)
    )
    await admin.start()
    try:
        # The run's contract topics and faust's own topics of the run's groups.
        mine = [t for t in await admin.list_topics() if t.startswith(f"{run}-")]
        if mine:
            await admin.delete_topics(mine)
    finally:
        await admin.close()
    client = open_redis(settings.redis)
    try:
        keys = [
            k async for k in client.scan_iter(match=f"{settings.redis.key_prefix}:*", count=1000)
        ]
        for n in range(0, len(keys), 1000):
            # One UNLINK per key in a pipeline: a cluster refuses multi-key commands
            # across slots.
            pipe = client.pipeline(transaction=False)
            for key in keys[n : n + 1000]:
                pipe.unlink(key)
            await pipe.execute()
    finally:
        await client.aclose()
    print(f"deleted {len(mine)} topics and {len(keys)} Redis keys of run {run}")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="recstream demo",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    # Defaults sized for about 3 minutes on a busy 2-core machine (docs/demo.md):
    # the workers keep up with 600 events/s there, so lists come from the model
    # and not from a lagging user state; --limit 0 replays all 100,000 ratings.
    parser.add_argument(
        "--limit",
        type=int,
        default=30_000,
        help="ratings to replay, the first in time order (0 = all 100,000; default 30,000)",
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=600.0,
        help="events/s (default 600; 0 = as fast as possible, then requests race ahead of "
        "the interactions before them and many users still look cold)",
    )
    parser.add_argument("--request-every", type=int, default=10, help="a request every N ratings")
    parser.add_argument(
        "--malformed", type=float, default=0.01, help="fraction of invalid events mixed in"
    )
    parser.add_argument("--sample", type=int, default=4, help="recommendations to print")
    parser.add_argument(
        "--keep",
        action="store_true",
        help="leave Kafka, Redis and the run's topics and keys in place (recstream tail); "
        "workers and the LLM server are stopped either way",
    )
    parser.add_argument(
        "--llm",
        choices=("off", "test", "local"),
        default=None,
        help="the LLM: off; test = the scripted LLM TEST SERVER (not a model); local = the "
        "real local model (recstream llm-local; fetches ~1.1 GB once). Default: the endpoint "
        "in RECSTREAM_LLM_BASE_URL (or RECSTREAM_LLM_ENDPOINTS) if set, else off",
    )
    parser.add_argument(
        "--cold-share", type=float, default=0.1, help="users arriving cold with stated context"
    )
    parser.add_argument(
        "--chat-share",
        type=float,
        default=0.002,
        help="scripted chat turns per rating (the demo adds one five-turn conversation of "
        "its own, shown turn by turn)",
    )
    parser.add_argument(
        "--plain",
        action="store_true",
        help="plain progress lines instead of the live dashboard (the default when stdout is "
        "not a terminal)",
    )
    parser.add_argument(
        "--idle", type=float, default=5.0, help="seconds of quiet topics that end the drain"
    )
    args = parser.parse_args(argv)
    t_start = time.monotonic()

    base = Settings.from_env()
    # A fresh topic prefix and Redis key prefix per run: the demo never mixes
    # with an earlier run's state, and a rerun needs no cleanup.
    run = f"demo{uuid.uuid4().hex[:6]}"
    model = base.model
    if "RECSTREAM_MODEL_DIR" not in os.environ:
        # `recstream train` + `export` repoint <RECSTREAM_HOME>/models/current:
        # the workers load that one, also under a RECSTREAM_HOME of one's own.
        model = dataclasses.replace(model, model_dir=base.home / "models" / "current")
    settings = dataclasses.replace(
        base,
        kafka=dataclasses.replace(base.kafka, topic_prefix=f"{base.kafka.topic_prefix}{run}-"),
        redis=dataclasses.replace(base.redis, key_prefix=f"{base.redis.key_prefix}:{run}"),
        model=model,
    )
    env = dict(os.environ)
    env.update(
        {
            "RECSTREAM_TOPIC_PREFIX": settings.kafka.topic_prefix,
            "RECSTREAM_REDIS_KEY_PREFIX": settings.redis.key_prefix,
            "RECSTREAM_GROUP_PREFIX": run,
            "RECSTREAM_MODEL_DIR": str(settings.model.model_dir),
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
    topics_made = False
    try:
        _step("model")
        _ensure_model(settings)
        _step(f"topics (prefix {settings.kafka.topic_prefix})")
        topics_made = True
        asyncio.run(ensure_topics(settings.kafka))
        _step("LLM")
        configured = bool(base.llm.endpoints)
        mode = args.llm or ("endpoint" if configured else "off")
        url = base.llm.base_url if mode == "endpoint" else ""
        if mode in ("test", "local"):
            url, llm_proc = _start_llm(mode, env)
        roles: tuple[str, ...] = ROLES
        if url:
            if mode != "endpoint":
                env["RECSTREAM_LLM_BASE_URL"] = url
                env.pop("RECSTREAM_LLM_ENDPOINTS", None)
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
        else:
            mode = "off"
            env.pop("RECSTREAM_LLM_BASE_URL", None)
            env.pop("RECSTREAM_LLM_ENDPOINTS", None)
        label = _llm_label(mode, url)
        print(f"LLM: {label}")
        _step("workers")
        procs = _start_workers(settings, env, roles)
        asyncio.run(_wait_ready(procs))
        manifest = json.loads((settings.model.model_dir / "manifest.json").read_text())
        offline, offline_note = _offline_metrics(settings)
        observer = Observer(
            settings,
            workers={role: port for role, port, _ in procs},
            llm=label,
            llm_on=bool(url),
            model_version=str(manifest.get("version", "")),
            ratings_expected=args.limit or ML100K_RATINGS,
            offline=offline,
            offline_note=offline_note,
        )
        console = Console(force_terminal=False) if args.plain else Console()
        dashboard = Dashboard(console)
        setup_s = time.monotonic() - t_start
        _step(
            "replaying MovieLens-100k"
            + ("" if dashboard.live else " (plain lines: stdout is not a terminal)")
        )
        catalog, _ = ml100k_events(ml100k_folder(settings), limit=1)
        titles = {c.item_id: c.title or c.item_id for c in catalog}
        stats, last, phases = asyncio.run(_run(settings, args, observer, dashboard, titles))
        phases = {"setup_s": setup_s, **phases}
        _step("sample of recommendations")
        _print_samples(observer, titles, args.sample, mode)
        _step("one conversation, turn by turn")
        _print_conversation(observer, mode)
        _step("summary")
        phases["total_s"] = time.monotonic() - t_start
        data = _summary(run, args, mode, stats, observer, phases)
        lines = _summary_lines(data)
        for line in lines:
            print(line)
        recorder = Console(record=True, width=140, file=io.StringIO(), force_terminal=False)
        recorder.print(render(last))
        folder = settings.home / "demo" / run
        _write_summary(folder, data, lines, recorder.export_text())
        print(f"written: {folder / 'summary.json'}, summary.md, dashboard.txt")
    finally:
        _step("teardown")
        _stop(procs)
        if llm_proc is not None:
            llm_proc.terminate()
            llm_proc.wait(10)
        if args.llm == "local":
            subprocess.run([sys.executable, "-m", "streams.cli", "llm-local", "down"], check=False)
        if not args.keep:
            if topics_made:
                try:
                    asyncio.run(_cleanup(settings, run))
                except Exception as exc:  # teardown goes on; say what is left
                    print(f"could not delete run {run}'s topics and keys: {exc}")
            if not was_up:
                subprocess.run(["bash", str(SCRIPT), "down"], check=False)
        else:
            print(
                f"kept: Kafka, Redis, topics {settings.kafka.topic_prefix}*, "
                f"keys {settings.redis.key_prefix}:*"
            )
    return 0
