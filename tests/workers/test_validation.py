"""Input that is well-formed but implausible is refused with its reason (issue 9, defects 4-5)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import redis.asyncio as aioredis

from contracts import CODECS, CatalogChange, DecodeError, Interaction, topics
from streams.app import BatchProcessor, Health
from workers.catalog import CatalogStore
from workers.resources import RedisResource
from workers.settings import Settings
from workers.validation import Plausibility, check_plausible

LIMITS = Plausibility()
NOW = 1_800_000_000_000
ML100K_TS = 874_724_710_000  # 1997-09-20, MovieLens-100k's first rating


def interaction(user: str = "u1", ts: int = ML100K_TS, rating: float | None = 4.0) -> Interaction:
    return Interaction("e1", user, "i1", "rating", ts, rating=rating)


def test_movielens_events_pass() -> None:
    check_plausible(topics.INTERACTIONS, b"u1", interaction(), LIMITS, now_ms=NOW)


@pytest.mark.parametrize(
    "key,event,field",
    [
        (b"u2", interaction("u1"), "$key"),
        (None, interaction("u1"), "$key"),
        (b"u1", interaction(ts=0), "ts_ms"),
        (b"u1", interaction(ts=ML100K_TS // 1000), "ts_ms"),  # seconds, not ms
        (b"u1", interaction(ts=NOW + 2 * 3_600_000), "ts_ms"),
        (b"u1", interaction(rating=6.0), "rating"),
        (b"u1", interaction(rating=0.5), "rating"),
    ],
    ids=[
        "key-other-user",
        "no-key",
        "ts-zero",
        "ts-seconds",
        "ts-future",
        "rating-6",
        "rating-low",
    ],
)
def test_implausible_input_is_refused_naming_the_field(
    key: bytes | None, event: Interaction, field: str
) -> None:
    with pytest.raises(DecodeError) as caught:
        check_plausible(topics.INTERACTIONS, key, event, LIMITS, now_ms=NOW)
    assert caught.value.field == field and not caught.value.retriable


def test_rating_scale_is_configuration() -> None:
    ten = Plausibility(rating_min=0, rating_max=10)
    check_plausible(topics.INTERACTIONS, b"u1", interaction(rating=6.0), ten, now_ms=NOW)
    settings = Settings.from_mapping({"RECSTREAM_RATING_MIN": "0", "RECSTREAM_RATING_MAX": "10"})
    assert (settings.stream.rating_min, settings.stream.rating_max) == (0, 10)


def test_catalog_key_must_be_the_item() -> None:
    change = CatalogChange("c1", "item-9", "upsert", ML100K_TS, title="x")
    check_plausible(topics.CATALOG, b"item-9", change, LIMITS, now_ms=NOW)
    with pytest.raises(DecodeError):
        check_plausible(topics.CATALOG, b"item-8", change, LIMITS, now_ms=NOW)


def test_a_key_given_twice_in_one_object_is_refused() -> None:
    payload = (
        b'{"v":1,"event_id":"e","user_id":"a","item_id":"i","kind":"view",'
        b'"user_id":"b","ts_ms":874724710000}'
    )
    with pytest.raises(DecodeError) as caught:
        CODECS[topics.INTERACTIONS].decode(payload)
    assert caught.value.field == "user_id" and "twice" in caught.value.reason
    # A string holding '":' is not a repeated key.
    ok = (
        b'{"v":1,"event_id":"e","user_id":"a","item_id":"i","kind":"view",'
        b'"context":{"note":"a\\":b"},"ts_ms":874724710000}'
    )
    assert CODECS[topics.INTERACTIONS].decode(ok).context == {"note": 'a":b'}


@dataclass
class _Record:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes


def test_the_kafka_edge_dead_letters_a_mismatched_key_and_keeps_the_rest() -> None:
    settings = Settings.from_mapping({})
    proc = BatchProcessor({}, None, Health(), settings)  # type: ignore[arg-type]
    good = CODECS[topics.INTERACTIONS].encode(interaction("u1"))
    records = [
        _Record("interactions", 0, 1, b"u1", good),
        _Record("interactions", 0, 2, b"u2", good),
    ]
    valid, _, dead = proc._decode(topics.INTERACTIONS, records)
    assert len(valid) == 1 and len(dead) == 1
    letter = dead[0].event
    assert getattr(letter, "field", None) == "$key" and "differs" in getattr(letter, "reason", "")


@pytest.mark.integration
async def test_tombstone_of_an_unknown_item_expires_and_a_known_one_stays(
    settings: Settings, redis_client: aioredis.Redis
) -> None:
    async with RedisResource(settings.redis) as redis:
        store = CatalogStore(redis)
        await store.apply([CatalogChange("c1", "known", "upsert", ML100K_TS, title="Known")])
        await store.apply(
            [
                CatalogChange("c2", "known", "delete", ML100K_TS + 1),
                CatalogChange("c3", "never-seen", "delete", ML100K_TS + 1),
            ]
        )
        await store.apply([CatalogChange("c4", "never-seen", "delete", ML100K_TS + 2)])
        ttl_unknown = await redis.client.pttl(store.item_key("never-seen"))
        ttl_known = await redis.client.pttl(store.item_key("known"))
    assert ttl_unknown > 0, "an unknown item's tombstone must expire"
    assert ttl_known == -1, "a known item's tombstone stays (it guards against late upserts)"
