"""Topic names, one per contract, and the size limit of each input payload.

Deployments may add a prefix (``RECSTREAM_TOPIC_PREFIX``) so that several
environments or test runs share one cluster; the names here are the suffixes.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "ALL_TOPICS",
    "CATALOG",
    "CHAT",
    "CHAT_REPLIES",
    "DEAD_LETTERS",
    "EXPLANATIONS",
    "INPUT_TOPICS",
    "INTERACTIONS",
    "INTERNAL_TOPICS",
    "LLM_WORK",
    "OUTPUT_TOPICS",
    "RECOMMENDATIONS",
    "REQUESTS",
]

INTERACTIONS: Final = "interactions"
CATALOG: Final = "catalog"
CHAT: Final = "chat"
REQUESTS: Final = "requests"
RECOMMENDATIONS: Final = "recommendations"
EXPLANATIONS: Final = "explanations"
CHAT_REPLIES: Final = "chat-replies"
DEAD_LETTERS: Final = "dead-letters"
# Internal: asks the requests role routes to the llm role (never produced by users).
LLM_WORK: Final = "llm-work"

INPUT_TOPICS: Final = (INTERACTIONS, CATALOG, CHAT, REQUESTS)
OUTPUT_TOPICS: Final = (RECOMMENDATIONS, EXPLANATIONS, CHAT_REPLIES, DEAD_LETTERS)
INTERNAL_TOPICS: Final = (LLM_WORK,)
ALL_TOPICS: Final = INPUT_TOPICS + OUTPUT_TOPICS + INTERNAL_TOPICS
