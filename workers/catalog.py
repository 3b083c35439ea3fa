"""The item catalog: Redis is the shared truth, each process keeps a view.

    <prefix>:{catalog}:item:<id>  hash  title, description, attributes (JSON), ts, deleted,
                                        features (JSON, LLM-extracted) + features_ts
    <prefix>:{catalog}:seq        int   bumped by every applied change
    <prefix>:{catalog}:log        zset  item id -> seq of its last change (what changed since N)
    <prefix>:{catalog}:fresh      zset  item id -> event time it was first upserted

All under one hash tag, so one Redis Cluster slot: a change, its sequence
number and its log entry are written by one script, atomically, so a view
never reads a sequence number whose change is not in place yet. The
catalog is small beside per-user state (items, not users x items) and
changes slowly, so one slot of one primary holds it; the user state, the
bulk of the data and of the writes, spreads over the cluster.

A change is applied only if its event time is not older than the stored one,
so a replayed or reordered old upsert can never resurrect a deleted item or
undo a newer title. Every process polls ``catalog:seq`` (cheap) and loads
only the items changed since its last look, so a new item is recommendable
everywhere within one poll interval: each process's view hands items the
model does not know yet to the scorer, which embeds their text (A-LLMRec's
text path) and appends them to its tables.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import orjson
from redis.exceptions import RedisError

from contracts import CatalogChange
from workers.resources import RedisResource, RedisScript, state_store_error

__all__ = ["CatalogStore", "CatalogView", "ItemRecord", "display_title", "item_text"]

logger = logging.getLogger(__name__)

# Keep the change log long enough for any process that polls every few
# seconds to catch up; older entries are only needed by a process that was
# away for days, and such a process reloads everything instead.
_LOG_MAX = 200_000

# The hash tag of every catalog key (see the module docstring).
_TAG = "{catalog}"

# A delete of an item never seen is remembered this long (to refuse a late
# upsert of it), then forgotten; deletes of known items are kept for good.
UNKNOWN_TOMBSTONE_TTL_MS = 30 * 24 * 3600 * 1000

# KEYS: item hash, seq, log, fresh.
# ARGV: ts, op, title, description, attrs_json, item_id, unknown-item tombstone TTL (ms)
_APPLY_LUA = """
local ts = tonumber(ARGV[1])
local stored = tonumber(redis.call('HGET', KEYS[1], 'ts') or '-1')
if ts < stored then return 0 end
-- On a tie a delete wins: replaying an upsert never resurrects a deleted item.
if ts == stored and ARGV[2] == 'upsert' and redis.call('HGET', KEYS[1], 'deleted') == '1' then
  return 0
end
if ARGV[2] == 'delete' then
  local seen = redis.call('HGET', KEYS[1], 'seen')
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[1], 'ts', ts, 'deleted', 1)
  redis.call('ZREM', KEYS[4], ARGV[6])
  if seen then
    redis.call('HSET', KEYS[1], 'seen', 1)
  else
    -- A delete of an item never upserted only guards against a late upsert of it:
    -- keep that tombstone a while, not forever (ids of unknown items are unbounded).
    redis.call('PEXPIRE', KEYS[1], ARGV[7])
  end
else
  redis.call('HSET', KEYS[1], 'ts', ts, 'deleted', 0, 'title', ARGV[3],
             'description', ARGV[4], 'attributes', ARGV[5], 'seen', 1)
  redis.call('PERSIST', KEYS[1])
  redis.call('ZADD', KEYS[4], 'NX', ts, ARGV[6])
end
local seq = redis.call('INCR', KEYS[2])
redis.call('ZADD', KEYS[3], seq, ARGV[6])
return seq
"""


def display_title(title: str, *, year: bool = True) -> str:
    """A catalog title as people write it: 'Usual Suspects, The (1995)' -> 'The Usual
    Suspects (1995)', or 'The Usual Suspects' with ``year=False``."""
    base = title.strip()
    found = re.search(r"\s*\(\d{4}\)$", base)
    suffix = found.group(0) if found else ""
    if found:
        base = base[: found.start()].strip()
    m = re.match(r"^(.*), (The|A|An)$", base)
    if m:
        base = f"{m.group(2)} {m.group(1)}"
    return f"{base}{suffix}" if year else base


def item_text(
    title: str | None, description: str | None, attributes: Mapping[str, object] | None
) -> str:
    """The text the item encoder sees, in the form the model was trained on:
    ``"Heat (1995). Genres: Action, Crime."`` followed by any description."""
    attrs = attributes or {}
    year = attrs.get("year")
    genres = attrs.get("genres")
    genre_list = [str(g) for g in genres] if isinstance(genres, list | tuple) else []
    year_part = f" ({year})" if year else ""
    text = f"{title or ''}{year_part}. Genres: {', '.join(genre_list) or 'unknown'}."
    # Features an enrichment added (MovieLens items have none, so trained text is unchanged).
    for name in ("themes", "mood", "audience", "keywords"):
        value = attrs.get(name)
        values = [str(v) for v in value] if isinstance(value, list | tuple) else [str(value or "")]
        if any(values):
            text += f" {name.capitalize()}: {', '.join(v for v in values if v)}."
    return f"{text} {description}" if description else text


def attribute_tokens(attributes: Mapping[str, object] | None) -> tuple[str, ...]:
    """Attributes as the affinity tokens state keeps: ``genre=Comedy``, ``year=1995``."""
    if not attributes:
        return ()
    out: list[str] = []
    for key, value in sorted(attributes.items()):
        values = value if isinstance(value, list | tuple) else [value]
        out += [f"{key}={v}" for v in values][:16]
    return tuple(out)


# KEYS: item hash, seq, log. ARGV: ts of the enriched version, features JSON, item id.
_ENRICH_LUA = """
if redis.call('HGET', KEYS[1], 'deleted') ~= '0' then return 0 end
if redis.call('HGET', KEYS[1], 'ts') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'features', ARGV[2], 'features_ts', ARGV[1])
local seq = redis.call('INCR', KEYS[2])
redis.call('ZADD', KEYS[3], seq, ARGV[3])
return seq
"""


@dataclass(slots=True)
class ItemRecord:
    item_id: str
    title: str
    attributes: dict[str, object]
    deleted: bool
    text: str = ""
    tokens: tuple[str, ...] = field(default=())


class CatalogStore:
    """Applies catalog changes to Redis (idempotent, ordered by event time)."""

    def __init__(self, redis: RedisResource) -> None:
        self._redis = redis
        self._script = RedisScript(redis, _APPLY_LUA)
        self._enrich_script = RedisScript(redis, _ENRICH_LUA)

    def item_key(self, item_id: str) -> str:
        return self._redis.key(_TAG, "item", item_id)

    @property
    def seq_key(self) -> str:
        return self._redis.key(_TAG, "seq")

    @property
    def log_key(self) -> str:
        return self._redis.key(_TAG, "log")

    @property
    def fresh_key(self) -> str:
        return self._redis.key(_TAG, "fresh")

    async def apply(self, changes: Sequence[CatalogChange]) -> int:
        """Apply changes; return how many took effect (older-than-stored ones do not)."""
        if not changes:
            return 0
        keys_common = [self.seq_key, self.log_key, self.fresh_key]
        calls: list[tuple[list[str], list[str | int]]] = [
            (
                [self.item_key(change.item_id), *keys_common],
                [
                    change.ts_ms,
                    change.op,
                    change.title or "",
                    change.description or "",
                    orjson.dumps(change.to_dict()["attributes"] or {}).decode(),
                    change.item_id,
                    UNKNOWN_TOMBSTONE_TTL_MS,
                ],
            )
            for change in changes
        ]
        try:
            replies = await self._script.run_many(calls)
            await self._redis.client.zremrangebyrank(self.log_key, 0, -_LOG_MAX - 1)
        except RedisError as exc:
            raise state_store_error("catalog update failed", exc) from exc
        return sum(1 for r in replies if int(r) > 0)

    async def enrich(self, item_id: str, ts_ms: int, features: Mapping[str, object]) -> bool:
        """Attach LLM-extracted features to the item version ``ts_ms``; views reload it.

        Features of an older version are ignored when read, so an edit made
        while the LLM was busy is never mixed with features of the old text.
        """
        try:
            reply = await self._enrich_script.run_many(
                [
                    (
                        [self.item_key(item_id), self.seq_key, self.log_key],
                        [ts_ms, orjson.dumps(dict(features)).decode(), item_id],
                    )
                ]
            )
        except RedisError as exc:
            raise state_store_error("catalog enrichment failed", exc) from exc
        return bool(int(reply[0]))

    async def seq(self) -> int:
        raw = await self._redis.client.get(self.seq_key)
        return int(raw or 0)

    async def changed_since(self, seq: int) -> list[str]:
        ids = await self._redis.client.zrangebyscore(self.log_key, seq + 1, "+inf")
        return [i.decode() if isinstance(i, bytes) else str(i) for i in ids]

    async def load(self, item_ids: Iterable[str]) -> list[ItemRecord]:
        ids = list(item_ids)
        async with self._redis.client.pipeline(transaction=False) as pipe:
            for item_id in ids:
                pipe.hgetall(self.item_key(item_id))
            replies = await pipe.execute()
        out = []
        for item_id, raw in zip(ids, replies, strict=True):
            if not raw:
                continue
            deleted = raw.get(b"deleted") == b"1"
            attrs = orjson.loads(raw.get(b"attributes", b"{}")) if not deleted else {}
            if not deleted and raw.get(b"features_ts") == raw.get(b"ts"):
                for name, value in orjson.loads(raw.get(b"features", b"{}")).items():
                    attrs.setdefault(name, value)  # the catalog's own attributes win
            title = raw.get(b"title", b"").decode()
            description = raw.get(b"description", b"").decode()
            out.append(
                ItemRecord(
                    item_id=item_id,
                    title=title,
                    attributes=attrs,
                    deleted=deleted,
                    text="" if deleted else item_text(title, description, attrs),
                    tokens=attribute_tokens(attrs),
                )
            )
        return out

    async def fresh(self, limit: int) -> list[str]:
        ids = await self._redis.client.zrevrange(self.fresh_key, 0, limit - 1)
        return [i.decode() if isinstance(i, bytes) else str(i) for i in ids]


class CatalogView:
    """One process's view of the catalog, refreshed from Redis by polling.

    ``on_items`` is awaited with the live (not deleted) items of each refresh,
    so the scorer can add the ones it does not know yet.
    """

    def __init__(
        self,
        store: CatalogStore,
        on_items: Callable[[list[ItemRecord]], Awaitable[None]] | None = None,
    ) -> None:
        self._store = store
        self._on_items = on_items
        self._seq = 0
        self._lock = asyncio.Lock()
        self.items: dict[str, ItemRecord] = {}
        self.deleted: set[str] = set()

    def tokens(self, item_id: str) -> tuple[str, ...]:
        record = self.items.get(item_id)
        return record.tokens if record else ()

    async def refresh(self) -> int:
        """Load what changed since the last refresh; return how many items changed.

        Serialised: the poll task and the catalog handler both refresh, and an
        older load applied after a newer one could un-delete an item.
        """
        async with self._lock:
            try:
                seq = await self._store.seq()
                if seq == self._seq:
                    return 0
                records = await self._store.load(await self._store.changed_since(self._seq))
            except RedisError as exc:
                raise state_store_error("catalog refresh failed", exc) from exc
            live = []
            for record in records:
                self.items[record.item_id] = record
                if record.deleted:
                    self.deleted.add(record.item_id)
                else:
                    self.deleted.discard(record.item_id)
                    live.append(record)
            if live and self._on_items is not None:
                await self._on_items(live)
            self._seq = seq
        if records:
            logger.info("catalog view: %d items changed (seq %d)", len(records), seq)
        return len(records)
