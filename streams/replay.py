"""``recstream replay``: MovieLens-100k into Kafka, as a real producer would send it.

Order: the catalog first (every movie as an upsert with title, year and
genres), then the ratings in time order as ``rating`` interactions, with a
recommendation request for the rating's user after every ``--request-every``
ratings. Ids are deterministic (``ml-<user>-<item>``, ``req-<user>-<item>``), so a
second replay is a duplicate delivery, not new data. ``--malformed`` mixes in
invalid payloads (for the dead-letter path).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from aiokafka import AIOKafkaProducer
from tqdm import tqdm

from contracts import (
    CODECS,
    AttributeValue,
    CatalogChange,
    Interaction,
    RecommendationRequest,
    topics,
)
from streams.kafka import ensure_topics
from workers.settings import Settings

__all__ = ["ReplayStats", "ml100k_events", "ml100k_folder", "replay"]

# A day in the data set's own time between interactions is not needed: ids
# and order carry the meaning; timestamps are the data's own (1997-1998).
_MALFORMED = [
    b"not json",
    b"{",
    b'{"v":2}',
    b'{"v":1,"event_id":"x"}',
    b"\xff\xfe\xfd",
    b'{"v":1,"event_id":"e","user_id":"u","item_id":"i","kind":"like","ts_ms":1}',
    b'{"v":1,"event_id":"e","user_id":5,"item_id":"i","kind":"view","ts_ms":1}',
    b"null",
]


@dataclass
class ReplayStats:
    catalog: int = 0
    interactions: int = 0
    requests: int = 0
    malformed: int = 0
    seconds: float = 0.0

    @property
    def total(self) -> int:
        return self.catalog + self.interactions + self.requests + self.malformed


def ml100k_folder(settings: Settings) -> Path:
    from workers.training.data import fetch_ml100k  # numpy only; shared with training

    folder: Path = fetch_ml100k(settings.home / "cache")
    return folder


def ml100k_events(
    folder: Path,
    *,
    limit: int = 0,
    request_every: int = 10,
    users: set[str] | None = None,
    k: int = 10,
) -> tuple[list[CatalogChange], Iterator[tuple[str, Interaction | RecommendationRequest]]]:
    """Catalog events, and an iterator of (topic, event) for interactions and requests."""
    catalog: list[CatalogChange] = []
    with (folder / "ml-100k.item").open(encoding="utf-8", errors="replace") as handle:
        next(handle)
        for line in handle:
            parts = (line.rstrip("\n").split("\t") + [""] * 4)[:4]
            item, title, year, genres = (p.strip() for p in parts)
            attributes: dict[str, AttributeValue] = {"genres": tuple(genres.split())}
            if year.isdigit():
                attributes["year"] = int(year)
            catalog.append(
                CatalogChange(
                    f"ml-item-{item}",
                    item,
                    "upsert",
                    0,
                    title=title or f"item {item}",
                    attributes=attributes,
                )
            )
    rows = []
    with (folder / "ml-100k.inter").open(encoding="utf-8") as handle:
        next(handle)
        for line in handle:
            user, item, rating, stamp = line.rstrip("\n").split("\t")
            if users is None or user in users:
                rows.append((int(float(stamp)), user, item, float(rating)))
    rows.sort(key=lambda r: (r[0], r[1], r[2]))
    if limit:
        rows = rows[:limit]

    def stream() -> Iterator[tuple[str, Interaction | RecommendationRequest]]:
        for n, (stamp, user, item, rating) in enumerate(rows, start=1):
            ts_ms = stamp * 1000
            yield (
                topics.INTERACTIONS,
                Interaction(f"ml-{user}-{item}", user, item, "rating", ts_ms, rating=rating),
            )
            if request_every and n % request_every == 0:
                yield topics.REQUESTS, RecommendationRequest(f"req-{user}-{item}", user, k, ts_ms)

    return catalog, stream()


async def replay(
    settings: Settings,
    *,
    limit: int = 0,
    rate: float = 0.0,
    request_every: int = 10,
    malformed: float = 0.0,
    users: set[str] | None = None,
    progress: bool = True,
    seed: int = 7,
) -> ReplayStats:
    """Produce catalog, interactions and requests; return what was sent."""
    await ensure_topics(settings.kafka)
    catalog, events = ml100k_events(
        ml100k_folder(settings), limit=limit, request_every=request_every, users=users
    )
    rng = random.Random(seed)
    stats = ReplayStats()
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka.bootstrap_servers,
        acks="all",
        enable_idempotence=True,
        linger_ms=10,
        max_batch_size=256 * 1024,
    )
    await producer.start()
    started = time.perf_counter()
    pending: list[asyncio.Future[object]] = []

    async def send(topic: str, key: bytes, value: bytes) -> None:
        pending.append(await producer.send(settings.kafka.topic(topic), value=value, key=key))
        if len(pending) >= 2000:
            await asyncio.gather(*pending)
            pending.clear()

    try:
        for change in catalog:
            await send(
                topics.CATALOG, change.item_id.encode(), CODECS[topics.CATALOG].encode(change)
            )
            stats.catalog += 1
        await asyncio.gather(*pending)
        pending.clear()
        bar = tqdm(total=None, unit="ev", desc="replay", disable=not progress, mininterval=0.5)
        t0 = time.perf_counter()
        for sent, (topic, event) in enumerate(events, start=1):
            if malformed and rng.random() < malformed:
                await send(topics.INTERACTIONS, event.user_id.encode(), rng.choice(_MALFORMED))
                stats.malformed += 1
            await send(topic, event.user_id.encode(), CODECS[topic].encode(event))
            if topic == topics.INTERACTIONS:
                stats.interactions += 1
            else:
                stats.requests += 1
            bar.update(1)
            if rate > 0:
                ahead = sent / rate - (time.perf_counter() - t0)
                if ahead > 0.002:
                    await asyncio.sleep(ahead)
        await asyncio.gather(*pending)
        bar.close()
    finally:
        await producer.stop()
    stats.seconds = time.perf_counter() - started
    return stats


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="recstream replay",
        description="Replay MovieLens-100k into Kafka: catalog first, then ratings in time "
        "order with a request every N ratings. Ids are deterministic, so a second run is a "
        "duplicate delivery.",
    )
    parser.add_argument("--limit", type=int, default=0, help="ratings to send (0 = all 100,000)")
    parser.add_argument(
        "--rate", type=float, default=0.0, help="events/s (0 = as fast as possible)"
    )
    parser.add_argument("--request-every", type=int, default=10, help="a request every N ratings")
    parser.add_argument(
        "--malformed", type=float, default=0.0, help="fraction of extra invalid payloads"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    stats = asyncio.run(
        replay(
            Settings.from_env(),
            limit=args.limit,
            rate=args.rate,
            request_every=args.request_every,
            malformed=args.malformed,
            progress=not args.quiet,
        )
    )
    print(
        f"replayed {stats.catalog} catalog, {stats.interactions} interactions, "
        f"{stats.requests} requests, {stats.malformed} malformed in {stats.seconds:.1f}s "
        f"({stats.total / max(stats.seconds, 1e-9):,.0f} events/s)"
    )
    return 0
