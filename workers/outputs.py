"""Emitted outputs kept by id, so a redelivered cause re-emits the same content.

Output ids are derived from their cause (``contracts.derive_id``), which makes
a duplicate recognisable; this store makes it *identical*: the first time an
output is emitted its encoded bytes are stored under its id (``SET NX`` with a
TTL), and any later emission of that id (a redelivery after a crash, a
rebalance, a replay within the TTL) sends the stored bytes, not a list
recomputed from newer state. Two workers racing on one id both end up sending
whichever was stored first.

Keys: ``<prefix>:out:{<tag>}:<output id>`` where the tag is the output's Kafka
key (user or session), so a Redis Cluster keeps a user's outputs in one slot.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from redis.exceptions import RedisError

from contracts import CODECS, Event, topics
from workers.resources import RedisResource, state_store_error

__all__ = ["Output", "OutputStore"]

logger = logging.getLogger(__name__)


# The id field of each output topic's events.
_ID_FIELD: Final = {
    topics.RECOMMENDATIONS: "rec_id",
    topics.EXPLANATIONS: "explanation_id",
    topics.CHAT_REPLIES: "reply_id",
    topics.DEAD_LETTERS: "dead_letter_id",
    topics.LLM_WORK: "work_id",
}


@dataclass(frozen=True, slots=True)
class Output:
    """One event to send: contract topic, Kafka key, event."""

    topic: str
    key: bytes
    event: Event

    @property
    def output_id(self) -> str:
        value: str = getattr(self.event, _ID_FIELD[self.topic])
        return value


class OutputStore:
    """Get-or-put of emitted outputs by id (see the module docstring)."""

    def __init__(self, redis: RedisResource, *, ttl_s: int) -> None:
        self._redis = redis
        self._ttl_s = ttl_s

    def _key(self, key: bytes, output_id: str) -> str:
        return self._redis.key("out", "{" + key.decode() + "}", output_id)

    async def get_many(self, wanted: Sequence[tuple[str, bytes, str]]) -> list[Output | None]:
        """The stored output for each (topic, Kafka key, output id); None where absent."""
        if not wanted or self._ttl_s <= 0:
            return [None] * len(wanted)
        try:
            async with self._redis.client.pipeline(transaction=False) as pipe:
                for _, key, output_id in wanted:
                    pipe.get(self._key(key, output_id))
                replies = await pipe.execute()
        except RedisError as exc:
            raise state_store_error("output store read failed", exc) from exc
        return [
            None if raw is None else Output(topic, key, CODECS[topic].decode(raw))
            for (topic, key, _), raw in zip(wanted, replies, strict=True)
        ]

    async def put_many(self, outputs: Sequence[Output]) -> list[Output]:
        """Store each output unless its id is stored already; return what to send
        (the stored output where an earlier emission won, else the given one)."""
        if not outputs or self._ttl_s <= 0:
            return list(outputs)
        encoded = [CODECS[o.topic].encode(o.event) for o in outputs]
        try:
            async with self._redis.client.pipeline(transaction=False) as pipe:
                for o, raw in zip(outputs, encoded, strict=True):
                    pipe.set(self._key(o.key, o.output_id), raw, nx=True, ex=self._ttl_s)
                stored = await pipe.execute()
            lost = [n for n, ok in enumerate(stored) if not ok]
            earlier = (
                await self.get_many(
                    [(outputs[n].topic, outputs[n].key, outputs[n].output_id) for n in lost]
                )
                if lost
                else []
            )
        except RedisError as exc:
            raise state_store_error("output store write failed", exc) from exc
        winners = {n: o for n, o in zip(lost, earlier, strict=True) if o is not None}
        if winners:
            logger.debug("output store: %d outputs were emitted before", len(winners))
        return [winners.get(n, o) for n, o in enumerate(outputs)]
