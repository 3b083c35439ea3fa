"""New catalog items become recommendable from their text alone; deleted ones never return."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from contracts import CODECS, CatalogChange, Recommendation, RecommendationRequest, topics
from streams.kafka import KafkaProducerResource
from streams.replay import replay
from tests.streams.harness import WorkerProcess, collect, worker_env
from tests.streams.test_end_to_end import _answered, _expected, _slice, _wait_for_state
from workers.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]


async def test_new_catalog_item_is_recommended_then_deleted_never(
    settings: Settings,
    kafka_topics: dict[str, str],
    redis_client: aioredis.Redis,
    ml100k_model_dir: Path,
    tmp_path: Path,
) -> None:
    """An item added mid-stream reaches users, from its text alone and with no slot
    reserved for new items (the default), within a bounded time; once deleted it is
    never recommended again, and an old upsert replayed after the delete does not
    bring it back."""
    catalog, events = _slice(settings, limit=2000, request_every=0)
    by_id = {c.item_id: c for c in catalog}
    worker = WorkerProcess(
        worker_env(settings, ml100k_model_dir, RECSTREAM_NEW_ITEM_SLOT="0"),
        ["all"],
        tmp_path / "worker.log",
    ).start()
    codec = CODECS[topics.REQUESTS]

    async def probe(producer: KafkaProducerResource, tag: str, k: int) -> list[Recommendation]:
        now = int(time.time() * 1000)
        requests = [RecommendationRequest(f"{tag}-{u}", u, k, now) for u in sorted(expected)]
        for r in requests:
            await producer.send(topics.REQUESTS, codec.encode(r), r.user_id.encode())
        ids = {r.request_id for r in requests}
        recs = await collect(settings, topics.RECOMMENDATIONS, until=_answered(ids))
        return [r for r in recs if r.cause.id in ids]

    try:
        await worker.wait_ready()
        await replay(settings, limit=2000, request_every=0, progress=False)
        expected = _expected(catalog, events)
        await _wait_for_state(settings, expected)
        # A sequel of the most active user's latest film: text close to that history.
        user = max(expected, key=lambda u: expected[u].interactions)
        latest = by_id[expected[user].history[0]]
        sequel = CatalogChange(
            "new-item-upsert",
            "new-1",
            "upsert",
            int(time.time() * 1000),
            title=f"{latest.title} II",
            attributes=dict(latest.attributes or {}),
        )
        async with KafkaProducerResource(settings.kafka) as producer:
            await producer.send(topics.CATALOG, CODECS[topics.CATALOG].encode(sequel), b"new-1")
            added = time.monotonic()
            reached: list[str] = []
            rounds = 0
            while not reached and time.monotonic() - added < 60:
                rounds += 1
                recs = await probe(producer, f"probe{rounds}", 10)
                reached = [r.user_id for r in recs if "new-1" in {i.item_id for i in r.items}]
            seen_after = time.monotonic() - added
            assert reached, "the new item never reached any user"
            delete = CatalogChange("new-item-delete", "new-1", "delete", sequel.ts_ms + 1)
            await producer.send(topics.CATALOG, CODECS[topics.CATALOG].encode(delete), b"new-1")
            await producer.send(topics.CATALOG, CODECS[topics.CATALOG].encode(sequel), b"new-1")
            await asyncio.sleep(3)  # more than one catalog poll interval
            after = await probe(producer, "after", 50)
    finally:
        assert worker.stop() == 0, worker.tail()
    assert len(after) == len(expected)
    assert all("new-1" not in {i.item_id for i in r.items} for r in after)
    print(
        f"\nnew item in the top 10 of {len(reached)}/{len(expected)} users "
        f"{seen_after:.2f}s after its catalog event ({rounds} probe rounds); "
        f"after delete: 0 of {len(after)} lists of 50 contain it"
    )
