"""The budget governor: tokens and cost per minute and per hour, refused at once.

A call reserves its estimated tokens (prompt + max_tokens) and cost before it
is sent; if that would pass any budget of the current minute or hour it is
refused with :class:`BudgetExceeded` (carrying the seconds until the window
turns) so the caller falls back instead of waiting. After the answer the
reservation is settled to the real usage. With Redis the counters are shared
by every process (fixed windows on the wall clock); without it they are local.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from workers.llm.errors import BudgetExceeded
from workers.llm.limits import slot_tagged
from workers.resources import RedisClient

__all__ = ["BudgetGovernor", "Reservation"]

# Cost is counted in micro-USD so Redis can add integers.
_MICRO = 1_000_000

# KEYS: tokens/min, tokens/hour, cost/min, cost/hour.
# ARGV: tokens, micro-cost, then the four limits (0 = none), then the two TTLs.
_RESERVE_LUA = """
local add = {tonumber(ARGV[1]), tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[2])}
for i = 1, 4 do
  local limit = tonumber(ARGV[2 + i])
  if limit > 0 then
    local used = tonumber(redis.call('GET', KEYS[i]) or '0')
    if used + add[i] > limit then return i end
  end
end
for i = 1, 4 do
  redis.call('INCRBY', KEYS[i], add[i])
  redis.call('EXPIRE', KEYS[i], (i % 2 == 1) and ARGV[7] or ARGV[8])
end
return 0
"""

_NAMES = ("tokens per minute", "tokens per hour", "cost per minute", "cost per hour")


@dataclass
class Reservation:
    """What one call reserved, and in which windows, so it can be settled."""

    minute: int
    hour: int
    tokens: int
    micro_cost: int


class BudgetGovernor:
    def __init__(
        self,
        *,
        tokens_per_minute: int = 0,
        tokens_per_hour: int = 0,
        cost_per_minute: float = 0.0,
        cost_per_hour: float = 0.0,
        redis: RedisClient | None = None,
        key: str = "rs:llm:budget",
    ) -> None:
        self._limits = (
            tokens_per_minute,
            tokens_per_hour,
            int(cost_per_minute * _MICRO),
            int(cost_per_hour * _MICRO),
        )
        self._enabled = any(self._limits)
        self._redis = redis
        self._key = key
        self._script = redis.register_script(_RESERVE_LUA) if redis is not None else None
        self._local: dict[str, int] = {}

    def _keys(self, minute: int, hour: int) -> list[str]:
        tag = slot_tagged(self._key)  # one slot for the reserve script's four keys
        return [f"{tag}:tm:{minute}", f"{tag}:th:{hour}", f"{tag}:cm:{minute}", f"{tag}:ch:{hour}"]

    async def reserve(self, tokens: int, cost_usd: float) -> Reservation:
        now = time.time()
        minute, hour = int(now // 60), int(now // 3600)
        res = Reservation(minute, hour, tokens, int(cost_usd * _MICRO))
        if not self._enabled:
            return res
        keys = self._keys(minute, hour)
        if self._script is not None:
            over = int(
                await self._script(
                    keys=keys, args=[tokens, res.micro_cost, *self._limits, 120, 7200]
                )
            )
        else:
            over = self._reserve_local(keys, tokens, res.micro_cost)
        if over:
            window = 60 if over in (1, 3) else 3600
            raise BudgetExceeded(
                f"LLM budget spent: {_NAMES[over - 1]}", retry_after=window - now % window
            )
        return res

    def _reserve_local(self, keys: list[str], tokens: int, micro_cost: int) -> int:
        add = (tokens, tokens, micro_cost, micro_cost)
        for i, (key, limit) in enumerate(zip(keys, self._limits, strict=True), start=1):
            if limit and self._local.get(key, 0) + add[i - 1] > limit:
                return i
        for key, n in zip(keys, add, strict=True):
            self._local[key] = self._local.get(key, 0) + n
        if len(self._local) > 64:  # drop windows long past
            for stale in sorted(self._local)[:-16]:
                del self._local[stale]
        return 0

    async def settle(self, res: Reservation, tokens: int, cost_usd: float) -> None:
        """Replace the reservation by the real usage (``0, 0`` refunds it)."""
        if not self._enabled:
            return
        d_tokens, d_cost = tokens - res.tokens, int(cost_usd * _MICRO) - res.micro_cost
        if d_tokens == 0 and d_cost == 0:
            return
        keys = self._keys(res.minute, res.hour)
        deltas = (d_tokens, d_tokens, d_cost, d_cost)
        if self._redis is not None:
            async with self._redis.pipeline(transaction=False) as pipe:
                for key, delta in zip(keys, deltas, strict=True):
                    pipe.incrby(key, delta)
                await pipe.execute()
        else:
            for key, delta in zip(keys, deltas, strict=True):
                if key in self._local:
                    self._local[key] += delta
