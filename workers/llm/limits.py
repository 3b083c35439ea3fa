"""Rate limits per endpoint: requests and tokens per window, local and shared.

Two layers, both deadline-aware (a wait longer than the caller's deadline
allows is refused at once with :class:`RateLimited`, never slept through):

* in-process: asyncio-throttle's sliding log for requests and
  :class:`TokenWindow` for tokens;
* across processes, when Redis is configured: :class:`SharedWindowLimiter`,
  one Lua script that checks and records requests and tokens atomically in
  sliding-window logs, on Redis' clock, so N replicas together respect the
  provider's limit instead of N times it.

Tokens use a sliding-window log rather than a refill bucket: a bucket of
capacity C refilled at C per window lets up to 2C through in one window,
which is exactly what a provider's per-minute counter punishes.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import deque

from asyncio_throttle.throttler import Throttler

from workers.llm.deadline import Deadline
from workers.llm.errors import PromptTooLarge, RateLimited
from workers.resources import RedisClient

__all__ = [
    "EndpointLimiter",
    "RequestThrottler",
    "SharedWindowLimiter",
    "TokenWindow",
    "slot_tagged",
]

log = logging.getLogger(__name__)


class RequestThrottler(Throttler):
    """asyncio-throttle's sliding log, with a deadline instead of an open-ended wait."""

    def wait_needed(self) -> float:
        logs: deque[float] = self._task_logs
        period: float = self.period
        now = time.monotonic()
        while logs and now - logs[0] > period:
            logs.popleft()
        if len(logs) < self.rate_limit:
            return 0.0
        return max(0.0, logs[0] + period - now)

    async def acquire_by(self, deadline: Deadline) -> None:
        while True:
            wait = self.wait_needed()
            if wait == 0.0:
                self._task_logs.append(time.monotonic())
                return
            if wait > deadline.remaining():
                raise RateLimited("request limit: wait exceeds deadline", retry_after=wait)
            await asyncio.sleep(wait + 0.001)


class TokenWindow:
    """At most ``limit`` tokens admitted in any sliding window of ``period`` seconds."""

    def __init__(self, limit: int, period: float) -> None:
        self.limit = limit
        self.period = period
        self._log: deque[tuple[float, int]] = deque()
        self._used = 0

    def _flush(self, now: float) -> None:
        while self._log and now - self._log[0][0] > self.period:
            self._used -= self._log.popleft()[1]

    def wait_needed(self, tokens: int) -> float:
        now = time.monotonic()
        self._flush(now)
        need = self._used + tokens - self.limit
        if need <= 0:
            return 0.0
        freed = 0
        for stamp, n in self._log:
            freed += n
            if freed >= need:
                return max(0.0, stamp + self.period - now)
        return self.period

    async def acquire_by(self, tokens: int, deadline: Deadline) -> None:
        if tokens > self.limit:
            raise PromptTooLarge(f"request needs {tokens} tokens, window limit is {self.limit}")
        while True:
            wait = self.wait_needed(tokens)
            if wait == 0.0:
                self._log.append((time.monotonic(), tokens))
                self._used += tokens
                return
            if wait > deadline.remaining():
                raise RateLimited("token limit: wait exceeds deadline", retry_after=wait)
            await asyncio.sleep(wait + 0.001)


# KEYS: requests log, tokens log, tokens sum, block flag.
# ARGV: window ms, request limit, token limit, tokens, member id, hold ms.
# An admitted request is stamped at now + hold (its longest possible time in
# flight): until it completes it counts against every window, because the
# provider counts it when it *arrives*, which may be well after admission on a
# busy machine. settle() re-stamps it with its completion time.
# Returns {1, 0} admitted, {0, wait_ms} not yet, {-1, 0} can never fit.
_ACQUIRE_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[1])
local rpm = tonumber(ARGV[2])
local tpm = tonumber(ARGV[3])
local tokens = tonumber(ARGV[4])
local id = ARGV[5]
local hold = tonumber(ARGV[6])
-- How long until an entry stamped at ``at`` leaves the window; an entry still
-- in flight (stamped in the future) may end any moment: poll again soon.
local function until_free(at)
  if at > now then return 50 end
  return at + window - now + 1
end
if tpm > 0 and tokens > tpm then return {-1, 0} end
local blocked = redis.call('PTTL', KEYS[4])
if blocked > 0 then return {0, blocked} end
local cutoff = now - window
local old = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', cutoff)
if #old > 0 then
  local s = 0
  for i = 1, #old do s = s + tonumber(string.match(old[i], ':(%d+)$')) end
  redis.call('DECRBY', KEYS[3], s)
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', cutoff)
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', cutoff)
local wait = 0
if rpm > 0 then
  local n = redis.call('ZCARD', KEYS[1])
  if n >= rpm then
    local e = redis.call('ZRANGE', KEYS[1], n - rpm, n - rpm, 'WITHSCORES')
    wait = math.max(wait, until_free(tonumber(e[2])))
  end
end
if tpm > 0 then
  local used = tonumber(redis.call('GET', KEYS[3]) or '0')
  if used + tokens > tpm then
    local need = used + tokens - tpm
    local entries = redis.call('ZRANGE', KEYS[2], 0, -1, 'WITHSCORES')
    local freed = 0
    for i = 1, #entries, 2 do
      freed = freed + tonumber(string.match(entries[i], ':(%d+)$'))
      if freed >= need then
        wait = math.max(wait, until_free(tonumber(entries[i + 1])))
        break
      end
    end
  end
end
if wait > 0 then return {0, wait} end
redis.call('ZADD', KEYS[1], now + hold, id)
redis.call('ZADD', KEYS[2], now + hold, id .. ':' .. tokens)
redis.call('INCRBY', KEYS[3], tokens)
for i = 1, 3 do redis.call('PEXPIRE', KEYS[i], window * 2 + hold) end
return {1, 0}
"""

# KEYS: requests log, tokens log. ARGV: member id, tokens.
# Re-stamp a finished request with its completion time (never later than its hold).
_SETTLE_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], 'XX', 'LT', now, ARGV[1])
redis.call('ZADD', KEYS[2], 'XX', 'LT', now, ARGV[1] .. ':' .. ARGV[2])
return 1
"""


def slot_tagged(key: str) -> str:
    """``rs:llm:lim:primary`` -> ``rs:llm:lim:{primary}``: keys built on it share one
    Redis Cluster slot (a script's keys must), while they keep the deployment's
    prefix in front, which the worker's Redis ACL (``~rs:*``) matches."""
    head, _, tail = key.rpartition(":")
    return f"{head}:{{{tail}}}" if head else f"{{{tail}}}"


class SharedWindowLimiter:
    """Sliding-window request and token limits shared by every process through Redis."""

    def __init__(
        self,
        redis: RedisClient,
        key: str,
        *,
        rpm: int,
        tpm: int,
        window_s: float,
        hold_s: float = 60.0,
    ) -> None:
        self._redis = redis
        self._hold_ms = int(hold_s * 1000)
        tag = slot_tagged(key)
        self._keys = [f"{tag}:req", f"{tag}:tok", f"{tag}:toksum", f"{tag}:block"]
        self._rpm = rpm
        self._tpm = tpm
        self._window_ms = int(window_s * 1000)
        self._script = redis.register_script(_ACQUIRE_LUA)
        self._settle = redis.register_script(_SETTLE_LUA)

    async def acquire_by(self, tokens: int, deadline: Deadline) -> str:
        """Wait for room; return the ticket to :meth:`settle` when the request ends."""
        member = uuid.uuid4().hex
        while True:
            status, wait_ms = await self._script(
                keys=self._keys,
                args=[self._window_ms, self._rpm, self._tpm, tokens, member, self._hold_ms],
            )
            if status == 1:
                return f"{member}:{tokens}"
            if status == -1:
                raise PromptTooLarge(f"request needs {tokens} tokens, window limit is {self._tpm}")
            wait = int(wait_ms) / 1000
            if wait > deadline.remaining():
                raise RateLimited("shared limit: wait exceeds deadline", retry_after=wait)
            await asyncio.sleep(wait)

    async def settle(self, ticket: str) -> None:
        """The request of ``ticket`` has ended: its window now runs from this moment."""
        member, _, tokens = ticket.rpartition(":")
        await self._settle(keys=self._keys[:2], args=[member, tokens])

    async def block(self, seconds: float) -> None:
        """Hold every process off this endpoint (after a 429 with Retry-After)."""
        await self._redis.set(self._keys[3], b"1", px=max(1, int(seconds * 1000)))


class EndpointLimiter:
    """Both layers for one endpoint; :meth:`acquire_by` admits one request of ``tokens``."""

    def __init__(
        self,
        *,
        rpm: int,
        tpm: int,
        window_s: float,
        shared: SharedWindowLimiter | None = None,
    ) -> None:
        self._requests = RequestThrottler(rate_limit=rpm, period=window_s) if rpm > 0 else None
        self._tokens = TokenWindow(tpm, window_s) if tpm > 0 else None
        self._shared = shared
        self._blocked_until = 0.0

    async def acquire_by(self, tokens: int, deadline: Deadline) -> tuple[float, str | None]:
        """Wait (within the deadline) for room; returns the seconds spent waiting and
        the shared limiter's ticket (None without Redis), to :meth:`settle` afterwards."""
        start = time.monotonic()
        blocked = self._blocked_until - start
        if blocked > 0:
            if blocked > deadline.remaining():
                raise RateLimited("endpoint asked us to back off", retry_after=blocked)
            await asyncio.sleep(blocked)
        if self._tokens is not None and tokens > self._tokens.limit:
            raise PromptTooLarge(
                f"request needs {tokens} tokens, window limit is {self._tokens.limit}"
            )
        if self._requests is not None:
            await self._requests.acquire_by(deadline)
        if self._tokens is not None:
            await self._tokens.acquire_by(tokens, deadline)
        ticket = None
        if self._shared is not None:
            ticket = await self._shared.acquire_by(tokens, deadline)
        return time.monotonic() - start, ticket

    async def settle(self, ticket: str | None) -> None:
        """Tell the shared window the request ended (best effort: an unsettled
        entry only holds its place until its hold time runs out)."""
        if ticket is None or self._shared is None:
            return
        try:
            await self._shared.settle(ticket)
        except Exception:
            log.warning("could not settle a shared-limit entry", exc_info=True)

    async def block(self, seconds: float) -> None:
        self._blocked_until = max(self._blocked_until, time.monotonic() + seconds)
        if self._shared is not None:
            await self._shared.block(seconds)
