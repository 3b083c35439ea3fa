"""Authentication against real servers: Redis ACL users and Kafka SASL_SSL (SCRAM-SHA-512).

The worker's own resources connect with the credentials its settings read
from files (the *_FILE variables a Kubernetes Secret mount provides), and are
refused without them, with wrong ones, or (Redis) as a user lacking the
commands a state update needs.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import httpx
import pytest
from aiokafka.errors import KafkaError
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

from contracts import CODECS, DeadLetter, Interaction, topics
from streams.kafka import (
    KafkaProducerResource,
    client_security,
    ensure_topics,
    faust_credentials,
    topic_reader,
)
from tests.deploy.servers import AclRedis, ScramKafka
from tests.streams.harness import WorkerProcess, worker_env
from workers.errors import ResourceError, StateStoreError
from workers.resources import RedisResource
from workers.settings import KafkaSettings, RedisSettings, Secret, Settings
from workers.state import UserStateStore

pytestmark = [pytest.mark.integration]


def _secret_file(tmp_path: Path, name: str, value: str) -> str:
    path = tmp_path / name
    path.write_text(value + "\n")  # as `kubectl create secret --from-file` often leaves it
    return str(path)


def _redis_settings(
    server: AclRedis, tmp_path: Path, user: str | None, password: str | None
) -> RedisSettings:
    env = {"RECSTREAM_REDIS_URL": server.url(), "RECSTREAM_REDIS_KEY_PREFIX": "rs"}
    if user is not None:
        env["RECSTREAM_REDIS_USERNAME"] = user
    if password is not None:
        env["RECSTREAM_REDIS_PASSWORD_FILE"] = _secret_file(tmp_path, "redis-password", password)
    return RedisSettings.from_mapping(env)


def _events(user: str = "u1") -> list[Interaction]:
    return [Interaction(f"{user}-e{k}", user, f"i{k}", "purchase", 1_000 + k) for k in range(5)]


async def test_redis_acl_user_updates_state(acl_redis: AclRedis, tmp_path: Path) -> None:
    settings = _redis_settings(acl_redis, tmp_path, "recstream", acl_redis.users["recstream"])
    assert acl_redis.users["recstream"] not in repr(settings)
    async with RedisResource(settings) as redis:
        store = UserStateStore(redis)
        user = f"u-{uuid.uuid4().hex[:8]}"  # the server is shared with the worker test
        result = await store.apply(_events(user))
        assert result.applied == 5
        (state,) = await store.load([user], history=10)
        assert set(state.history) == {f"i{k}" for k in range(5)}


@pytest.mark.parametrize(
    ("user", "password", "refusal"),
    [
        (None, None, "Authentication required"),
        ("recstream", "wrong-password", "invalid username-password pair"),
        ("nobody", "wrong-password", "invalid username-password pair"),
    ],
    ids=["no-credentials", "wrong-password", "unknown-user"],
)
async def test_redis_refuses_bad_credentials(
    acl_redis: AclRedis, tmp_path: Path, user: str | None, password: str | None, refusal: str
) -> None:
    settings = _redis_settings(acl_redis, tmp_path, user, password)
    with pytest.raises(StateStoreError, match=refusal):
        async with RedisResource(settings):
            pass


async def test_redis_user_without_script_rights_cannot_update_state(
    acl_redis: AclRedis, tmp_path: Path
) -> None:
    settings = _redis_settings(acl_redis, tmp_path, "reader", acl_redis.users["reader"])
    async with RedisResource(settings) as redis:  # connecting and PING are allowed
        with pytest.raises(StateStoreError, match="no permissions") as raised:
            await UserStateStore(redis).apply(_events())
        # A permission error is a misconfiguration: retrying cannot fix it.
        assert raised.value.retriable is False


async def test_redis_over_tls_with_the_acl_user(acl_redis_tls: AclRedis, tmp_path: Path) -> None:
    assert acl_redis_tls.ca is not None
    plain = RedisSettings.from_mapping(
        {
            "RECSTREAM_REDIS_URL": acl_redis_tls.url(),
            "RECSTREAM_REDIS_USERNAME": "recstream",
            "RECSTREAM_REDIS_PASSWORD": acl_redis_tls.users["recstream"],
        }
    )
    tls = RedisSettings.from_mapping(
        {
            "RECSTREAM_REDIS_URL": acl_redis_tls.url(),
            "RECSTREAM_REDIS_USERNAME": "recstream",
            "RECSTREAM_REDIS_PASSWORD_FILE": _secret_file(
                tmp_path, "tls-password", acl_redis_tls.users["recstream"]
            ),
            "RECSTREAM_REDIS_TLS_CA_FILE": str(acl_redis_tls.ca),
        }
    )
    assert tls.url.reveal().startswith("rediss://")
    async with RedisResource(tls) as redis:
        assert (
            await UserStateStore(redis).apply(_events(f"u-{uuid.uuid4().hex[:8]}"))
        ).applied == 5
    # The server speaks TLS only: a plaintext client with the right password gets nowhere.
    with pytest.raises(StateStoreError):
        async with RedisResource(plain):
            pass


def _kafka_settings(server: ScramKafka, tmp_path: Path, password: str) -> KafkaSettings:
    return KafkaSettings.from_mapping(
        {
            "RECSTREAM_KAFKA_BOOTSTRAP": server.bootstrap,
            "RECSTREAM_TOPIC_PREFIX": f"t{uuid.uuid4().hex[:8]}-",
            "RECSTREAM_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "RECSTREAM_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
            "RECSTREAM_KAFKA_SASL_USERNAME_FILE": _secret_file(tmp_path, "user", server.username),
            "RECSTREAM_KAFKA_SASL_PASSWORD_FILE": _secret_file(tmp_path, "password", password),
            "RECSTREAM_KAFKA_SSL_CAFILE": str(server.ca),
        }
    )


@pytest.mark.slow
async def test_kafka_scram_over_tls_produces_and_consumes(
    scram_kafka: ScramKafka, tmp_path: Path
) -> None:
    settings = _kafka_settings(scram_kafka, tmp_path, scram_kafka.password)
    assert scram_kafka.password not in repr(settings)
    created = await ensure_topics(settings, [topics.INTERACTIONS], partitions=1, timeout_s=30)
    assert created == [settings.topic(topics.INTERACTIONS)]
    async with KafkaProducerResource(settings) as producer:
        await producer.send(topics.INTERACTIONS, b'{"probe": 1}', key=b"u1")
    consumer = topic_reader(settings, topics.INTERACTIONS)
    await consumer.start()
    try:
        records = await consumer.getmany(timeout_ms=10_000)
    finally:
        await consumer.stop()
    values = [r.value for batch in records.values() for r in batch]
    assert values == [b'{"probe": 1}']


@pytest.mark.slow
async def test_kafka_refuses_wrong_password(scram_kafka: ScramKafka, tmp_path: Path) -> None:
    settings = _kafka_settings(scram_kafka, tmp_path, "not-the-password")
    mark = scram_kafka.log_size()
    with pytest.raises((ResourceError, KafkaError)):
        async with KafkaProducerResource(settings):
            pass
    # aiokafka reports only "unable to bootstrap"; the broker says why.
    log = scram_kafka.log_since(mark)
    assert "Failed authentication" in log
    assert "invalid credentials with SASL mechanism SCRAM-SHA-512" in log


@pytest.mark.slow
async def test_kafka_refuses_a_client_without_sasl(scram_kafka: ScramKafka) -> None:
    settings = KafkaSettings(bootstrap_servers=scram_kafka.bootstrap)
    mark = scram_kafka.log_size()
    with pytest.raises((ResourceError, KafkaError)):
        async with KafkaProducerResource(settings):
            pass
    assert "SSL handshake failed" in scram_kafka.log_since(mark)


def test_faust_gets_the_same_security_as_aiokafka() -> None:
    settings = KafkaSettings(
        security_protocol="SASL_SSL", sasl_username="recstream", sasl_password=Secret("pw")
    )
    faust_kwargs = credentials_to_aiokafka_auth(faust_credentials(settings))
    ours = client_security(settings)
    assert {k: v for k, v in faust_kwargs.items() if k != "ssl_context"} == {
        k: v for k, v in ours.items() if k != "ssl_context"
    }
    assert faust_kwargs["ssl_context"] is not None
    assert faust_credentials(KafkaSettings()) is None


def _worker_kafka_env(
    server: ScramKafka, kafka: KafkaSettings, tmp_path: Path, password: str
) -> dict[str, str]:
    return {
        "RECSTREAM_KAFKA_BOOTSTRAP": server.bootstrap,
        "RECSTREAM_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "RECSTREAM_KAFKA_SASL_USERNAME_FILE": _secret_file(tmp_path, "w-user", server.username),
        "RECSTREAM_KAFKA_SASL_PASSWORD_FILE": _secret_file(tmp_path, "w-password", password),
        "RECSTREAM_KAFKA_SSL_CAFILE": str(server.ca),
        "RECSTREAM_TOPIC_PREFIX": kafka.topic_prefix,
        "RECSTREAM_GROUP_PREFIX": f"g-{kafka.topic_prefix}",
    }


@pytest.mark.slow
async def test_worker_consumes_and_produces_over_scram_and_is_refused_with_a_wrong_password(
    scram_kafka: ScramKafka,
    settings: Settings,
    redis_client: object,
    model_dir: Path,
    tmp_path: Path,
) -> None:
    kafka = _kafka_settings(scram_kafka, tmp_path, scram_kafka.password)
    await ensure_topics(kafka, topics.ALL_TOPICS, partitions=1, timeout_s=30)
    good = WorkerProcess(
        worker_env(
            settings,
            model_dir,
            **_worker_kafka_env(scram_kafka, kafka, tmp_path, scram_kafka.password),
        ),
        ["interactions"],
        tmp_path / "good.log",
    ).start()
    try:
        await good.wait_ready(timeout=180)
        async with KafkaProducerResource(kafka) as producer:
            await producer.send(topics.INTERACTIONS, b"{not json", b"u1")
        # The worker consumed the record and produced its dead letter, both as its SCRAM user.
        consumer = topic_reader(kafka, topics.DEAD_LETTERS)
        await consumer.start()
        try:
            letters: list[bytes] = []
            deadline = time.monotonic() + 90
            while not letters and time.monotonic() < deadline:
                batches = await consumer.getmany(timeout_ms=1000)
                letters += [r.value for batch in batches.values() for r in batch]
        finally:
            await consumer.stop()
        assert len(letters) == 1, good.tail()
        letter = CODECS[topics.DEAD_LETTERS].decode(letters[0])
        assert isinstance(letter, DeadLetter) and letter.source_topic == kafka.topic(
            topics.INTERACTIONS
        )
    finally:
        assert good.stop() == 0, good.tail()

    mark = scram_kafka.log_size()
    bad = WorkerProcess(
        worker_env(settings, model_dir, **_worker_kafka_env(scram_kafka, kafka, tmp_path, "wrong")),
        ["interactions"],
        tmp_path / "bad.log",
    ).start()
    try:
        deadline = time.monotonic() + 90
        while "invalid credentials" not in scram_kafka.log_since(mark):
            assert time.monotonic() < deadline, bad.tail()
            await asyncio.sleep(0.5)
        if bad.alive():
            try:
                ready = (await bad.get("/readyz")).status_code
            except httpx.HTTPError:
                ready = None  # not serving at all: refused as well
            assert ready != 200
    finally:
        bad.stop()
