"""The interaction path's serial ceiling, and the worker against it, in one run.

On one topic pre-filled with N MovieLens-100k rating events (fresh topics and
keys), measured one after the other in this run:

    raw      an aiokafka consumer reading the topic, no processing (events/s)
    decode   the contracts codec decoding the same payloads, plus the
             plausibility check the edge runs (events/s, in process)
    apply    ``UserStateStore.apply`` in batches of 500 straight into Redis,
             triggers off (events/s; fresh keys)
    ceiling  1 / (1/raw + 1/decode + 1/apply): one process doing the three
             serially with nothing else (no framework, no acks, no overlap)
    worker   ``recstream worker --role interactions`` draining the topic
             (triggers off) until Redis holds all N (events/s), on its
             batch edge (streams.edge, the default)
    faust    the same worker with the role on faust's per-record stream
             (``RECSTREAM_BATCH_EDGE_ROLES=''``), fresh keys and group: the
             edge the batch edge replaced, as the baseline

and the ratios worker / ceiling. With ``--profile`` (py-spy installed), the
worker is sampled while it drains and its busy time is split by where it goes
(faust's fetch thread, faust's per-message delivery, stream iteration and acks,
decode, the state write, the Redis client, the batch bookkeeping, the batch
edge's fetch and commit).

    .venv/bin/python benchmarks/bench_ceiling.py --events 50000 --json out.json
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_streams import Worker, _interactions, _produce, _settings, raw_consume_rate, wait_applied

from contracts import CODECS, topics
from streams.kafka import ensure_topics
from workers.resources import RedisResource
from workers.settings import Settings
from workers.state import UserStateStore
from workers.validation import Plausibility, check_plausible

BATCH = 500

# Where a sampled worker stack spends its time: the first rule whose marker
# appears in the stack (innermost frames first) names the bucket.
_BUCKETS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("idle (waiting on I/O)", ("EpollSelector.select", "_worker (concurrent/futures/thread.py")),
    ("faust fetch thread (aiokafka)", ("WorkerThread.run", "mode/threads.py")),
    ("codec decode + checks", ("Codec.decode", "check_plausible", "BatchProcessor._decode")),
    ("redis client (pack/parse)", ("redis/asyncio", "redis/_parsers")),
    ("state script args + reply", ("UserStateStore.apply",)),
    ("faust per-message delivery", ("_drain_messages", "on_message", "wait_first")),
    ("faust stream iteration + acks", ("faust/streams.py", "faust/events.py", "Stream.ack")),
    ("batch bookkeeping (log, metrics)", ("BatchProcessor.process", "create_app.<locals>.agent")),
    ("batch edge (aiokafka fetch, commit, lag)", ("streams/edge.py", "aiokafka/")),
)


def _bucket(stack: str) -> str:
    for name, markers in _BUCKETS:
        if any(m in stack for m in markers):
            return name
    return "other (event loop, timers, web)"


def profile_split(raw: Path) -> dict[str, float]:
    """Share of busy samples per bucket (idle excluded) from py-spy's raw output."""
    counts: collections.Counter[str] = collections.Counter()
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if n.isdigit():
            counts[_bucket(stack)] += int(n)
    idle = counts.pop("idle (waiting on I/O)", 0)
    busy = sum(counts.values()) or 1
    out = {k: round(v / busy, 4) for k, v in counts.most_common()}
    out["_idle_share_of_all_samples"] = round(idle / max(busy + idle, 1), 4)
    return out


def decode_rate(payloads: list[tuple[bytes, bytes]], settings: Settings) -> float:
    codec = CODECS[topics.INTERACTIONS]
    s = settings.stream
    plaus = Plausibility(s.ts_floor_ms, s.max_future_skew_ms, s.rating_min, s.rating_max)
    now_ms = int(time.time() * 1000)
    best = 0.0
    for _ in range(2):
        started = time.perf_counter()
        for key, value in payloads:
            check_plausible(topics.INTERACTIONS, key, codec.decode(value), plaus, now_ms=now_ms)
        best = max(best, len(payloads) / (time.perf_counter() - started))
    return best


async def apply_rate(settings: Settings, events: list[Any]) -> float:
    # Fresh keys: the worker's run below must not find these events applied.
    redis_settings = dataclasses.replace(
        settings.redis, key_prefix=f"{settings.redis.key_prefix}-apply{uuid.uuid4().hex[:4]}"
    )
    async with RedisResource(redis_settings) as redis:
        store = UserStateStore(redis)
        await store.apply(events[:BATCH])  # load the scripts
        rest = events[BATCH:]
        started = time.perf_counter()
        for i in range(0, len(rest), BATCH):
            await store.apply(rest[i : i + BATCH])
        return len(rest) / (time.perf_counter() - started)


async def run(n: int, profile_s: float, spy: str | None, workdir: Path) -> dict[str, Any]:
    settings = _settings("c")
    await ensure_topics(settings.kafka)
    events = _interactions(settings, n)
    codec = CODECS[topics.INTERACTIONS]
    payloads = [(e.user_id.encode(), codec.encode(e)) for e in events]
    await _produce(settings, topics.INTERACTIONS, payloads)
    users = sorted({e.user_id for e in events})
    out: dict[str, Any] = {"events": n, "batch": BATCH, "load_before": os.getloadavg()}
    out["raw_consume_eps"] = max(
        [await raw_consume_rate(settings, topics.INTERACTIONS, n) for _ in range(2)]
    )
    out["decode_eps"] = decode_rate(payloads, settings)
    out["apply_eps"] = await apply_rate(settings, events)
    out["ceiling_eps"] = 1 / (
        1 / out["raw_consume_eps"] + 1 / out["decode_eps"] + 1 / out["apply_eps"]
    )
    spy_ok = profile_s > 0 and spy is not None
    raw_profile = workdir / "worker-profile.txt"
    async with Worker(settings, "interactions", 6194, RECSTREAM_TRIGGER_KINDS="skip") as worker:
        sampler = None
        if spy_ok:
            assert worker.proc is not None
            sampler = subprocess.Popen(
                [
                    *(str(spy), "record", "-r", "200", "-d", str(int(profile_s)), "-f", "raw"),
                    *("-o", str(raw_profile), "--pid", str(worker.proc.pid)),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        out["worker_eps"] = n / await wait_applied(settings, users, n)
        if sampler is not None:
            sampler.wait(timeout=profile_s + 30)
    out["ratio"] = out["worker_eps"] / out["ceiling_eps"]
    # The baseline edge, same run: the same worker with the role on faust's
    # per-record stream (fresh state keys and group, so it reads every event).
    faust_settings = dataclasses.replace(
        settings,
        redis=dataclasses.replace(settings.redis, key_prefix=f"{settings.redis.key_prefix}-f"),
    )
    async with Worker(
        faust_settings,
        "interactions",
        6195,
        RECSTREAM_TRIGGER_KINDS="skip",
        RECSTREAM_BATCH_EDGE_ROLES="",
    ):
        out["worker_faust_eps"] = n / await wait_applied(faust_settings, users, n)
    out["ratio_faust"] = out["worker_faust_eps"] / out["ceiling_eps"]
    out["load_after"] = os.getloadavg()
    if spy_ok and raw_profile.exists():
        out["worker_profile"] = profile_split(raw_profile)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--profile", type=float, default=0.0, help="py-spy seconds (0 = off)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    spy_found = spy if Path(spy).exists() else None
    if args.profile and spy_found is None:
        print("py-spy not found: no worker profile")
    with tempfile.TemporaryDirectory() as tmp:  # the raw samples (large) stay out of results
        r = asyncio.run(run(args.events, args.profile, spy_found, Path(tmp)))
    print(f"interaction path, {r['events']:,} events, load {r['load_before'][0]:.1f}")
    for label, key in (
        ("raw aiokafka consume", "raw_consume_eps"),
        ("codec decode + checks", "decode_eps"),
        (f"state apply, batches of {BATCH}", "apply_eps"),
        ("serial ceiling", "ceiling_eps"),
        ("worker --role interactions", "worker_eps"),
        ("the same on faust's stream", "worker_faust_eps"),
    ):
        print(f"  {label:<30} {r[key]:>10,.0f} events/s")
    print(f"  worker / ceiling               {r['ratio']:>10.2f}")
    print(f"  faust-stream worker / ceiling  {r['ratio_faust']:>10.2f}")
    for k, v in r.get("worker_profile", {}).items():
        print(f"    {k:<36} {v:6.1%}")
    if args.json:
        args.json.write_text(json.dumps(r, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
