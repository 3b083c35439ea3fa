"""Python types of the event contracts.

Each class mirrors one JSON Schema in ``contracts/schemas`` (the schema files
are the source of truth; ``tests/contracts`` keeps the two in agreement). The
classes are immutable; ``from_dict`` expects a payload the schema already
accepted, and ``None`` stands for an optional field that is absent or null.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Literal

__all__ = [
    "AttributeValue",
    "CatalogChange",
    "Cause",
    "ChatMessage",
    "ChatReply",
    "DeadLetter",
    "Event",
    "Evidence",
    "Explanation",
    "Interaction",
    "InteractionKind",
    "LLMUsage",
    "LLMWork",
    "RankedItem",
    "Recommendation",
    "RecommendationRequest",
    "Rung",
    "Strategy",
]

InteractionKind = Literal["view", "click", "add_to_cart", "purchase", "rating", "skip"]
Strategy = Literal["model", "llm", "hybrid", "popular", "fresh"]
# The fallback ladder: which rung answered a cause.
Rung = Literal["llm", "llm_cached", "model", "popular", "fresh"]
Scalar = str | int | float | bool
AttributeValue = str | int | float | bool | tuple[str, ...]


def _frozen_mapping(value: dict[str, Any] | None) -> dict[str, Any] | None:
    return dict(value) if value is not None else None


class Event:
    """Base of all contract types; ``SCHEMA`` names the schema file's stem."""

    SCHEMA: ClassVar[str]
    VERSION: ClassVar[int] = 1

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Any:  # pragma: no cover - overridden
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        """The payload as a JSON-ready dict, ``v`` included."""
        raise NotImplementedError  # pragma: no cover - overridden


# ----------------------------------------------------------------- inputs


@dataclass(frozen=True, slots=True)
class Interaction(Event):
    """A user did something with an item (topic ``interactions``, key user_id)."""

    SCHEMA: ClassVar[str] = "interaction"

    event_id: str
    user_id: str
    item_id: str
    kind: InteractionKind
    ts_ms: int
    rating: float | None = None
    context: dict[str, Scalar] | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Interaction:
        return cls(
            event_id=data["event_id"],
            user_id=data["user_id"],
            item_id=data["item_id"],
            kind=data["kind"],
            ts_ms=data["ts_ms"],
            rating=data.get("rating"),
            context=_frozen_mapping(data.get("context")),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "v": self.VERSION,
            "event_id": self.event_id,
            "user_id": self.user_id,
            "item_id": self.item_id,
            "kind": self.kind,
            "rating": self.rating,
            "ts_ms": self.ts_ms,
            "context": self.context,
        }


@dataclass(frozen=True, slots=True)
class CatalogChange(Event):
    """An item was upserted or deleted (topic ``catalog``, key item_id)."""

    SCHEMA: ClassVar[str] = "catalog"

    event_id: str
    item_id: str
    op: Literal["upsert", "delete"]
    ts_ms: int
    title: str | None = None
    description: str | None = None
    attributes: dict[str, AttributeValue] | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CatalogChange:
        attributes = data.get("attributes")
        return cls(
            event_id=data["event_id"],
            item_id=data["item_id"],
            op=data["op"],
            ts_ms=data["ts_ms"],
            title=data.get("title"),
            description=data.get("description"),
            attributes=(
                {k: tuple(v) if isinstance(v, list) else v for k, v in attributes.items()}
                if attributes is not None
                else None
            ),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "v": self.VERSION,
            "event_id": self.event_id,
            "item_id": self.item_id,
            "op": self.op,
            "title": self.title,
            "description": self.description,
            "attributes": (
                {k: list(v) if isinstance(v, tuple) else v for k, v in self.attributes.items()}
                if self.attributes is not None
                else None
            ),
            "ts_ms": self.ts_ms,
        }


@dataclass(frozen=True, slots=True)
class ChatMessage(Event):
    """A user's message in a conversational session (topic ``chat``, key session_id)."""

    SCHEMA: ClassVar[str] = "chat"

    event_id: str
    session_id: str
    user_id: str
    text: str
    ts_ms: int

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ChatMessage:
        return cls(
            event_id=data["event_id"],
            session_id=data["session_id"],
            user_id=data["user_id"],
            text=data["text"],
            ts_ms=data["ts_ms"],
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "v": self.VERSION,
            "event_id": self.event_id,
            "session_id": self.session_id,
            "user_id": self.user_id,
            "text": self.text,
            "ts_ms": self.ts_ms,
        }


@dataclass(frozen=True, slots=True)
class RecommendationRequest(Event):
    """ "Recommend k items for this user now" (topic ``requests``, key user_id)."""

    SCHEMA: ClassVar[str] = "request"

    request_id: str
    user_id: str
    k: int
    ts_ms: int
    context: dict[str, Scalar] | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RecommendationRequest:
        return cls(
            request_id=data["request_id"],
            user_id=data["user_id"],
            k=data["k"],
            ts_ms=data["ts_ms"],
            context=_frozen_mapping(data.get("context")),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "v": self.VERSION,
            "request_id": self.request_id,
            "user_id": self.user_id,
            "k": self.k,
            "context": self.context,
            "ts_ms": self.ts_ms,
        }


# ---------------------------------------------------------------- outputs


@dataclass(frozen=True, slots=True)
class RankedItem:
    """One recommended item: its id, score, 1-based rank and candidate source."""

    item_id: str
    score: float
    rank: int
    source: str | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RankedItem:
        return cls(data["item_id"], data["score"], data["rank"], data.get("source"))

    def to_dict(self) -> dict[str, Any]:
        return {
            "item_id": self.item_id,
            "score": self.score,
            "rank": self.rank,
            "source": self.source,
        }


@dataclass(frozen=True, slots=True)
class Cause:
    """What an output answers: a request, an interaction or a chat message."""

    kind: Literal["request", "interaction", "chat"]
    id: str


@dataclass(frozen=True, slots=True)
class LLMUsage:
    """Whether an LLM took part in an output, and what it cost."""

    used: bool = False
    model: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "used": self.used,
            "model": self.model,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cost_usd": self.cost_usd,
        }


@dataclass(frozen=True, slots=True)
class Recommendation(Event):
    """Ranked items for a user (topic ``recommendations``, key user_id)."""

    SCHEMA: ClassVar[str] = "recommendation"

    rec_id: str
    user_id: str
    cause: Cause
    items: tuple[RankedItem, ...]
    strategy: Strategy
    model_version: str
    ts_ms: int
    llm: LLMUsage = field(default_factory=LLMUsage)
    timings_ms: dict[str, float] = field(default_factory=dict)
    route: str | None = None
    reason: str | None = None
    rung: Rung | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Recommendation:
        llm = data["llm"]
        return cls(
            route=data.get("route"),
            reason=data.get("reason"),
            rung=data.get("rung"),
            rec_id=data["rec_id"],
            user_id=data["user_id"],
            cause=Cause(data["cause"]["kind"], data["cause"]["id"]),
            items=tuple(RankedItem.from_dict(i) for i in data["items"]),
            strategy=data["strategy"],
            model_version=data["model_version"],
            ts_ms=data["ts_ms"],
            llm=_llm_usage(llm),
            timings_ms=dict(data["timings_ms"]),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "v": self.VERSION,
            "rec_id": self.rec_id,
            "user_id": self.user_id,
            "cause": {"kind": self.cause.kind, "id": self.cause.id},
            "items": [i.to_dict() for i in self.items],
            "strategy": self.strategy,
            "model_version": self.model_version,
            "llm": self.llm.to_dict(),
            "timings_ms": self.timings_ms,
            "route": self.route,
            "reason": self.reason,
            "rung": self.rung,
            "ts_ms": self.ts_ms,
        }


def _llm_usage(data: dict[str, Any]) -> LLMUsage:
    return LLMUsage(
        used=data["used"],
        model=data.get("model"),
        prompt_tokens=data.get("prompt_tokens", 0),
        completion_tokens=data.get("completion_tokens", 0),
        cost_usd=data.get("cost_usd", 0.0),
    )


@dataclass(frozen=True, slots=True)
class LLMWork(Event):
    """Internal: an ask routed to the llm role (topic ``llm-work``, key user_id).

    Carries everything the llm role needs to answer on its own: the candidates
    to rank, the user's stated context, the deadline, and the fallback list
    the requests role computed, emitted as-is if the LLM cannot answer in time.
    """

    SCHEMA: ClassVar[str] = "llm_work"

    work_id: str
    user_id: str
    cause: Cause
    k: int
    deadline_ms: int
    route: str
    reason: str
    candidates: tuple[str, ...]
    fallback_items: tuple[RankedItem, ...]
    fallback_rung: Literal["model", "popular", "fresh"]
    model_version: str
    ts_ms: int
    query: str | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LLMWork:
        return cls(
            work_id=data["work_id"],
            user_id=data["user_id"],
            cause=Cause(data["cause"]["kind"], data["cause"]["id"]),
            k=data["k"],
            deadline_ms=data["deadline_ms"],
            route=data["route"],
            reason=data["reason"],
            candidates=tuple(data["candidates"]),
            fallback_items=tuple(RankedItem.from_dict(i) for i in data["fallback_items"]),
            fallback_rung=data["fallback_rung"],
            model_version=data["model_version"],
            ts_ms=data["ts_ms"],
            query=data.get("query"),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "v": self.VERSION,
            "work_id": self.work_id,
            "user_id": self.user_id,
            "cause": {"kind": self.cause.kind, "id": self.cause.id},
            "k": self.k,
            "deadline_ms": self.deadline_ms,
            "route": self.route,
            "reason": self.reason,
            "query": self.query,
            "candidates": list(self.candidates),
            "fallback_items": [i.to_dict() for i in self.fallback_items],
            "fallback_rung": self.fallback_rung,
            "model_version": self.model_version,
            "ts_ms": self.ts_ms,
        }


@dataclass(frozen=True, slots=True)
class Evidence:
    """A fact an explanation rests on: a history item, an attribute, popularity..."""

    kind: Literal["history_item", "attribute", "popularity", "recency", "similar_users"]
    item_id: str | None = None
    name: str | None = None
    value: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "item_id": self.item_id, "name": self.name, "value": self.value}


@dataclass(frozen=True, slots=True)
class Explanation(Event):
    """Why one recommended item was recommended (topic ``explanations``)."""

    SCHEMA: ClassVar[str] = "explanation"

    explanation_id: str
    rec_id: str
    user_id: str
    item_id: str
    text: str
    evidence: tuple[Evidence, ...]
    source: Literal["llm", "template"]
    ts_ms: int

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Explanation:
        return cls(
            explanation_id=data["explanation_id"],
            rec_id=data["rec_id"],
            user_id=data["user_id"],
            item_id=data["item_id"],
            text=data["text"],
            evidence=tuple(
                Evidence(e["kind"], e.get("item_id"), e.get("name"), e.get("value"))
                for e in data["evidence"]
            ),
            source=data["source"],
            ts_ms=data["ts_ms"],
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "v": self.VERSION,
            "explanation_id": self.explanation_id,
            "rec_id": self.rec_id,
            "user_id": self.user_id,
            "item_id": self.item_id,
            "text": self.text,
            "evidence": [e.to_dict() for e in self.evidence],
            "source": self.source,
            "ts_ms": self.ts_ms,
        }


@dataclass(frozen=True, slots=True)
class ChatReply(Event):
    """The assistant's reply in a session (topic ``chat-replies``, key session_id)."""

    SCHEMA: ClassVar[str] = "chat_reply"

    reply_id: str
    session_id: str
    user_id: str
    in_reply_to: str
    text: str
    items: tuple[RankedItem, ...]
    source: Literal["llm", "model", "template"]
    ts_ms: int
    intent: str | None = None
    reason: str | None = None
    state: str | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ChatReply:
        return cls(
            reply_id=data["reply_id"],
            session_id=data["session_id"],
            user_id=data["user_id"],
            in_reply_to=data["in_reply_to"],
            text=data["text"],
            items=tuple(RankedItem.from_dict(i) for i in data["items"]),
            source=data["source"],
            ts_ms=data["ts_ms"],
            intent=data.get("intent"),
            reason=data.get("reason"),
            state=data.get("state"),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "v": self.VERSION,
            "reply_id": self.reply_id,
            "session_id": self.session_id,
            "user_id": self.user_id,
            "in_reply_to": self.in_reply_to,
            "text": self.text,
            "items": [i.to_dict() for i in self.items],
            "intent": self.intent,
            "reason": self.reason,
            "state": self.state,
            "source": self.source,
            "ts_ms": self.ts_ms,
        }


@dataclass(frozen=True, slots=True)
class DeadLetter(Event):
    """An input event that was refused, and why (topic ``dead-letters``)."""

    SCHEMA: ClassVar[str] = "dead_letter"

    dead_letter_id: str
    source_topic: str
    partition: int
    offset: int
    key_b64: str | None
    payload_b64: str
    payload_size: int
    payload_truncated: bool
    error_type: str
    field: str | None
    reason: str
    ts_ms: int

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DeadLetter:
        return cls(**{f.name: data[f.name] for f in fields(cls)})

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"v": self.VERSION}
        out.update({f.name: getattr(self, f.name) for f in fields(self)})
        return out
