"""``recstream demo``: the whole system end to end on the embedded default.

Today it brings up the local Kafka and Redis, creates the topics, sends one
event of each input kind through the real broker and reads it back through
the codecs, and (with --down) tears the infrastructure down again. Each later
stage of the project (model, stream processors, LLM paths) adds its step here.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import time

from aiokafka import AIOKafkaConsumer

from contracts import (
    CODECS,
    CatalogChange,
    ChatMessage,
    Event,
    Interaction,
    RecommendationRequest,
    topics,
)
from streams.infra import SCRIPT
from streams.kafka import KafkaProducerResource, ensure_topics
from workers.settings import Settings

__all__ = ["main"]


def _sample_events(now_ms: int) -> dict[str, Event]:
    return {
        topics.CATALOG: CatalogChange(
            "demo-c1",
            "demo-item-1",
            "upsert",
            now_ms,
            title="Heat (1995)",
            description="Crime | Thriller",
            attributes={"genres": ("Crime", "Thriller")},
        ),
        topics.INTERACTIONS: Interaction(
            "demo-e1", "demo-user-1", "demo-item-1", "rating", now_ms, 4.5
        ),
        topics.REQUESTS: RecommendationRequest("demo-r1", "demo-user-1", 10, now_ms),
        topics.CHAT: ChatMessage(
            "demo-m1", "demo-s1", "demo-user-1", "something like Heat?", now_ms
        ),
    }


async def _round_trip(settings: Settings) -> None:
    await ensure_topics(settings.kafka)
    events = _sample_events(int(time.time() * 1000))
    async with KafkaProducerResource(settings.kafka) as producer:
        for topic, event in events.items():
            await producer.send(topic, CODECS[topic].encode(event), b"demo")
    consumer = AIOKafkaConsumer(
        *(settings.kafka.topic(t) for t in events),
        bootstrap_servers=settings.kafka.bootstrap_servers,
        auto_offset_reset="latest",
        enable_auto_commit=False,
    )
    # Read back from the offsets just written: seek to (end - 1) per partition.
    await consumer.start()
    try:
        seen: dict[str, Event] = {}
        parts = consumer.assignment()
        ends = await consumer.end_offsets(list(parts))
        for tp, end in ends.items():
            consumer.seek(tp, max(end - 1, 0))
        async with asyncio.timeout(20):
            while len(seen) < len(events):
                for tp, records in (await consumer.getmany(timeout_ms=500)).items():
                    short = tp.topic.removeprefix(settings.kafka.topic_prefix)
                    for record in records:
                        event = CODECS[short].decode(record.value)
                        if event == events[short]:
                            seen[short] = event
    finally:
        await consumer.stop()
    for topic, event in seen.items():
        print(f"  {topic:<13} round trip ok: {type(event).__name__}")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="recstream demo",
        description="Run recstream end to end on the embedded default: local Kafka + Redis "
        "started for you, topics created, events sent through the real broker.",
    )
    parser.add_argument("--down", action="store_true", help="stop Kafka and Redis at the end")
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    print("== infrastructure")
    subprocess.run(["bash", str(SCRIPT), "up"], check=True)
    print("== topics and a round trip through the broker")
    asyncio.run(_round_trip(settings))
    if args.down:
        print("== teardown")
        subprocess.run(["bash", str(SCRIPT), "down"], check=True)
    return 0
