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

``LLMTestServer`` (workers.testing.llm_server) is the OpenAI-compatible test
double used by the tests and the benchmark; it is not a model.
"""

from workers.llm.breaker import BreakerState, CircuitBreaker
from workers.llm.deadline import Deadline, DeadlineLike
from workers.llm.errors import (
    AllEndpointsFailed,
    BudgetExceeded,
    CircuitOpen,
    DeadlineExceeded,
    InvalidOutput,
    LLMError,
    LLMNotConfigured,
    PromptTooLarge,
    RateLimited,
    Refused,
    ResponseTooLarge,
    UnsafeOutput,
    UpstreamError,
)
from workers.llm.pool import ChatRequest, Completion, LLMPool, Usage
from workers.llm.prompts import (
    ALL_ROLES,
    AspectExplanation,
    ChatState,
    ComparativeExplanation,
    ConversationState,
    Fact,
    GroundedExplanation,
    Intent,
    Item,
    ItemFeatures,
    PairwiseResult,
    Preferences,
    RankResult,
    RoleSpec,
    Turn,
    UserContext,
)
from workers.llm.roles import LLM, BatchStats
from workers.llm.safety import LeakGuard, clean_text, fence, redact
from workers.llm.settings import EndpointSettings, LLMSettings

__all__ = [
    "ALL_ROLES",
    "LLM",
    "AllEndpointsFailed",
    "AspectExplanation",
    "BatchStats",
    "BreakerState",
    "BudgetExceeded",
    "ChatRequest",
    "ChatState",
    "CircuitBreaker",
    "CircuitOpen",
    "ComparativeExplanation",
    "Completion",
    "ConversationState",
    "Deadline",
    "DeadlineExceeded",
    "DeadlineLike",
    "EndpointSettings",
    "Fact",
    "GroundedExplanation",
    "Intent",
    "InvalidOutput",
    "Item",
    "ItemFeatures",
    "LLMError",
    "LLMNotConfigured",
    "LLMPool",
    "LLMSettings",
    "LeakGuard",
    "PairwiseResult",
    "Preferences",
    "PromptTooLarge",
    "RankResult",
    "RateLimited",
    "Refused",
    "ResponseTooLarge",
    "RoleSpec",
    "Turn",
    "UnsafeOutput",
    "UpstreamError",
    "Usage",
    "UserContext",
    "clean_text",
    "fence",
    "redact",
]
