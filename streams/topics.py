"""``recstream topics``: create recstream's topics explicitly."""

from __future__ import annotations

import argparse
import asyncio
import logging

from contracts import topics
from streams.kafka import ensure_topics
from workers.settings import Settings

__all__ = ["main"]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="recstream topics",
        description="Create recstream's input, output and dead-letter topics if absent "
        "(the broker never auto-creates them). Uses RECSTREAM_KAFKA_BOOTSTRAP, "
        "RECSTREAM_TOPIC_PREFIX and RECSTREAM_KAFKA_PARTITIONS.",
    )
    parser.add_argument("--partitions", type=int, default=None, help="override the partition count")
    parser.add_argument(
        "--timeout", type=float, default=60.0, help="seconds to wait for the broker"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    settings = Settings.from_env()
    created = asyncio.run(
        ensure_topics(
            settings.kafka, topics.ALL_TOPICS, partitions=args.partitions, timeout_s=args.timeout
        )
    )
    names = [settings.kafka.topic(t) for t in topics.ALL_TOPICS]
    print(f"topics ready: {', '.join(names)} ({len(created)} created)")
    return 0
