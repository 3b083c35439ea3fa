"""Kafka resources: topic creation and the producer, as async context managers."""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Iterable
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError, KafkaError, TopicAlreadyExistsError
from aiokafka.helpers import create_ssl_context
from faust.auth import SASLCredentials, SSLCredentials
from faust.types.auth import CredentialsT

from contracts import topics
from workers.errors import ResourceError
from workers.resources import Resource
from workers.settings import KafkaSettings

__all__ = [
    "KafkaProducerResource",
    "client_security",
    "ensure_topics",
    "faust_credentials",
    "topic_reader",
]

logger = logging.getLogger(__name__)

# Output and dead-letter topics are keyed like their inputs, so they get the
# same partition count; consumers of one user's events then see them in order.
_RETENTION_MS = {topics.DEAD_LETTERS: str(14 * 24 * 3600 * 1000)}


def _ssl_context(settings: KafkaSettings) -> ssl.SSLContext:
    """TLS context: the given CA (else the system store), a client cert for mutual TLS."""
    context: ssl.SSLContext = create_ssl_context(
        cafile=settings.ssl_cafile or None,
        certfile=settings.ssl_certfile or None,
        keyfile=settings.ssl_keyfile or None,
    )
    return context


def client_security(settings: KafkaSettings) -> dict[str, Any]:
    """The security keyword arguments of every aiokafka client (producer, consumer,
    admin): PLAINTEXT in dev, SASL_SSL with SCRAM-SHA-512 in production."""
    protocol = settings.security_protocol
    kwargs: dict[str, Any] = {"security_protocol": protocol}
    if protocol in {"SSL", "SASL_SSL"}:
        kwargs["ssl_context"] = _ssl_context(settings)
    if protocol.startswith("SASL_"):
        kwargs.update(
            sasl_mechanism=settings.sasl_mechanism,
            sasl_plain_username=settings.sasl_username,
            sasl_plain_password=settings.sasl_password.reveal(),
        )
    return kwargs


def faust_credentials(settings: KafkaSettings) -> CredentialsT | None:
    """The same security for faust's consumer and producer (``broker_credentials``)."""
    protocol = settings.security_protocol
    if protocol == "PLAINTEXT":
        return None
    if protocol == "SSL":
        return SSLCredentials(_ssl_context(settings))
    return SASLCredentials(
        username=settings.sasl_username,
        password=settings.sasl_password.reveal(),
        mechanism=settings.sasl_mechanism,
        ssl_context=_ssl_context(settings) if protocol == "SASL_SSL" else None,
    )


async def ensure_topics(
    settings: KafkaSettings,
    names: Iterable[str] = topics.ALL_TOPICS,
    *,
    partitions: int | None = None,
    timeout_s: float = 60.0,
) -> list[str]:
    """Create the given contract topics (prefixed) if absent; return those created.

    Retries while the broker is still starting, up to ``timeout_s``.
    """
    count = partitions or settings.partitions
    wanted = {settings.topic(n): n for n in names}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        admin = AIOKafkaAdminClient(
            bootstrap_servers=settings.bootstrap_servers,
            client_id=f"{settings.client_id}-admin",
            **client_security(settings),
        )
        try:
            await admin.start()
            existing = set(await admin.list_topics())
            missing = [
                NewTopic(
                    full,
                    num_partitions=count,
                    replication_factor=settings.replication_factor,
                    topic_configs=(
                        {"retention.ms": _RETENTION_MS[short]} if short in _RETENTION_MS else {}
                    ),
                )
                for full, short in wanted.items()
                if full not in existing
            ]
            created: list[str] = []
            if missing:
                response = await admin.create_topics(missing)
                for name, code, *_ in response.topic_errors:
                    if code == 0:
                        created.append(name)
                    elif code != TopicAlreadyExistsError.errno:  # lost a race: fine
                        raise ResourceError(f"cannot create topic {name}: error code {code}")
            if created:
                logger.info("created topics %s with %d partitions", created, count)
            return created
        except KafkaConnectionError as exc:
            if loop.time() > deadline:
                raise ResourceError(
                    f"Kafka at {settings.bootstrap_servers} unreachable: {exc}"
                ) from exc
            await asyncio.sleep(0.5)
        finally:
            await admin.close()


def topic_reader(
    settings: KafkaSettings, *names: str, from_beginning: bool = True, **options: Any
) -> AIOKafkaConsumer:
    """A group-less consumer of contract topics (prefix applied), committing nothing:
    for tools, benchmarks and tests that read a topic without joining a group."""
    return AIOKafkaConsumer(
        *(settings.topic(n) for n in names),
        bootstrap_servers=settings.bootstrap_servers,
        auto_offset_reset="earliest" if from_beginning else "latest",
        enable_auto_commit=False,
        group_id=None,
        **{**client_security(settings), **options},
    )


class KafkaProducerResource(Resource):
    """An idempotent aiokafka producer (acks=all) that flushes on close."""

    def __init__(self, settings: KafkaSettings, *, linger_ms: int = 5) -> None:
        super().__init__()
        self._settings = settings
        self._linger_ms = linger_ms
        self._producer: AIOKafkaProducer | None = None

    @property
    def producer(self) -> AIOKafkaProducer:
        self._require_open()
        assert self._producer is not None
        return self._producer

    async def send(self, topic: str, value: bytes, key: bytes | None = None) -> None:
        """Send to a contract topic (prefix applied) and wait for the ack."""
        try:
            await self.producer.send_and_wait(self._settings.topic(topic), value=value, key=key)
        except KafkaError as exc:
            raise ResourceError(f"Kafka send to {topic} failed: {exc}") from exc

    async def _open(self) -> None:
        producer = AIOKafkaProducer(
            bootstrap_servers=self._settings.bootstrap_servers,
            client_id=self._settings.client_id,
            acks="all",
            enable_idempotence=True,
            linger_ms=self._linger_ms,
            compression_type=None,
            **client_security(self._settings),
        )
        try:
            await producer.start()
        except KafkaError as exc:
            await producer.stop()
            raise ResourceError(
                f"Kafka at {self._settings.bootstrap_servers} unreachable: {exc}"
            ) from exc
        self._producer = producer

    async def _close(self) -> None:
        if self._producer is not None:
            await self._producer.flush()
            await self._producer.stop()
            self._producer = None
