"""LLMPool: the one place where LLM requests leave the process.

Per endpoint: a pooled ``httpx.AsyncClient``, request/token limits (local and,
with Redis, shared), a concurrency bound, connect/read timeouts, retries with
exponential backoff and jitter that honour ``Retry-After``/``retry-after-ms``,
and a circuit breaker. Across endpoints: fallback in order, one token/cost
budget, a response cache with single-flight, and the caller's deadline on all
of it. ``complete`` returns what the caller's ``parse`` made of the answer, or
raises one of :mod:`workers.llm.errors`; nothing here waits past the deadline.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx
import orjson

from workers.llm import metrics
from workers.llm.breaker import CircuitBreaker
from workers.llm.budget import BudgetGovernor
from workers.llm.cache import ResponseCache, SingleFlight, cache_key
from workers.llm.deadline import Deadline, DeadlineLike
from workers.llm.errors import (
    AllEndpointsFailed,
    CircuitOpen,
    DeadlineExceeded,
    InvalidOutput,
    LLMError,
    LLMNotConfigured,
    RateLimited,
    Refused,
    ResponseTooLarge,
    UpstreamError,
)
from workers.llm.limits import EndpointLimiter, SharedWindowLimiter
from workers.llm.safety import redact
from workers.llm.settings import EndpointSettings, LLMSettings
from workers.llm.tokens import estimate_messages, estimate_request, estimate_tokens
from workers.resources import RedisClient, Resource

__all__ = ["ChatRequest", "Completion", "Endpoint", "LLMPool", "Usage"]

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class ChatRequest:
    """One chat-completions request, before an endpoint is chosen."""

    role: str
    messages: tuple[Mapping[str, str], ...]
    max_tokens: int = 512
    temperature: float = 0.0
    json_mode: bool = True
    cacheable: bool = True

    def params(self) -> dict[str, Any]:
        return {
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "json": self.json_mode,
        }


@dataclass(frozen=True)
class Usage:
    """What an answer cost; ``cached`` answers cost nothing."""

    endpoint: str = ""
    model: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    cached: bool = False
    attempts: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            endpoint=self.endpoint or other.endpoint,
            model=self.model or other.model,
            prompt_tokens=self.prompt_tokens + other.prompt_tokens,
            completion_tokens=self.completion_tokens + other.completion_tokens,
            cost_usd=self.cost_usd + other.cost_usd,
            cached=self.cached and other.cached,
            attempts=self.attempts + other.attempts,
        )


@dataclass(frozen=True)
class Completion:
    """The text of an answer and its usage."""

    content: str
    usage: Usage = field(default_factory=Usage)


def _retry_after(headers: httpx.Headers) -> float | None:
    """Seconds from ``retry-after-ms`` or ``Retry-After`` (seconds or HTTP date)."""
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    raw = headers.get("retry-after")
    if not raw:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class Endpoint:
    """One endpoint's client, limits, breaker and retry policy."""

    def __init__(
        self,
        settings: EndpointSettings,
        *,
        redis: RedisClient | None,
        key_prefix: str,
        transport: httpx.AsyncBaseTransport | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = s = settings
        self.name = s.name
        window = s.window_s + s.window_margin_s
        shared = (
            SharedWindowLimiter(
                redis,
                f"{key_prefix}:lim:{s.name}",
                rpm=s.rpm,
                tpm=s.tpm,
                window_s=window,
                hold_s=s.connect_timeout_s + s.read_timeout_s,
            )
            if redis is not None and (s.rpm or s.tpm)
            else None
        )
        self.limiter = EndpointLimiter(rpm=s.rpm, tpm=s.tpm, window_s=window, shared=shared)
        self.breaker = CircuitBreaker(
            s.breaker_failures,
            s.breaker_cooldown_s,
            s.breaker_half_open_probes,
            on_change=lambda st: metrics.BREAKER_STATE.labels(s.name).set(int(st)),
        )
        metrics.BREAKER_STATE.labels(s.name).set(0)
        self._sem = asyncio.Semaphore(s.concurrency)
        headers = {"content-type": "application/json"}
        if s.api_key:
            headers["authorization"] = f"Bearer {s.api_key.reveal()}"
        self._client = httpx.AsyncClient(
            base_url=s.base_url.rstrip("/") + "/",
            headers=headers,
            timeout=httpx.Timeout(
                connect=s.connect_timeout_s,
                read=s.read_timeout_s,
                write=s.read_timeout_s,
                pool=None,
            ),
            limits=httpx.Limits(
                max_connections=s.concurrency, max_keepalive_connections=s.concurrency
            ),
            transport=transport,
        )
        self._rng = rng or random.Random()
        #: (monotonic time, delay) of every retry sleep, for tests and debugging
        self.retry_log: list[tuple[float, float, str]] = []

    def price(self, prompt_tokens: int, completion_tokens: int) -> float:
        s = self.settings
        return (prompt_tokens * s.price_in_per_1k + completion_tokens * s.price_out_per_1k) / 1000

    def backoff(self, attempt: int, retry_after: float | None) -> float:
        """Delay before retry ``attempt`` (0-based): never before Retry-After, always jittered."""
        s = self.settings
        ceiling = min(s.backoff_cap_s, s.backoff_base_s * (2.0**attempt))
        jitter = self._rng.uniform(0, ceiling / 2)
        if retry_after is not None:
            return retry_after + jitter
        return ceiling / 2 + jitter

    async def aclose(self) -> None:
        await self._client.aclose()

    async def call(
        self, request: ChatRequest, messages: list[dict[str, str]], deadline: Deadline
    ) -> Completion:
        """One call on this endpoint, with its retries; raises on failure."""
        s = self.settings
        body = orjson.dumps(
            {
                "model": s.model,
                "messages": messages,
                "max_tokens": request.max_tokens,
                "temperature": request.temperature,
                **({"response_format": {"type": "json_object"}} if request.json_mode else {}),
            }
        )
        reserve = estimate_request(messages, request.max_tokens)
        last: RateLimited | UpstreamError | None = None
        for attempt in range(s.max_attempts):
            if not self.breaker.allow():
                raise CircuitOpen(f"breaker open on {s.name}", retry_after=self.breaker.retry_in())
            try:
                waited, ticket = await self.limiter.acquire_by(reserve, deadline)
            except BaseException:
                self.breaker.record_neutral()
                raise
            metrics.LIMITER_WAIT.labels(s.name).observe(waited)
            try:
                return await self._attempt(body, attempt + 1, deadline)
            except _Retry as retry:
                last = retry.error
                delay = self.backoff(attempt, retry.error.retry_after)
                metrics.RETRIES.labels(s.name, retry.reason).inc()
                if retry.error.retry_after is not None and retry.reason == "429":
                    await self.limiter.block(retry.error.retry_after)
                if attempt + 1 >= s.max_attempts:
                    break
                if delay >= deadline.remaining():
                    log.info("llm %s: retry in %.2fs would pass the deadline", s.name, delay)
                    break
                self.retry_log.append((time.monotonic(), delay, retry.reason))
                await asyncio.sleep(delay)
            finally:
                await self.limiter.settle(ticket)
        assert last is not None
        raise last

    async def _attempt(self, body: bytes, attempt: int, deadline: Deadline) -> Completion:
        s = self.settings
        try:
            async with asyncio.timeout(deadline.remaining()):
                async with self._sem:
                    status, headers, raw = await self._send(body)
        except TimeoutError:
            self.breaker.record_neutral()
            raise DeadlineExceeded(f"deadline passed during a call to {s.name}") from None
        except httpx.TimeoutException as exc:
            self.breaker.record_failure()
            raise _Retry("timeout", UpstreamError(f"{s.name}: {type(exc).__name__}")) from None
        except httpx.TransportError as exc:
            self.breaker.record_failure()
            raise _Retry("transport", UpstreamError(f"{s.name}: {type(exc).__name__}")) from None
        except ResponseTooLarge:
            self.breaker.record_success()
            raise
        except BaseException:
            self.breaker.record_neutral()
            raise
        if status == 429:
            self.breaker.record_neutral()
            raise _Retry(
                "429",
                RateLimited(f"{s.name}: 429 from endpoint", retry_after=_retry_after(headers)),
            )
        if status >= 500:
            self.breaker.record_failure()
            raise _Retry(
                "5xx",
                UpstreamError(
                    f"{s.name}: HTTP {status}", status=status, retry_after=_retry_after(headers)
                ),
            )
        if status >= 400:
            self.breaker.record_neutral()
            error = UpstreamError(f"{s.name}: HTTP {status}", status=status)
            error.retriable = False
            raise error
        try:
            doc = orjson.loads(raw)
            content = doc["choices"][0]["message"]["content"]
            if not isinstance(content, str):
                raise TypeError("content is not text")
        except (orjson.JSONDecodeError, KeyError, IndexError, TypeError):
            self.breaker.record_failure()
            raise _Retry(
                "malformed", UpstreamError(f"{s.name}: malformed response body", status=status)
            ) from None
        self.breaker.record_success()
        usage = doc.get("usage") if isinstance(doc, dict) else None
        prompt_tokens = completion_tokens = 0
        if isinstance(usage, dict):
            prompt_tokens = _int(usage.get("prompt_tokens"))
            completion_tokens = _int(usage.get("completion_tokens"))
        if not prompt_tokens:  # providers that omit usage: fall back to the estimate
            prompt_tokens = estimate_messages(orjson.loads(body)["messages"])
            completion_tokens = estimate_tokens(content)
        return Completion(
            content,
            Usage(
                endpoint=s.name,
                model=s.model,
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                cost_usd=self.price(prompt_tokens, completion_tokens),
                attempts=attempt,
            ),
        )

    async def _send(self, body: bytes) -> tuple[int, httpx.Headers, bytes]:
        cap = self.settings.max_response_bytes
        async with self._client.stream("POST", "chat/completions", content=body) as response:
            declared = response.headers.get("content-length")
            if declared is not None and declared.isdigit() and int(declared) > cap:
                raise ResponseTooLarge(f"{self.name}: response body over {cap} bytes")
            chunks: list[bytes] = []
            size = 0
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > cap:
                    raise ResponseTooLarge(f"{self.name}: response body over {cap} bytes")
                chunks.append(chunk)
            return response.status_code, response.headers, b"".join(chunks)


def _int(value: object) -> int:
    return value if isinstance(value, int) and value >= 0 else 0


class _Retry(Exception):
    """Internal: this attempt failed in a way another attempt may fix."""

    def __init__(self, reason: str, error: RateLimited | UpstreamError) -> None:
        super().__init__(reason)
        self.reason = reason
        self.error = error


class LLMPool(Resource):
    """The LLM client pool; a :class:`~workers.resources.Resource` (``async with``).

    ``redis`` (optional, not owned) shares limits, budgets and the cache
    between processes. ``transport`` lets tests swap httpx's transport.
    """

    def __init__(
        self,
        settings: LLMSettings,
        *,
        redis: RedisClient | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        rng: random.Random | None = None,
    ) -> None:
        super().__init__()
        self.settings = settings
        self._redis = redis
        self._transport = transport
        self._rng = rng
        self.endpoints: list[Endpoint] = []
        self.budget = BudgetGovernor(
            tokens_per_minute=settings.budget_tokens_per_minute,
            tokens_per_hour=settings.budget_tokens_per_hour,
            cost_per_minute=settings.budget_cost_per_minute,
            cost_per_hour=settings.budget_cost_per_hour,
            redis=redis,
            key=f"{settings.key_prefix}:budget",
        )
        self.cache = ResponseCache(
            redis if settings.cache_enabled else None,
            prefix=settings.key_prefix,
            ttl_s=settings.cache_ttl_s,
        )
        self._flight = SingleFlight()
        #: upstream calls made (not cache hits), for tests and the benchmark
        self.upstream_calls = 0

    def __repr__(self) -> str:
        names = [e.name for e in self.settings.endpoints]
        return f"LLMPool(state={self.state.value}, endpoints={names})"

    async def _open(self) -> None:
        self.endpoints = [
            Endpoint(
                e,
                redis=self._redis,
                key_prefix=self.settings.key_prefix,
                transport=self._transport,
                rng=self._rng,
            )
            for e in self.settings.endpoints
        ]

    async def _close(self) -> None:
        """Close every endpoint's connections."""
        for endpoint in self.endpoints:
            await endpoint.aclose()

    @property
    def configured(self) -> bool:
        return bool(self.settings.endpoints)

    def _keys(self, request: ChatRequest, messages: Sequence[Mapping[str, str]]) -> list[str]:
        params = request.params()
        return [cache_key(e.settings.model, params, messages) for e in self.endpoints]

    async def complete(
        self,
        request: ChatRequest,
        *,
        deadline: DeadlineLike,
        parse: Callable[[Completion], T],
    ) -> tuple[T, Usage]:
        """Send ``request`` (or reuse a cached answer) and return ``parse(answer)``.

        ``parse`` validates the answer and raises :class:`InvalidOutput` if it
        is unusable; only answers it accepts are cached or shared with
        identical concurrent calls. Raises an :class:`LLMError` otherwise.
        """
        self._require_open()
        dl = Deadline.coerce(deadline)
        if not self.endpoints:
            metrics.REFUSALS.labels("not_configured").inc()
            raise LLMNotConfigured("no LLM endpoint is configured")
        messages = [_redacted(m) for m in request.messages]
        keys = self._keys(request, messages)
        start = time.monotonic()
        try:
            if self.cache.enabled and request.cacheable:
                hit = await self._from_cache(keys, parse)
                if hit is not None:
                    return hit
            if request.cacheable:
                (value, usage), shared = await self._flight.run(
                    keys[0], dl, lambda: self._produce(request, messages, keys, dl, parse)
                )
                if shared:
                    metrics.CACHE.labels("shared").inc()
                    return value, Usage(endpoint=usage.endpoint, model=usage.model, cached=True)
                return value, usage
            value, usage, _ = await self._call(request, messages, dl, parse)
            return value, usage
        except LLMError as exc:
            outcome = getattr(exc, "reason", "error")
            if isinstance(exc, Refused | DeadlineExceeded | LLMNotConfigured):
                metrics.REFUSALS.labels(outcome).inc()
            metrics.CALLS.labels("-", request.role, outcome).inc()
            log.info(
                "llm call role=%s outcome=%s latency_ms=%.1f",
                request.role,
                outcome,
                (time.monotonic() - start) * 1000,
            )
            raise

    async def _from_cache(
        self, keys: list[str], parse: Callable[[Completion], T]
    ) -> tuple[T, Usage] | None:
        found = await self.cache.get_first(keys)
        if found is None:
            metrics.CACHE.labels("miss").inc()
            return None
        key, raw = found
        endpoint = self.endpoints[keys.index(key)]
        usage = Usage(endpoint=endpoint.name, model=endpoint.settings.model, cached=True)
        try:
            value = parse(Completion(raw.decode("utf-8", errors="replace"), usage))
        except InvalidOutput:
            await self.cache.delete(key)  # a validator got stricter since it was stored
            metrics.CACHE.labels("miss").inc()
            return None
        metrics.CACHE.labels("hit").inc()
        return value, usage

    async def _produce(
        self,
        request: ChatRequest,
        messages: list[dict[str, str]],
        keys: list[str],
        deadline: Deadline,
        parse: Callable[[Completion], T],
    ) -> tuple[T, Usage]:
        if self.cache.enabled and not await self.cache.lock(keys[0], deadline.remaining() + 1):
            raw = await self.cache.wait_for(keys[0], deadline)
            if raw is not None:
                hit = await self._from_cache(keys, parse)
                if hit is not None:
                    return hit
        try:
            value, usage, content = await self._call(request, messages, deadline, parse)
            if self.cache.enabled:
                index = next(
                    (i for i, e in enumerate(self.endpoints) if e.name == usage.endpoint), 0
                )
                await self.cache.put(keys[index], content.encode())
            return value, usage
        finally:
            if self.cache.enabled:
                await self.cache.unlock(keys[0])

    async def _call(
        self,
        request: ChatRequest,
        messages: list[dict[str, str]],
        deadline: Deadline,
        parse: Callable[[Completion], T],
    ) -> tuple[T, Usage, str]:
        primary = self.endpoints[0]
        estimate = estimate_request(messages, request.max_tokens)
        reservation = await self.budget.reserve(
            estimate, primary.price(estimate - request.max_tokens, request.max_tokens)
        )
        last: LLMError | None = None
        refusals: list[Refused] = []
        for endpoint in self.endpoints:
            if deadline.expired:
                break
            started = time.monotonic()
            try:
                self.upstream_calls += 1
                completion = await endpoint.call(request, messages, deadline)
            except (Refused, UpstreamError) as exc:
                if isinstance(exc, Refused):
                    self.upstream_calls -= 1
                    refusals.append(exc)
                last = exc
                if (
                    isinstance(exc, UpstreamError)
                    and not exc.retriable
                    and exc.status is not None
                    and exc.status < 500
                ):
                    log.warning(
                        "llm %s: HTTP %s, trying the next endpoint", endpoint.name, exc.status
                    )
                continue
            except BaseException:
                await self.budget.settle(reservation, 0, 0.0)
                raise
            usage = completion.usage
            await self.budget.settle(reservation, usage.total_tokens, usage.cost_usd)
            metrics.TOKENS.labels(endpoint.name, "prompt").inc(usage.prompt_tokens)
            metrics.TOKENS.labels(endpoint.name, "completion").inc(usage.completion_tokens)
            metrics.COST.labels(endpoint.name).inc(usage.cost_usd)
            metrics.CALL_SECONDS.labels(endpoint.name, request.role).observe(
                time.monotonic() - started
            )
            try:
                value = parse(completion)
            except InvalidOutput as exc:
                metrics.INVALID_OUTPUTS.labels(request.role, exc.reason).inc()
                metrics.CALLS.labels(endpoint.name, request.role, exc.reason).inc()
                raise
            metrics.CALLS.labels(endpoint.name, request.role, "ok").inc()
            log.info(
                "llm call role=%s endpoint=%s outcome=ok attempts=%d tokens=%d+%d latency_ms=%.1f",
                request.role,
                endpoint.name,
                usage.attempts,
                usage.prompt_tokens,
                usage.completion_tokens,
                (time.monotonic() - started) * 1000,
            )
            return value, usage, completion.content
        await self.budget.settle(reservation, 0, 0.0)
        if refusals and len(refusals) == len(self.endpoints):
            # Nothing was sent: refuse with the soonest retry hint.
            soonest = min(
                refusals, key=lambda e: e.retry_after if e.retry_after is not None else 1e9
            )
            raise soonest
        if deadline.expired:
            raise DeadlineExceeded("deadline passed before any endpoint answered") from last
        raise AllEndpointsFailed(
            "every LLM endpoint failed", retry_after=getattr(last, "retry_after", None)
        ) from last


def _redacted(message: Mapping[str, str]) -> dict[str, str]:
    """System prompts are ours; everything else is redacted once more on the way out."""
    content = message["content"]
    if message["role"] != "system":
        cleaned = redact(content)
        if cleaned != content:
            metrics.REDACTIONS.inc()
        content = cleaned
    return {"role": message["role"], "content": content}
