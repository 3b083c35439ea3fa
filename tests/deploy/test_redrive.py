"""deploy/redrive.py: matching dead letters go back to their source topic, byte for byte."""

from __future__ import annotations

import pytest

from contracts import CODECS, topics
from deploy.redrive import redrive
from streams.deadletter import dead_letter
from streams.kafka import KafkaProducerResource, topic_reader
from workers.settings import Settings

pytestmark = [pytest.mark.integration]


async def test_redrive_sends_matching_letters_back(
    settings: Settings, kafka_topics: dict[str, str]
) -> None:
    kafka = settings.kafka
    source = kafka.topic(topics.INTERACTIONS)
    letters = [
        dead_letter(source, 0, 1, b"u1", b'{"fixed": 1}', KeyError("bug in a handler")),
        dead_letter(source, 0, 2, None, b'{"fixed": 2}', KeyError("bug in a handler")),
        dead_letter(source, 0, 3, b"u3", b"{broken", ValueError("not json")),
        dead_letter(kafka.topic(topics.CATALOG), 0, 4, b"i1", b"{}", KeyError("bug")),
    ]
    async with KafkaProducerResource(kafka) as producer:
        for letter in letters:
            await producer.send(topics.DEAD_LETTERS, CODECS[topics.DEAD_LETTERS].encode(letter))

    dry = await redrive(kafka, source=topics.INTERACTIONS, error_type="KeyError")
    assert (dry.matched, dry.sent, dry.skipped) == (2, 0, 2)

    report = await redrive(kafka, source=topics.INTERACTIONS, error_type="KeyError", send=True)
    assert (report.matched, report.sent) == (2, 2)
    consumer = topic_reader(kafka, topics.INTERACTIONS)
    await consumer.start()
    try:
        batches = await consumer.getmany(timeout_ms=5000)
    finally:
        await consumer.stop()
    records = sorted((r.value, r.key) for batch in batches.values() for r in batch)
    assert records == [(b'{"fixed": 1}', b"u1"), (b'{"fixed": 2}', None)]
