"""``recstream tail``: print an output topic in readable form."""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
from collections.abc import Mapping
from typing import Any

from contracts import (
    CODECS,
    ChatReply,
    DeadLetter,
    DecodeError,
    Explanation,
    Recommendation,
    topics,
)
from streams.kafka import topic_reader
from workers.settings import Settings

__all__ = ["format_event", "main"]


def format_event(event: Any, titles: Mapping[str, str] | None = None) -> str:
    """One or two human-readable lines for an output event (item titles when known)."""
    if isinstance(event, Recommendation):
        if titles:
            items = "\n    ".join(
                f"{i.rank:>2}. {titles.get(i.item_id, i.item_id)}  "
                f"[{i.item_id}, {i.score:.3f}, {i.source}]"
                for i in event.items[:10]
            )
        else:
            items = ", ".join(f"{i.item_id}({i.score:.3f})" for i in event.items[:10])
        return (
            f"rec {event.rec_id[:8]} user={event.user_id} "
            f"cause={event.cause.kind}:{event.cause.id} "
            f"strategy={event.strategy} total={event.timings_ms.get('total', 0):.1f}ms\n    {items}"
        )
    if isinstance(event, Explanation):
        return f"why {event.item_id} for {event.user_id} [{event.source}]: {event.text}"
    if isinstance(event, ChatReply):
        return f"reply session={event.session_id} [{event.source}]: {event.text}"
    if isinstance(event, DeadLetter):
        raw = base64.b64decode(event.payload_b64)[:80]
        return (
            f"dead {event.source_topic}@{event.partition}:{event.offset} "
            f"field={event.field} reason={event.reason!r} raw={raw!r}"
        )
    return repr(event)


async def _tail(
    settings: Settings, topic: str, from_beginning: bool, limit: int, idle_s: float
) -> int:
    consumer = topic_reader(settings.kafka, topic, from_beginning=from_beginning)
    await consumer.start()
    shown = 0
    try:
        while limit == 0 or shown < limit:
            # Following forever (idle 0): still wait a second per fetch, never spin.
            batch = await consumer.getmany(timeout_ms=int(idle_s * 1000) or 1000)
            if not batch and idle_s > 0:
                break
            for records in batch.values():
                for record in records:
                    try:
                        print(format_event(CODECS[topic].decode(record.value)), flush=True)
                    except DecodeError as exc:
                        print(f"(undecodable at offset {record.offset}: {exc})")
                    shown += 1
                    if limit and shown >= limit:
                        return shown
    finally:
        await consumer.stop()
    return shown


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="recstream tail", description="Print an output topic.")
    parser.add_argument("topic", choices=list(topics.OUTPUT_TOPICS))
    parser.add_argument("--from-beginning", action="store_true")
    parser.add_argument("--limit", type=int, default=0, help="stop after N events (0 = no limit)")
    parser.add_argument(
        "--idle",
        type=float,
        default=0.0,
        help="stop after this many seconds without events (0 = follow forever)",
    )
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(
            _tail(Settings.from_env(), args.topic, args.from_beginning, args.limit, args.idle)
        )
    return 0
