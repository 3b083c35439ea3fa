"""Prometheus metrics of the LLM path (registered once, in the default registry)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

__all__ = [
    "BATCH_TOKENS_SAVED",
    "BREAKER_STATE",
    "CACHE",
    "CALLS",
    "CALL_SECONDS",
    "COST",
    "INVALID_OUTPUTS",
    "LIMITER_WAIT",
    "REDACTIONS",
    "REFUSALS",
    "RETRIES",
    "TOKENS",
]

CALLS = Counter("recstream_llm_calls", "LLM calls by outcome", ["endpoint", "role", "outcome"])
TOKENS = Counter("recstream_llm_tokens", "Tokens used, from responses", ["endpoint", "kind"])
COST = Counter("recstream_llm_cost_usd", "Estimated cost in USD, from usage", ["endpoint"])
CACHE = Counter("recstream_llm_cache", "Response cache lookups", ["result"])
RETRIES = Counter("recstream_llm_retries", "Retried attempts by reason", ["endpoint", "reason"])
BREAKER_STATE = Gauge(
    "recstream_llm_breaker_state", "Circuit breaker: 0 closed, 1 half-open, 2 open", ["endpoint"]
)
LIMITER_WAIT = Histogram(
    "recstream_llm_limiter_wait_seconds",
    "Time spent waiting for the rate limiter",
    ["endpoint"],
    buckets=(0.001, 0.01, 0.05, 0.1, 0.5, 1, 2, 5, 10, 30),
)
CALL_SECONDS = Histogram(
    "recstream_llm_call_seconds",
    "Wall time of LLM calls that reached an endpoint",
    ["endpoint", "role"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30),
)
REFUSALS = Counter("recstream_llm_refusals", "Calls refused without an answer", ["reason"])
INVALID_OUTPUTS = Counter(
    "recstream_llm_invalid_outputs", "Model outputs rejected by validation", ["role", "reason"]
)
BATCH_TOKENS_SAVED = Counter(
    "recstream_llm_batch_tokens_saved",
    "Prompt tokens saved by batching small tasks (estimate vs. separate calls)",
    ["role"],
)
REDACTIONS = Counter("recstream_llm_redactions", "Prompts in which personal data was redacted")
