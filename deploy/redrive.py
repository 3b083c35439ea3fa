"""Re-drive dead letters into the topic they came from, once their cause is fixed.

Reads the dead-letter topic from the start (or ``--from-offset``) up to its end
as it was when the run began, picks the letters that match (source topic,
reason substring, error type), and sends each original payload with its
original key back to its source topic. Dry run unless ``--send``. Letters whose
payload was truncated when dead-lettered cannot be re-driven and are counted
apart. A re-driven record is decoded again like any other: if it is still
invalid, it comes back as a new dead letter.

    python deploy/redrive.py --source interactions --reason-contains "KeyError" [--send]

Kafka settings (bootstrap, prefix, SASL/TLS) come from the RECSTREAM_*
environment, as for the workers.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aiokafka import AIOKafkaProducer

from contracts import CODECS, DeadLetter, topics
from streams.kafka import client_security, topic_reader
from workers.settings import KafkaSettings, Settings


@dataclass
class Report:
    matched: int = 0
    sent: int = 0
    truncated: int = 0
    skipped: int = 0
    reasons: Counter[str] = field(default_factory=Counter)


async def redrive(
    settings: KafkaSettings,
    *,
    source: str | None = None,
    reason_contains: str | None = None,
    error_type: str | None = None,
    from_offset: int = 0,
    until_offset: int | None = None,
    send: bool = False,
) -> Report:
    """Re-drive the matching dead letters (all partitions of the dead-letter topic)."""
    report = Report()
    consumer = topic_reader(settings, topics.DEAD_LETTERS)
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.bootstrap_servers,
        client_id=f"{settings.client_id}-redrive",
        acks="all",
        enable_idempotence=True,
        **client_security(settings),
    )
    await consumer.start()
    await producer.start()
    try:
        partitions = consumer.assignment()
        while not partitions:
            await consumer.getmany(timeout_ms=200)
            partitions = consumer.assignment()
        ends = await consumer.end_offsets(list(partitions))
        for tp in partitions:
            consumer.seek(tp, from_offset)
        done = {tp for tp in partitions if ends[tp] <= from_offset}
        futures = []
        while len(done) < len(partitions):
            for tp, records in (await consumer.getmany(timeout_ms=1000)).items():
                for record in records:
                    if record.offset >= ends[tp] or (
                        until_offset is not None and record.offset > until_offset
                    ):
                        done.add(tp)
                        break
                    letter = CODECS[topics.DEAD_LETTERS].decode(record.value)
                    assert isinstance(letter, DeadLetter)
                    if not _matches(letter, settings, source, reason_contains, error_type):
                        report.skipped += 1
                        continue
                    report.matched += 1
                    report.reasons[letter.reason[:80]] += 1
                    if letter.payload_truncated:
                        report.truncated += 1
                        continue
                    if send:
                        key = base64.b64decode(letter.key_b64) if letter.key_b64 else None
                        payload = base64.b64decode(letter.payload_b64)
                        futures.append(
                            await producer.send(letter.source_topic, value=payload, key=key)
                        )
                if await consumer.position(tp) >= ends[tp]:
                    done.add(tp)
        for future in futures:
            await future
        report.sent = len(futures)
    finally:
        await producer.stop()
        await consumer.stop()
    return report


def _matches(
    letter: DeadLetter,
    settings: KafkaSettings,
    source: str | None,
    reason_contains: str | None,
    error_type: str | None,
) -> bool:
    return (
        (source is None or letter.source_topic == settings.topic(source))
        and (reason_contains is None or reason_contains in letter.reason)
        and (error_type is None or letter.error_type == error_type)
    )


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", choices=topics.INPUT_TOPICS + topics.INTERNAL_TOPICS)
    parser.add_argument("--reason-contains", help="only letters whose reason contains this")
    parser.add_argument("--error-type", help="only letters of this exception type")
    parser.add_argument("--from-offset", type=int, default=0, help="per partition")
    parser.add_argument("--until-offset", type=int, default=None, help="per partition, inclusive")
    parser.add_argument("--send", action="store_true", help="send (default: dry run)")
    args = parser.parse_args(argv)
    report = asyncio.run(
        redrive(
            Settings.from_env().kafka,
            source=args.source,
            reason_contains=args.reason_contains,
            error_type=args.error_type,
            from_offset=args.from_offset,
            until_offset=args.until_offset,
            send=args.send,
        )
    )
    verb = "sent" if args.send else "would send (dry run; --send to send)"
    print(
        f"matched {report.matched}, {verb} {report.matched - report.truncated}, "
        f"truncated (not re-drivable) {report.truncated}, other letters {report.skipped}"
    )
    for reason, count in report.reasons.most_common(10):
        print(f"  {count:6d}  {reason}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
