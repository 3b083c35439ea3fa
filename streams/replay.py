"""``recstream replay``: MovieLens-100k into Kafka, as a real producer would send it.

Order: the catalog first (every movie as an upsert with title, year and
genres), then the ratings in time order as ``rating`` interactions, with a
recommendation request for the rating's user after every ``--request-every``
ratings. Ids are deterministic (``ml-<user>-<item>``, ``req-<user>-<item>``), so a
second replay is a duplicate delivery, not new data. ``--malformed`` mixes in
invalid payloads (for the dead-letter path).

``--cold-share`` makes that share of users arrive as cold-start users with
stated context: right after their first rating comes a request whose context
``query`` says what they like (their two most liked genres, as a sign-up
profile would). ``--chat-share`` adds scripted chat turns (greeting, a genre
ask, a dislike, "more like" an item they loved, thanks) after that share of
ratings, in sessions of the rating's user.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
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
    ChatMessage,
    Interaction,
    RecommendationRequest,
    topics,
)
from streams.kafka import ensure_topics
from workers.catalog import display_title
from workers.settings import Settings

__all__ = ["CATALOG_TS_MS", "ReplayStats", "ml100k_events", "ml100k_folder", "replay"]

# The catalog's version time: the data set's first rating (1997-09-20), so every
# item exists, in event time, before anyone rates it.
CATALOG_TS_MS = 874_724_710_000

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
    cold_requests: int = 0
    chat: int = 0
    malformed: int = 0
    seconds: float = 0.0

    @property
    def total(self) -> int:
        return self.catalog + self.interactions + self.requests + self.chat + self.malformed


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
    cold_share: float = 0.0,
    chat_share: float = 0.0,
) -> tuple[list[CatalogChange], Iterator[tuple[str, ReplayEvent]]]:
    """Catalog events, and an iterator of (topic, event) for interactions, requests
    and chat messages (see the module docstring)."""
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
                    CATALOG_TS_MS,
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

    titles = {c.item_id: c.title or c.item_id for c in catalog}
    genres_of: dict[str, tuple[str, ...]] = {}
    for c in catalog:
        value = (c.attributes or {}).get("genres", ())
        genres_of[c.item_id] = tuple(value) if isinstance(value, tuple) else (str(value),)
    # What users would state (a sign-up profile, a chat ask): their most liked genres.
    loved: dict[str, list[str]] = {}
    liked_genres: dict[str, dict[str, int]] = {}
    for _, who, what, score in rows:
        if score >= 4:
            loved.setdefault(who, []).append(what)
            for g in genres_of.get(what, ()):
                counts = liked_genres.setdefault(who, {})
                counts[g] = counts.get(g, 0) + 1
    rng = random.Random(11)

    def is_cold(user: str) -> bool:
        return cold_share > 0 and _share(user) < cold_share

    def profile(user: str) -> str:
        counts = liked_genres.get(user, {})
        top = sorted(counts, key=lambda g: (-counts[g], g))[:2]
        return f"I enjoy {' and '.join(top).lower()} films" if top else "I like good films"

    def chat_turns(user: str, ts_ms: int, turn: int) -> ChatMessage:
        counts = liked_genres.get(user, {})
        genre = min(counts, key=lambda g: (-counts[g], g)).lower() if counts else "comedy"
        favourite = titles.get((loved.get(user) or ["1"])[0], "Toy Story (1995)")
        other = titles.get(str(rng.randint(1, len(titles))), "Heat (1995)")
        texts = [
            "hi",
            f"I'd like {'an' if genre[:1] in 'aeiou' else 'a'} {genre} movie",
            f"not {display_title(other, year=False)}",
            f"more like {display_title(favourite, year=False)}",
            "great, thanks",
        ]
        return ChatMessage(
            f"chat-{user}-{turn}", f"chat-{user}", user, texts[turn % len(texts)], ts_ms
        )

    def stream() -> Iterator[tuple[str, ReplayEvent]]:
        seen: set[str] = set()
        turns: dict[str, int] = {}
        for n, (stamp, user, item, rating) in enumerate(rows, start=1):
            ts_ms = stamp * 1000
            yield (
                topics.INTERACTIONS,
                Interaction(f"ml-{user}-{item}", user, item, "rating", ts_ms, rating=rating),
            )
            if user not in seen:
                seen.add(user)
                if is_cold(user):
                    context: dict[str, str | int | float | bool] = {"query": profile(user)}
                    yield (
                        topics.REQUESTS,
                        RecommendationRequest(f"cold-{user}", user, k, ts_ms, context=context),
                    )
            if request_every and n % request_every == 0:
                yield topics.REQUESTS, RecommendationRequest(f"req-{user}-{item}", user, k, ts_ms)
            if chat_share and rng.random() < chat_share:
                turn = turns.get(user, 0)
                turns[user] = turn + 1
                yield topics.CHAT, chat_turns(user, ts_ms, turn)

    return catalog, stream()


ReplayEvent = Interaction | RecommendationRequest | ChatMessage


def _share(user: str) -> float:
    """A stable pseudo-random number in [0, 1) per user (the same on every replay)."""
    digest = hashlib.blake2b(user.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


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
    cold_share: float = 0.0,
    chat_share: float = 0.0,
) -> ReplayStats:
    """Produce catalog, interactions, requests and chat; return what was sent."""
    await ensure_topics(settings.kafka)
    catalog, events = ml100k_events(
        ml100k_folder(settings),
        limit=limit,
        request_every=request_every,
        users=users,
        cold_share=cold_share,
        chat_share=chat_share,
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
            key = event.session_id if isinstance(event, ChatMessage) else event.user_id
            await send(topic, key.encode(), CODECS[topic].encode(event))
            if topic == topics.INTERACTIONS:
                stats.interactions += 1
            elif topic == topics.CHAT:
                stats.chat += 1
            else:
                stats.requests += 1
                if isinstance(event, RecommendationRequest) and event.context:
                    stats.cold_requests += 1
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
    parser.add_argument(
        "--cold-share",
        type=float,
        default=0.0,
        help="share of users that arrive cold with a stated-context request (e.g. 0.1)",
    )
    parser.add_argument(
        "--chat-share", type=float, default=0.0, help="chat turns per rating (e.g. 0.02)"
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
            cold_share=args.cold_share,
            chat_share=args.chat_share,
        )
    )
    print(
        f"replayed {stats.catalog} catalog, {stats.interactions} interactions, "
        f"{stats.requests} requests ({stats.cold_requests} cold with context), "
        f"{stats.chat} chat turns, {stats.malformed} malformed in {stats.seconds:.1f}s "
        f"({stats.total / max(stats.seconds, 1e-9):,.0f} events/s)"
    )
    return 0
