"""Benchmark: latency the LLM pool adds, and its throughput next to bare httpx.

Starts the LLM TEST SERVER (not a model) in a subprocess with a fixed
latency, then in the same run

1. capacity: N concurrent chat completions with a bare ``httpx.AsyncClient``
   and through ``LLMPool.complete`` (limits, breaker, budget, redaction,
   validation on; cache off so every call goes upstream; no Redis): p50/p99
   and throughput of each. Both queue at the server, so their latencies say
   little about the pool; the bare throughput is the server's capacity.
2. added latency below saturation (``--load`` x capacity, open loop: calls
   start on a fixed schedule whether or not earlier ones finished), bare and
   pool alternating in rounds: p50/p99 of each and the pool's added latency
   per percentile (target p99 <= 5 ms).

    .venv/bin/python benchmarks/bench_llm_pool.py --calls 500 --latency-ms 50 --json out.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from workers.llm import EndpointSettings, LLMPool, LLMSettings  # noqa: E402
from workers.llm.parsing import extract_json  # noqa: E402
from workers.llm.pool import ChatRequest, Completion  # noqa: E402


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _messages(i: int) -> tuple[dict[str, str], ...]:
    data = orjson.dumps(
        {"k": 3, "candidates": [{"id": f"i{n}", "title": f"t{n}"} for n in range(5)]}
    )
    return (
        {"role": "system", "content": "You are the rank component.\nrole: rank"},
        {"role": "user", "content": f"<data>\n{data.decode()}\n</data> #{i}"},
    )


def _pool_settings(url: str, concurrency: int) -> LLMSettings:
    endpoint = EndpointSettings(
        name="bench", base_url=url, rpm=1_000_000, tpm=1_000_000_000, concurrency=concurrency
    )
    return LLMSettings(endpoints=(endpoint,), cache_enabled=False, budget_tokens_per_minute=10**9)


def _parse(c: Completion) -> dict[str, object]:
    return extract_json(c.content)


async def _bare_call(client: httpx.AsyncClient, i: int) -> float:
    """One call straight through httpx, parsed like the pool parses it; its latency."""
    start = time.perf_counter()
    body = {"model": "m", "messages": list(_messages(i)), "max_tokens": 64}
    response = await client.post("chat/completions", content=orjson.dumps(body))
    response.raise_for_status()
    extract_json(response.json()["choices"][0]["message"]["content"])
    return time.perf_counter() - start


async def _pool_call(pool: LLMPool, i: int) -> float:
    """The same call through the pool; its latency."""
    start = time.perf_counter()
    request = ChatRequest("rank", _messages(i), max_tokens=64, cacheable=False)
    await pool.complete(request, deadline=30, parse=_parse)
    return time.perf_counter() - start


async def _closed_loop(one: Any, calls: int) -> tuple[list[float], float]:
    """20 warm-up calls, then ``calls`` at once; their latencies and the wall time."""
    await asyncio.gather(*(one(-i - 1) for i in range(20)))
    start = time.perf_counter()
    latencies = await asyncio.gather(*(one(i) for i in range(calls)))
    return list(latencies), time.perf_counter() - start


async def bare(url: str, calls: int) -> tuple[list[float], float]:
    limits = httpx.Limits(max_connections=calls, max_keepalive_connections=calls)
    async with httpx.AsyncClient(base_url=url + "/", limits=limits, timeout=30) as client:
        return await _closed_loop(lambda i: _bare_call(client, i), calls)


async def pooled(url: str, calls: int) -> tuple[list[float], float]:
    async with LLMPool(_pool_settings(url, calls)) as pool:
        return await _closed_loop(lambda i: _pool_call(pool, i), calls)


async def _open_loop(one: Any, rate: float, seconds: float) -> list[float]:
    """Start ``one(i)`` every 1/rate s for ``seconds`` (open loop); their latencies."""
    count = max(int(rate * seconds), 20)
    tasks = []
    t0 = time.perf_counter()
    for i in range(count):
        tasks.append(asyncio.ensure_future(one(i)))
        delay = (i + 1) / rate - (time.perf_counter() - t0)
        if delay > 0:
            await asyncio.sleep(delay)
    return list(await asyncio.gather(*tasks))


async def open_loop(url: str, rate: float, seconds: float, rounds: int) -> dict[str, list[float]]:
    """Bare and pool alternating, each round at the same open-loop rate, one process."""
    limits = httpx.Limits(max_connections=1000, max_keepalive_connections=1000)
    out: dict[str, list[float]] = {
        "bare httpx": [],
        "LLMPool": [],
        "cpu:bare httpx": [],
        "cpu:LLMPool": [],
    }
    async with (
        httpx.AsyncClient(base_url=url + "/", limits=limits, timeout=30) as client,
        LLMPool(_pool_settings(url, 1000)) as pool,
    ):

        def bare_one(i: int) -> Any:
            return _bare_call(client, i)

        def pool_one(i: int) -> Any:
            return _pool_call(pool, i)

        await _open_loop(bare_one, rate, 1.0)  # warm connections, both paths
        await _open_loop(pool_one, rate, 1.0)
        for _ in range(rounds):
            out["bare httpx"] += await _open_loop(bare_one, rate, seconds)
            out["LLMPool"] += await _open_loop(pool_one, rate, seconds)
        # The pool's own work, free of queueing on a loaded machine: client CPU
        # per call, calls one at a time, bare and pool alternating.
        for _ in range(rounds):
            for name, one in (("bare httpx", bare_one), ("LLMPool", pool_one)):
                cpu = time.process_time()
                for i in range(100):
                    await one(i)
                out[f"cpu:{name}"].append((time.process_time() - cpu) / 100)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--latency-ms", type=float, default=50)
    parser.add_argument("--rounds", type=int, default=3, help="alternating bare/pool rounds")
    parser.add_argument("--load", type=float, default=0.5, help="open-loop rate / capacity")
    parser.add_argument("--seconds", type=float, default=5.0, help="per open-loop round")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "streams.cli",
            "llm-test-server",
            "--port",
            "0",
            "--latency-ms",
            str(args.latency_ms),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        url = line.rsplit(" ", 1)[-1].strip()
        results: dict[str, list[tuple[list[float], float]]] = {"bare httpx": [], "LLMPool": []}
        for _ in range(args.rounds):
            results["bare httpx"].append(asyncio.run(bare(url, args.calls)))
            results["LLMPool"].append(asyncio.run(pooled(url, args.calls)))
        capacity = statistics.median(args.calls / wall for _, wall in results["bare httpx"])
        rate = args.load * capacity
        below = asyncio.run(open_loop(url, rate, args.seconds, args.rounds))
    finally:
        server.terminate()
        server.wait()
    print(
        f"protocol: {args.calls} concurrent calls x {args.rounds} rounds (alternating), "
        f"LLM TEST SERVER in a subprocess at {args.latency_ms:g} ms latency, one client "
        "process, cache off, no Redis; median over rounds"
    )
    summary: dict[str, tuple[float, float, float]] = {}
    for name, runs in results.items():
        p50 = statistics.median(_pct(lat, 0.50) for lat, _ in runs) * 1000
        p99 = statistics.median(_pct(lat, 0.99) for lat, _ in runs) * 1000
        rps = statistics.median(args.calls / wall for _, wall in runs)
        summary[name] = (p50, p99, rps)
        print(f"  {name:<11} p50 {p50:7.1f} ms   p99 {p99:7.1f} ms   throughput {rps:7.0f} calls/s")
    (b50, b99, brps), (p50, p99, prps) = summary["bare httpx"], summary["LLMPool"]
    print(f"  added latency by the pool: p50 {p50 - b50:+.1f} ms, p99 {p99 - b99:+.1f} ms")
    print(f"  throughput relative to bare httpx: {prps / brps:.2f}x")
    report: dict[str, Any] = {
        "latency_ms": args.latency_ms,
        "capacity": {
            "calls": args.calls,
            "server_capacity_calls_per_s": capacity,
            **{
                name: {"p50_ms": v[0], "p99_ms": v[1], "calls_per_s": v[2]}
                for name, v in summary.items()
            },
        },
        "below_saturation": {"rate_calls_per_s": rate, "load": args.load},
    }
    print(
        f"below saturation: open loop at {rate:.0f} calls/s ({args.load:.0%} of the bare "
        f"capacity {capacity:.0f}/s), {args.rounds} x {args.seconds:g} s rounds alternating"
    )
    cpu = {name: statistics.median(below.pop(f"cpu:{name}")) * 1000 for name in summary}
    for name, lat in below.items():
        p50, p99 = _pct(lat, 0.50) * 1000, _pct(lat, 0.99) * 1000
        report["below_saturation"][name] = {"p50_ms": p50, "p99_ms": p99, "calls": len(lat)}
        print(f"  {name:<11} p50 {p50:7.2f} ms   p99 {p99:7.2f} ms   ({len(lat)} calls)")
    bb, pp = report["below_saturation"]["bare httpx"], report["below_saturation"]["LLMPool"]
    report["below_saturation"]["added_p50_ms"] = pp["p50_ms"] - bb["p50_ms"]
    report["below_saturation"]["added_p99_ms"] = pp["p99_ms"] - bb["p99_ms"]
    print(
        f"  added latency by the pool: p50 {pp['p50_ms'] - bb['p50_ms']:+.2f} ms, "
        f"p99 {pp['p99_ms'] - bb['p99_ms']:+.2f} ms (target p99 <= 5 ms)"
    )
    report["cpu_ms_per_call"] = cpu
    print(
        "client CPU per call, one at a time: "
        + ", ".join(f"{name} {ms:.2f} ms" for name, ms in cpu.items())
        + f" -> the pool's own work {cpu['LLMPool'] - cpu['bare httpx']:+.2f} ms"
    )
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
