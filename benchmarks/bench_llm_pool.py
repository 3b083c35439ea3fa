"""Benchmark: latency the LLM pool adds, and its throughput next to bare httpx.

Starts the LLM TEST SERVER (not a model) in a subprocess with a fixed
latency, then in the same run sends N concurrent chat completions
(a) with a bare ``httpx.AsyncClient`` and (b) through ``LLMPool.complete``
(limits, breaker, budget, redaction, validation on; cache off so every call
goes upstream; no Redis), and prints p50/p99 of each, the added latency
(pool minus bare, per percentile) and the throughput ratio.

    .venv/bin/python benchmarks/bench_llm_pool.py --calls 500 --latency-ms 50
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from workers.llm import (  # noqa: E402
    ChatRequest,
    Completion,
    EndpointSettings,
    LLMPool,
    LLMSettings,
)
from workers.llm.parsing import extract_json  # noqa: E402


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


async def bare(url: str, calls: int) -> tuple[list[float], float]:
    limits = httpx.Limits(max_connections=calls, max_keepalive_connections=calls)
    async with httpx.AsyncClient(base_url=url + "/", limits=limits, timeout=30) as client:

        async def one(i: int) -> float:
            start = time.perf_counter()
            body = {"model": "m", "messages": list(_messages(i)), "max_tokens": 64}
            response = await client.post("chat/completions", content=orjson.dumps(body))
            response.raise_for_status()
            extract_json(response.json()["choices"][0]["message"]["content"])
            return time.perf_counter() - start

        await asyncio.gather(*(one(-i - 1) for i in range(20)))  # warm connections
        start = time.perf_counter()
        latencies = await asyncio.gather(*(one(i) for i in range(calls)))
        return list(latencies), time.perf_counter() - start


async def pooled(url: str, calls: int) -> tuple[list[float], float]:
    endpoint = EndpointSettings(
        name="bench", base_url=url, rpm=1_000_000, tpm=1_000_000_000, concurrency=calls
    )
    settings = LLMSettings(
        endpoints=(endpoint,), cache_enabled=False, budget_tokens_per_minute=10**9
    )
    async with LLMPool(settings) as pool:

        def parse(c: Completion) -> dict[str, object]:
            return extract_json(c.content)

        async def one(i: int) -> float:
            start = time.perf_counter()
            request = ChatRequest("rank", _messages(i), max_tokens=64, cacheable=False)
            await pool.complete(request, deadline=30, parse=parse)
            return time.perf_counter() - start

        await asyncio.gather(*(one(-i - 1) for i in range(20)))
        start = time.perf_counter()
        latencies = await asyncio.gather(*(one(i) for i in range(calls)))
        return list(latencies), time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--latency-ms", type=float, default=50)
    parser.add_argument("--rounds", type=int, default=3, help="alternating bare/pool rounds")
    args = parser.parse_args()
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
