"""The real local Kafka broker: explicit topics, keyed round trips through the codecs."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaTimeoutError, UnknownTopicOrPartitionError

from contracts import CODECS, Interaction, topics
from streams.kafka import KafkaProducerResource, ensure_topics
from workers.errors import ResourceClosedError
from workers.settings import Settings

pytestmark = pytest.mark.integration


async def test_topics_are_created_with_the_configured_partitions(settings: Settings) -> None:
    created = await ensure_topics(settings.kafka, topics.ALL_TOPICS, partitions=4)
    assert sorted(created) == sorted(settings.kafka.topic(t) for t in topics.ALL_TOPICS)
    assert await ensure_topics(settings.kafka, topics.ALL_TOPICS, partitions=4) == []  # idempotent
    async with KafkaProducerResource(settings.kafka) as producer:
        for name in topics.ALL_TOPICS:
            parts = await producer.producer.partitions_for(settings.kafka.topic(name))
            assert len(parts) == 4, name


async def test_unknown_topic_is_not_auto_created(settings: Settings) -> None:
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka.bootstrap_servers, request_timeout_ms=3000
    )
    await producer.start()
    try:
        with pytest.raises((KafkaTimeoutError, UnknownTopicOrPartitionError)):
            await producer.send_and_wait(settings.kafka.topic("no-such-topic"), b"x")
    finally:
        await producer.stop()
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka.bootstrap_servers)
    await admin.start()
    try:
        assert settings.kafka.topic("no-such-topic") not in await admin.list_topics()
    finally:
        await admin.close()


async def test_events_round_trip_keyed_by_user(
    settings: Settings, kafka_topics: dict[str, str]
) -> None:
    codec = CODECS[topics.INTERACTIONS]
    sent = [
        Interaction(f"e{i}", f"u{i % 7}", f"i{i % 13}", "click", 1_700_000_000_000 + i)
        for i in range(200)
    ]
    async with KafkaProducerResource(settings.kafka) as producer:
        await asyncio.gather(
            *(producer.send(topics.INTERACTIONS, codec.encode(e), e.user_id.encode()) for e in sent)
        )
    consumer = AIOKafkaConsumer(
        kafka_topics[topics.INTERACTIONS],
        bootstrap_servers=settings.kafka.bootstrap_servers,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
    )
    await consumer.start()
    received: list[Interaction] = []
    partition_of_user: dict[str, set[int]] = {}
    try:
        async with asyncio.timeout(30):
            while len(received) < len(sent):
                batch = await consumer.getmany(timeout_ms=500)
                for tp, records in batch.items():
                    for record in records:
                        event = codec.decode(record.value)
                        assert record.key == event.user_id.encode()
                        received.append(event)
                        partition_of_user.setdefault(event.user_id, set()).add(tp.partition)
    finally:
        await consumer.stop()
    assert sorted(received, key=lambda e: e.event_id) == sorted(sent, key=lambda e: e.event_id)
    # One user's events land on one partition, so they are consumed in order.
    assert all(len(p) == 1 for p in partition_of_user.values())


async def test_producer_resource_lifecycle(settings: Settings) -> None:
    resource = KafkaProducerResource(settings.kafka)
    async with resource:
        pass
    await resource.aclose()  # twice is safe
    with pytest.raises(ResourceClosedError):
        await resource.open()
    with pytest.raises(ResourceClosedError):
        _ = resource.producer
