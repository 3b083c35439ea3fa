"""Errors of the LLM path: a validated answer or one of these, fast.

Every class carries ``retriable`` (may the same call succeed later?) and most
carry ``retry_after`` (seconds, or ``None`` when unknown), so a caller can
decide between "fall back now" and "try again at t+x". Messages never contain
prompt text, model output or personal data; they are safe to log.

    LLMError (workers.errors)             retriable
    ├── LLMNotConfigured                  no   no endpoint configured
    ├── Refused                           yes  refused before anything was sent
    │   ├── BudgetExceeded                yes  token/cost budget spent for the window
    │   ├── RateLimited                   yes  limiter wait would pass the deadline
    │   ├── CircuitOpen                   yes  every endpoint's breaker is open
    │   └── PromptTooLarge                no   cannot fit the per-call token budget
    ├── DeadlineExceeded                  yes  the caller's deadline passed
    ├── UpstreamError                     yes  transport error, timeout, 429, 5xx
    │   └── AllEndpointsFailed            yes  every endpoint failed (last cause chained)
    └── InvalidOutput                     no   output failed validation (after one repair)
        ├── ResponseTooLarge              no   body or content over the size cap
        └── UnsafeOutput                  no   markup/script or a leaked secret in output
"""

from __future__ import annotations

from workers.errors import LLMError

__all__ = [
    "AllEndpointsFailed",
    "BudgetExceeded",
    "CircuitOpen",
    "DeadlineExceeded",
    "InvalidOutput",
    "LLMError",
    "LLMNotConfigured",
    "PromptTooLarge",
    "RateLimited",
    "Refused",
    "ResponseTooLarge",
    "UnsafeOutput",
    "UpstreamError",
]


class _LLMError(LLMError):
    """Shared constructor: a reason code (for metrics) and an optional retry hint."""

    #: short machine-readable reason, used as a metrics label
    reason: str = "error"

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class LLMNotConfigured(_LLMError):
    """No endpoint is configured: every LLM path must fall back."""

    retriable = False
    reason = "not_configured"


class Refused(_LLMError):
    """Refused before anything was sent upstream (costs nothing)."""

    retriable = True
    reason = "refused"


class BudgetExceeded(Refused):
    """The token or cost budget of the current minute/hour is spent."""

    reason = "budget"


class RateLimited(Refused):
    """The rate limiter would make the caller wait past its deadline."""

    reason = "rate_limited"


class CircuitOpen(Refused):
    """The breaker of every usable endpoint is open."""

    reason = "circuit_open"


class PromptTooLarge(Refused):
    """The prompt cannot be compressed into the per-call or per-window token limit."""

    retriable = False
    reason = "prompt_too_large"


class DeadlineExceeded(_LLMError):
    """The caller's deadline passed before an answer arrived."""

    retriable = True
    reason = "deadline"


class UpstreamError(_LLMError):
    """The endpoint failed: transport error, timeout, 429 or 5xx after retries."""

    retriable = True
    reason = "upstream"

    def __init__(
        self, message: str, *, status: int | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message, retry_after=retry_after)
        self.status = status


class AllEndpointsFailed(UpstreamError):
    """Every endpoint was tried and failed; ``__cause__`` is the last failure."""

    reason = "all_endpoints_failed"


class InvalidOutput(_LLMError):
    """The model's output did not pass validation, even after one repair attempt."""

    retriable = False
    reason = "invalid_output"


class ResponseTooLarge(InvalidOutput):
    """The response body or the message content is over its size cap."""

    reason = "too_large"


class UnsafeOutput(InvalidOutput):
    """The output carried active markup or leaked a secret (canary, system prompt)."""

    reason = "unsafe_output"
