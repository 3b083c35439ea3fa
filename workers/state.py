"""Per-user preference state in Redis, updated idempotently by one Lua script.

Keys of one user share the hash tag ``{user_id}`` so that the script, which
touches all of them, runs in one slot of a Redis Cluster:

    <prefix>:u:{<user>}:h    list   recent items, most recent first, unique, bounded
    <prefix>:u:{<user>}:c    hash   counters: n, n:<kind>, first_ts, last_ts
    <prefix>:u:{<user>}:w    hash   item -> summed interaction weight (integers)
    <prefix>:u:{<user>}:d    zset   applied event ids -> time applied (dedupe, TTL)
    <prefix>:u:{<user>}:x    zset   consumed items -> event time (excluded from lists), bounded
    <prefix>:u:{<user>}:t    string event time at which the user's current trigger window opened
    <prefix>:u:{<user>}:o    zset   trigger causes that opened a window -> time applied (TTL)
    <prefix>:u:{<user>}:dis  set    items the user turned down in chat (excluded like consumed)

Triggers (events that may produce a recommendation list) are debounced in
*event time* inside the same script: a new triggering event opens a window
when its timestamp is at least ``debounce_ms`` past the current window's
start; at most one cause per user and script call opens one (the latest). The
causes that opened windows are remembered like event ids, so a redelivered
cause is reported again (its list is re-emitted, same id) and a replayed
event that did not open a window never does. Decisions depend on the events
and their order only, never on wall-clock timing or batch boundaries beyond
one call, and the decision is written atomically with the state it rests on.

The script applies all of one user's events of a micro-batch at once and
returns the ids it applied; an event id it has seen before changes nothing, so
Kafka's at-least-once redelivery leaves the state as one delivery would.
Calls for all users of a batch go in one non-transactional pipeline.

Global statistics (popularity per hourly bucket) are updated afterwards for
the newly applied events only. They are approximate by design: a crash between
the two round trips can lose a batch's increments, never double them.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from redis.exceptions import RedisError

from contracts import Interaction
from workers import constants as c
from workers.resources import RedisResource, RedisScript, state_store_error

__all__ = ["ApplyResult", "UserState", "UserStateStore"]

logger = logging.getLogger(__name__)

# KEYS: hist, counters, item weights, dedupe, excluded, window start, opened causes
# ARGV: now_ms, dedupe_ttl_ms, dedupe_max, history_max, debounce_ms, then 8 per event:
#       event_id, item_id, kind, ts_ms, weight, in_history, excluded, trigger ("1"/"0")
# Returns {applied ids, causes to emit (a window opened now, or a redelivered opener)}.
_APPLY_LUA = """
local now = tonumber(ARGV[1])
local ttl = tonumber(ARGV[2])
local dmax = tonumber(ARGV[3])
local hmax = tonumber(ARGV[4])
local debounce = tonumber(ARGV[5])
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now - ttl)
redis.call('ZREMRANGEBYSCORE', KEYS[7], '-inf', now - ttl)
local applied = {}
local emit = {}
local opened_now = nil
local pushed = false
local i = 6
while i <= #ARGV do
  local eid, item, kind, ts = ARGV[i], ARGV[i+1], ARGV[i+2], tonumber(ARGV[i+3])
  local weight, in_hist, excl, trig = tonumber(ARGV[i+4]), ARGV[i+5], ARGV[i+6], ARGV[i+7]
  i = i + 8
  if redis.call('ZADD', KEYS[4], 'NX', now, eid) == 0 then
    -- Seen before: it emits again only if it opened a window (a redelivery).
    if trig == '1' and redis.call('ZSCORE', KEYS[7], eid) then emit[#emit + 1] = eid end
  else
    if trig == '1' then
      local start = tonumber(redis.call('GET', KEYS[6]) or '')
      if not start or ts >= start + debounce then
        redis.call('SET', KEYS[6], ts, 'PX', ttl)
        -- One opener per user and call: a later one supersedes an earlier one
        -- of the same call, which then never emits (now or on redelivery).
        if opened_now then redis.call('ZREM', KEYS[7], opened_now) end
        redis.call('ZADD', KEYS[7], now, eid)
        opened_now = eid
      end
    end
    if in_hist == '1' then
      redis.call('LREM', KEYS[1], 0, item)
      redis.call('LPUSH', KEYS[1], item)
      pushed = true
    end
    if excl == '1' then redis.call('ZADD', KEYS[5], ts, item) end
    redis.call('HINCRBY', KEYS[2], 'n', 1)
    redis.call('HINCRBY', KEYS[2], 'n:' .. kind, 1)
    local last = tonumber(redis.call('HGET', KEYS[2], 'last_ts') or '-1')
    if ts > last then redis.call('HSET', KEYS[2], 'last_ts', ts) end
    local first = tonumber(redis.call('HGET', KEYS[2], 'first_ts') or '-1')
    if first < 0 or ts < first then redis.call('HSET', KEYS[2], 'first_ts', ts) end
    if weight ~= 0 then redis.call('HINCRBY', KEYS[3], item, weight) end
    applied[#applied + 1] = eid
  end
end
if pushed then redis.call('LTRIM', KEYS[1], 0, hmax - 1) end
local size = redis.call('ZCARD', KEYS[4])
if size > dmax then redis.call('ZREMRANGEBYRANK', KEYS[4], 0, size - dmax - 1) end
local xsize = redis.call('ZCARD', KEYS[5])
if xsize > hmax * 10 then redis.call('ZREMRANGEBYRANK', KEYS[5], 0, xsize - hmax * 10 - 1) end
local osize = redis.call('ZCARD', KEYS[7])
if osize > dmax then redis.call('ZREMRANGEBYRANK', KEYS[7], 0, osize - dmax - 1) end
if opened_now then emit[#emit + 1] = opened_now end
return {applied, emit}
"""


# KEYS: watermark, bucket zsets. ARGV: latest event ts, bucket ttl, then
# (KEYS index, item, count) per item and bucket.
_POPULARITY_LUA = """
local ttl = tonumber(ARGV[2])
for i = 3, #ARGV, 3 do
  redis.call('ZINCRBY', KEYS[tonumber(ARGV[i])], ARGV[i + 2], ARGV[i + 1])
end
for k = 2, #KEYS do redis.call('EXPIRE', KEYS[k], ttl, 'NX') end
-- The event-time watermark: "trending" is relative to the data, so a replay
-- of old events still has a meaningful window.
local v = tonumber(redis.call('GET', KEYS[1]) or '0')
if tonumber(ARGV[1]) > v then redis.call('SET', KEYS[1], ARGV[1]) end
return 1
"""


@dataclass(frozen=True, slots=True)
class ApplyResult:
    """What a batch did: the events applied for the first time, and how many were
    duplicates (already applied, or repeated within the batch)."""

    applied_events: tuple[Interaction, ...]
    duplicates: int
    users: int
    # Trigger causes whose list is to be emitted: windows opened by this batch
    # and redelivered causes that opened one before (their list is re-emitted).
    triggered: tuple[Interaction, ...] = ()

    @property
    def applied(self) -> int:
        return len(self.applied_events)

    def __iter__(self) -> Iterator[Interaction]:
        return iter(self.applied_events)


@dataclass(frozen=True, slots=True)
class UserState:
    """A user's state as scoring and policy read it."""

    user_id: str
    history: tuple[str, ...]  # most recent first
    counters: Mapping[str, int]
    item_weights: Mapping[str, int]
    excluded: frozenset[str] = frozenset()

    @property
    def interactions(self) -> int:
        return self.counters.get("n", 0)

    def affinities(self, tokens: Callable[[str], Iterable[str]]) -> dict[str, int]:
        """Attribute affinities (``genres=Drama`` -> weight) under the current catalog.

        Derived when read, not stored: an interaction that arrives before its
        item's catalog entry still counts once the catalog knows the item.
        """
        out: dict[str, int] = defaultdict(int)
        for item, weight in self.item_weights.items():
            for token in tokens(item):
                out[token] += weight
        return dict(out)


def event_weight(event: Interaction) -> int:
    if event.kind == "rating" and event.rating is not None:
        return c.rating_weight(event.rating)
    return c.KIND_WEIGHT[event.kind]


class UserStateStore:
    """Reads and idempotently updates per-user state (see module docstring)."""

    def __init__(
        self,
        redis: RedisResource,
        *,
        history_max: int = c.HISTORY_MAX,
        exclude_kinds: frozenset[str] = c.EXCLUDE_KINDS,
    ) -> None:
        self._redis = redis
        self._history_max = history_max
        self._exclude_kinds = exclude_kinds
        self._script = RedisScript(redis, _APPLY_LUA)
        self._popularity_script = RedisScript(redis, _POPULARITY_LUA)

    def _keys(self, user_id: str) -> list[str]:
        tag = "{" + user_id + "}"
        return [self._redis.key("u", tag, s) for s in ("h", "c", "w", "d", "x", "t", "o")]

    def disliked_key(self, user_id: str) -> str:
        """Items the user turned down (in chat): excluded from every list, like consumed ones."""
        return self._redis.key("u", "{" + user_id + "}", "dis")

    def pop_key(self, bucket: int | str) -> str:
        # One hash tag for all popularity keys: the batch script touches several
        # buckets and the watermark, which in Redis Cluster must share a slot.
        return self._redis.key("{pop}", bucket)

    async def apply(
        self,
        events: Sequence[Interaction],
        *,
        now_ms: int | None = None,
        triggers: Callable[[Interaction], bool] | None = None,
        debounce_ms: int = 0,
    ) -> ApplyResult:
        """Apply a micro-batch atomically per user; return what it did.

        ``triggers`` says which events may produce a list; with ``debounce_ms``
        they are debounced in event time (see the module docstring). Raises
        StateStoreError.
        """
        if not events:
            return ApplyResult((), 0, 0)
        now = int(time.time() * 1000) if now_ms is None else now_ms
        by_user: dict[str, list[Interaction]] = defaultdict(list)
        for event in events:
            by_user[event.user_id].append(event)
        head: list[str | int] = [
            now,
            c.DEDUPE_TTL_MS,
            c.DEDUPE_MAX_PER_USER,
            self._history_max,
            max(debounce_ms, 0),
        ]
        calls = []
        for user_id, user_events in by_user.items():
            args = list(head)
            for e in user_events:
                args += [
                    e.event_id,
                    e.item_id,
                    e.kind,
                    e.ts_ms,
                    event_weight(e),
                    "1" if e.kind in c.HISTORY_KINDS else "0",
                    "1" if e.kind in self._exclude_kinds else "0",
                    "1" if triggers is not None and triggers(e) else "0",
                ]
            calls.append((self._keys(user_id), args))
        try:
            replies = await self._script.run_many(calls)
            # Per user, and each applied id once: the same event twice in one
            # batch (a producer retry) is applied, and counted, once.
            applied: list[Interaction] = []
            triggered: list[Interaction] = []
            for user_events, (applied_ids, emit_ids) in zip(by_user.values(), replies, strict=True):
                fresh, emit = set(applied_ids), set(emit_ids)
                for e in user_events:
                    key = e.event_id.encode()
                    if key in fresh:
                        fresh.discard(key)
                        applied.append(e)
                    if key in emit:
                        emit.discard(key)
                        triggered.append(e)
            if applied:
                await self._count_popularity(applied)
        except RedisError as exc:
            raise state_store_error("state update failed", exc) from exc
        return ApplyResult(
            tuple(applied), len(events) - len(applied), len(by_user), tuple(triggered)
        )

    async def _count_popularity(self, applied: Sequence[Interaction]) -> None:
        counts: dict[tuple[int, str], int] = defaultdict(int)
        latest = 0
        for e in applied:
            if e.kind in c.HISTORY_KINDS:
                counts[(e.ts_ms // c.POPULARITY_BUCKET_MS, e.item_id)] += 1
            latest = max(latest, e.ts_ms)
        buckets = sorted({b for b, _ in counts})
        slot = {b: n for n, b in enumerate(buckets)}
        args: list[str | int] = [latest, c.POPULARITY_BUCKET_TTL_S]
        for (bucket, item), n in counts.items():
            args += [slot[bucket] + 2, item, n]  # KEYS index of the bucket (1 is the watermark)
        keys = [self.pop_key("watermark"), *(self.pop_key(b) for b in buckets)]
        # One script call per batch instead of one ZINCRBY per item and bucket.
        await self._popularity_script.run_many([(keys, args)])

    async def load(
        self, user_ids: Sequence[str], *, history: int = 50, weights: bool = True
    ) -> list[UserState]:
        """Read several users' state in one pipeline. ``weights=False`` skips the
        per-item weights, which scoring does not need and which grow with the history."""
        client = self._redis.client
        try:
            async with client.pipeline(transaction=False) as pipe:
                for user_id in user_ids:
                    hist, counters, weights_key, _, excluded, *_ = self._keys(user_id)
                    pipe.lrange(hist, 0, history - 1)
                    pipe.hgetall(counters)
                    if weights:
                        pipe.hgetall(weights_key)
                    pipe.zrange(excluded, 0, -1)
                    pipe.smembers(self.disliked_key(user_id))
                replies = await pipe.execute()
        except RedisError as exc:
            raise state_store_error("state read failed", exc) from exc
        per_user = 5 if weights else 4
        out = []
        for n, user_id in enumerate(user_ids):
            reply = replies[per_user * n : per_user * (n + 1)]
            hist, counters, excluded = reply[0], reply[1], reply[-2] + list(reply[-1])
            item_weights = reply[2] if weights else {}
            out.append(
                UserState(
                    user_id=user_id,
                    history=tuple(h.decode() for h in hist),
                    counters={k.decode(): int(v) for k, v in counters.items()},
                    item_weights={k.decode(): int(v) for k, v in item_weights.items()},
                    excluded=frozenset(x.decode() for x in excluded),
                )
            )
        return out
