"""The LLM path: one pool where every LLM call happens, and typed role helpers over it.

Callers ask for a validated result with a deadline and get either that result
or a fast, typed refusal to fall back on (every error has ``retriable`` and,
where known, ``retry_after``)::

    from workers.llm import LLM, LLMError, LLMPool, Item, UserContext

    async with LLMPool(settings.llm, redis=redis) as pool:
        llm = LLM(pool)
        try:
            ranked = await llm.rerank(
                UserContext(history=history_items, query="something light"),
                candidates, k=10, deadline=0.8,          # seconds, or a Deadline
            )
            use(ranked.item_ids, ranked.usage.cost_usd)
        except LLMError as exc:                         # BudgetExceeded, CircuitOpen,
            fall_back(reason=exc.reason)                # RateLimited, DeadlineExceeded,
                                                        # InvalidOutput, ...

What the pool promises: limits per endpoint (requests and tokens per window,
shared through Redis by all replicas), a concurrency bound, timeouts,
retries that honour Retry-After with backoff and jitter, a circuit breaker,
fallback to the next endpoint, a token/cost budget that refuses at once, a
response cache with single-flight, PII redaction before anything leaves, and
no wait past the caller's deadline. What the role helpers promise: a frozen
result whose item ids come from the candidate set, whose text is plain,
capped and free of the canary, after at most one repair attempt.

The public surface is the names below; the rest lives in submodules by job:
``errors`` (the error tree: BudgetExceeded, RateLimited, ...), ``prompts``
(role specs and typed results), ``safety``, ``grounding``, ``pii``,
``normalize`` (output and PII defences), ``breaker``, ``limits``, ``budget``,
``cache``, ``deadline``, ``metrics``.

``LLMTestServer`` (workers.testing.llm_server) is the OpenAI-compatible test
double used by the tests and the benchmark; it is not a model.
"""

from workers.llm.deadline import Deadline
from workers.llm.errors import LLMError
from workers.llm.pool import LLMPool, Usage
from workers.llm.prompts import Fact, Item, Preferences, Turn, UserContext
from workers.llm.roles import LLM
from workers.llm.settings import EndpointSettings, LLMSettings

__all__ = [
    "LLM",
    "Deadline",
    "EndpointSettings",
    "Fact",
    "Item",
    "LLMError",
    "LLMPool",
    "LLMSettings",
    "Preferences",
    "Turn",
    "Usage",
    "UserContext",
]
