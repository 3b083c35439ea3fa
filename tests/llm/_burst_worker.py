"""A worker process for the shared-limit test: bursts calls at the test server.

Usage: python -m tests.llm._burst_worker URL REDIS_URL KEY_PREFIX RPM TPM WINDOW N
Prints one JSON line: {"ok": n, "refused": n, "late": n, "other": n}.
"""

from __future__ import annotations

import asyncio
import sys

import orjson
import redis.asyncio as aioredis

from workers.llm import LLM, EndpointSettings, Item, LLMError, LLMPool, LLMSettings, UserContext
from workers.llm.errors import DeadlineExceeded, RateLimited


async def run(argv: list[str]) -> dict[str, int]:
    url, redis_url, prefix = argv[0], argv[1], argv[2]
    rpm, tpm, window, n = int(argv[3]), int(argv[4]), float(argv[5]), int(argv[6])
    endpoint = EndpointSettings(
        name="shared", base_url=url, rpm=rpm, tpm=tpm, window_s=window, window_margin_s=0.1
    )
    settings = LLMSettings(endpoints=(endpoint,), key_prefix=prefix, cache_enabled=False)
    client = aioredis.from_url(redis_url)
    counts = {"ok": 0, "refused": 0, "late": 0, "other": 0}
    items = [Item(f"i{k}", f"Item {k}", "text " * (k * 7 % 40)) for k in range(6)]
    async with LLMPool(settings, redis=client) as pool:
        llm = LLM(pool)

        async def one(i: int) -> None:
            # varied prompt sizes, so the token limit binds as well as the request limit
            user = UserContext(query=f"burst {i} " + "word " * (i % 30))
            try:
                await llm.rank(user, items, k=3, deadline=window * 2.5)
                counts["ok"] += 1
            except RateLimited:
                counts["refused"] += 1
            except DeadlineExceeded:
                # Admitted, but the answer came after the deadline: on a busy machine
                # the processes are slow, not the limiter wrong. Counted apart.
                counts["late"] += 1
            except LLMError as exc:
                counts["other"] += 1
                print(type(exc).__name__, exc, file=sys.stderr)

        await asyncio.gather(*(one(i) for i in range(n)))
    await client.aclose()
    return counts


if __name__ == "__main__":
    print(orjson.dumps(asyncio.run(run(sys.argv[1:]))).decode())
