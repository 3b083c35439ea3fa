"""Token estimates and prompt compression.

The estimate (UTF-8 bytes / 4, plus a few tokens of per-message framing) is
what the limiters reserve before sending, and what the LLM test server counts,
so the two agree exactly; real usage from responses feeds the budget and the
metrics. Compression works on the structured inputs of a prompt (candidate
descriptions, history, chat text), never on the instructions.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping, Sequence

__all__ = [
    "estimate_messages",
    "estimate_request",
    "estimate_tokens",
    "fit_texts",
    "normalise_text",
    "truncate_to_tokens",
]

# Per-message framing of the chat format (role, separators), as in OpenAI's cookbook.
_MESSAGE_OVERHEAD = 4
_REPLY_PRIMING = 3
_BYTES_PER_TOKEN = 4
_WS = re.compile(r"\s+")
ELLIPSIS = "…"


def estimate_tokens(text: str) -> int:
    """Rough token count of ``text``: ~4 UTF-8 bytes per token, rounded up."""
    return -(-len(text.encode("utf-8")) // _BYTES_PER_TOKEN)


def estimate_messages(messages: Sequence[Mapping[str, str]]) -> int:
    return _REPLY_PRIMING + sum(
        _MESSAGE_OVERHEAD + estimate_tokens(m.get("content", "")) for m in messages
    )


def estimate_request(messages: Sequence[Mapping[str, str]], max_tokens: int) -> int:
    """Tokens a request counts against a tokens-per-minute limit.

    Providers count the prompt plus the requested ``max_tokens`` when the
    request arrives (the completion is not known yet), so the limiter does too.
    """
    return estimate_messages(messages) + max_tokens


def normalise_text(text: str) -> str:
    """NFC, whitespace collapsed, trimmed: the form prompts are hashed and sent in."""
    return _WS.sub(" ", unicodedata.normalize("NFC", text)).strip()


def truncate_to_tokens(text: str, max_tokens: int) -> str:
    """Cut ``text`` to about ``max_tokens``, at a word boundary, marking the cut."""
    if estimate_tokens(text) <= max_tokens:
        return text
    if max_tokens <= 0:
        return ""
    budget = max_tokens * _BYTES_PER_TOKEN - len(ELLIPSIS.encode())
    cut = text.encode("utf-8")[: max(budget, 0)].decode("utf-8", errors="ignore")
    space = cut.rfind(" ")
    if space > len(cut) // 2:
        cut = cut[:space]
    return cut.rstrip() + ELLIPSIS


def fit_texts(texts: Sequence[str], budget: int) -> list[str]:
    """Truncate the longest texts first so that together they fit ``budget`` tokens.

    Water-filling: find the largest per-text cap ``c`` with
    ``sum(min(len_i, c)) <= budget`` and cut every text to ``c``. Short texts
    stay whole; only the long tail pays. Returns the texts unchanged if they fit.
    """
    sizes = [estimate_tokens(t) for t in texts]
    if sum(sizes) <= budget:
        return list(texts)
    lo, hi = 0, max(sizes, default=0)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if sum(min(s, mid) for s in sizes) <= budget:
            lo = mid
        else:
            hi = mid - 1
    return [t if s <= lo else truncate_to_tokens(t, lo) for t, s in zip(texts, sizes, strict=True)]
