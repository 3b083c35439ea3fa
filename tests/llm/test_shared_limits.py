"""Four worker processes sharing one Redis never exceed the provider's limits."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import orjson
import pytest
import redis.asyncio as aioredis

from tests.llm.conftest import TEST_REDIS_URL
from workers.testing.llm_server import LLMTestServer

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "rpm,tpm", [(8, 20_000), (30, 4_000)], ids=["requests-bind", "tokens-bind"]
)
async def test_four_processes_bursting_10x_respect_rpm_and_tpm(
    server: LLMTestServer, redis: aioredis.Redis, key_prefix: str, rpm: int, tpm: int
) -> None:
    window = 1.5
    per_worker = rpm * 10  # each process alone bursts 10x the limit
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.llm._burst_worker",
            server.url,
            TEST_REDIS_URL,
            key_prefix,
            str(rpm),
            str(tpm),
            str(window),
            str(per_worker),
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
        )
        for _ in range(4)
    ]
    outputs = await asyncio.wait_for(asyncio.gather(*(p.communicate() for p in procs)), 90)
    results = [orjson.loads(out.strip().splitlines()[-1]) for out, _ in outputs]
    assert all(p.returncode == 0 for p in procs)
    ok = sum(r["ok"] for r in results)
    refused = sum(r["refused"] for r in results)
    late = sum(r["late"] for r in results)
    counters = server.counters(window)
    print(
        f"\nshared limits: rpm={rpm} tpm={tpm} window={window}s sent={4 * per_worker} "
        f"ok={ok} refused={refused} late={late} counters={counters}"
    )
    # A late call may or may not have reached the server before its deadline.
    assert ok <= counters["requests"] <= ok + late
    # the binding limit was used, not just refused
    assert ok + late >= min(rpm, tpm // 1200)
    assert refused > 0 and sum(r["other"] for r in results) == 0
    assert counters["max_requests_in_window"] <= rpm
    assert counters["max_tokens_in_window"] <= tpm
