"""The serving policy: which path answers an ask, and why. Pure: no I/O.

``decide`` looks at what is asked (a request, a triggered list, a chat
message), the user's state and whether an LLM path is available, and returns
a :class:`Decision`: the route and a one-line reason that goes on the output
event. The seed's *selective* pattern: the model serves warm users (and cold
users with a history of one or two items, where it measured better than
popularity); popularity serves users with no history; the LLM
is reached only where it is worth its cost (a cold user who told us what they
want, a chat message too complex for rules), and every LLM route has a
cheaper rung below it.

``chat_complexity`` is the cheap check that decides whether a chat message
needs the LLM: rules (length, clauses, negations, comparisons, references to
other items) plus, when the caller has it, the message's similarity to
exemplar complex queries in the text-embedding space. No LLM call.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final, Literal

__all__ = [
    "AskKind",
    "ChatComplexity",
    "Decision",
    "PolicySettings",
    "Route",
    "chat_complexity",
    "decide",
    "is_cold",
]

AskKind = Literal["request", "interaction", "chat"]
Route = Literal["model", "popular", "llm_cold", "chat_rules", "chat_llm"]


@dataclass(frozen=True, slots=True)
class PolicySettings:
    """The policy's knobs (built from StreamSettings and the LLM settings)."""

    # Users with fewer interactions than this are cold.
    cold_threshold: int = 3
    # An LLM endpoint is configured and the LLM roles are expected to run.
    llm_available: bool = False
    llm_cold_start: bool = True
    llm_chat: bool = True
    # A stated context shorter than this carries too little to rank on.
    min_query_chars: int = 8
    # chat_complexity score at or above which a chat message goes to the LLM.
    chat_complex_at: float = 0.5


@dataclass(frozen=True, slots=True)
class Decision:
    route: Route
    reason: str

    @property
    def uses_llm(self) -> bool:
        return self.route in {"llm_cold", "chat_llm"}


def is_cold(interactions: int, history_len: int, settings: PolicySettings) -> bool:
    return interactions < settings.cold_threshold or history_len == 0


def decide(
    kind: AskKind,
    *,
    interactions: int,
    history_len: int,
    query: str | None,
    settings: PolicySettings,
    chat: ChatComplexity | None = None,
) -> Decision:
    """The route for one ask (see the module docstring)."""
    cold = is_cold(interactions, history_len, settings)
    who = (
        f"cold user ({interactions} < {settings.cold_threshold} interactions)"
        if cold
        else f"warm user ({interactions} interactions)"
    )
    if kind == "chat":
        complexity = chat or ChatComplexity(0.0, ())
        if complexity.score >= settings.chat_complex_at:
            why = f"complex message ({', '.join(complexity.signals) or 'similar to complex asks'})"
            if settings.llm_available and settings.llm_chat:
                return Decision("chat_llm", f"{why}; {who}")
            return Decision("chat_rules", f"{why}, but the LLM is off; {who}")
        return Decision("chat_rules", f"simple message; {who}")
    if not cold:
        return Decision("model", who)
    stated = (query or "").strip()
    # A cold user with a history of one or two items is better served by the
    # model than by popularity: on 300 MovieLens users held out of training and
    # cut to their first 1-3 items, NDCG@10 0.160 against 0.129, HR@10 0.307
    # against 0.287 (benchmarks/cold_users_model.py, docs/llm-paths.md). With
    # no history at all the model has nothing to read: popularity.
    fallback: Route = "model" if history_len > 0 else "popular"
    if kind == "interaction":
        # Triggered lists are frequent and nobody waits on them: never the LLM.
        return Decision(fallback, f"{who}; triggered list")
    if len(stated) < settings.min_query_chars:
        return Decision(fallback, f"{who} without stated context")
    if not settings.llm_available:
        return Decision("popular", f"{who} with stated context, but no LLM is configured")
    if not settings.llm_cold_start:
        return Decision("popular", f"{who} with stated context; LLM cold-start is off")
    return Decision("llm_cold", f"{who} with stated context")


# --- chat complexity -----------------------------------------------------------

_NEGATION: Final = re.compile(
    r"\b(not|no|never|without|don'?t|doesn'?t|isn'?t|except|avoid|hate|dislike)\b", re.I
)
_COMPARISON: Final = re.compile(
    r"\b(like|similar to|more|less|than|but|instead|rather|compared|versus|vs)\b", re.I
)
_CONSTRAINT: Final = re.compile(
    r"\b(for|with|from|before|after|under|over|between|about|where|when|who)\b", re.I
)
_QUESTION: Final = re.compile(r"\b(why|how|which|what|explain|difference)\b", re.I)
_CLAUSE: Final = re.compile(r"[,;]|\b(and|or|but|while|although)\b", re.I)


@dataclass(frozen=True, slots=True)
class ChatComplexity:
    """0..1, and the signals that raised it (for the reason on the reply)."""

    score: float
    signals: tuple[str, ...]


def chat_complexity(text: str, *, exemplar_similarity: float | None = None) -> ChatComplexity:
    """How much a chat message needs an LLM; cheap rules plus optional embedding signal.

    Each rule adds a share; ``exemplar_similarity`` (cosine to the nearest
    exemplar complex query, when the caller computed one) adds up to 0.4.
    Short, single-clause asks ("something funny") stay below 0.5.
    """
    words = text.split()
    signals: list[str] = []
    score = 0.0
    if len(words) >= 18:
        score += 0.25
        signals.append("long")
    clauses = len(_CLAUSE.findall(text))
    if clauses >= 2:
        score += 0.2
        signals.append(f"{clauses} clauses")
    if _NEGATION.search(text):
        score += 0.2
        signals.append("negation")
    if _COMPARISON.search(text):
        score += 0.15
        signals.append("comparison")
    if len(_CONSTRAINT.findall(text)) >= 2:
        score += 0.15
        signals.append("constraints")
    if _QUESTION.search(text):
        # Why/how/which questions need reasoning over the items, not a lookup.
        score += 0.3
        signals.append("question")
    if exemplar_similarity is not None and exemplar_similarity > 0.5:
        score += min(0.4, (exemplar_similarity - 0.5) * 0.8)
        signals.append(f"like complex asks ({exemplar_similarity:.2f})")
    return ChatComplexity(round(min(score, 1.0), 3), tuple(signals))
