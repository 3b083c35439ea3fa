"""Plausibility of decoded input: what the schema cannot know. Pure, no I/O.

The JSON Schemas say what is well-formed; these checks say what is believable
for this deployment, and refuse the rest (to the dead-letter topic, with the
reason) before anything reaches state:

* the Kafka key must name the payload's own subject (a user's events keyed by
  another user would be written to the wrong user's partition order and state);
* timestamps must lie between a floor (by default 1990, so MovieLens-100k's
  1997-98 events pass while ``0`` and timestamps in *seconds* do not) and a
  small skew into the future;
* ratings must lie on the deployment's scale (1-5 by default, MovieLens's).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from contracts import DecodeError, Event, Interaction, topics

__all__ = ["KEY_FIELD", "Plausibility", "check_plausible"]

# The payload field each topic's Kafka key must equal.
KEY_FIELD: Final[dict[str, str]] = {
    topics.INTERACTIONS: "user_id",
    topics.REQUESTS: "user_id",
    topics.CATALOG: "item_id",
    topics.CHAT: "session_id",
    topics.LLM_WORK: "user_id",
    topics.RECOMMENDATIONS: "user_id",
}


@dataclass(frozen=True, slots=True)
class Plausibility:
    # 1990-01-01T00:00:00Z: before any event this system will see, after any
    # timestamp written in seconds by mistake (those read as January 1970).
    ts_floor_ms: int = 631_152_000_000
    max_future_skew_ms: int = 3_600_000
    rating_min: float = 1.0
    rating_max: float = 5.0


def check_plausible(
    topic: str, key: bytes | None, event: Event, limits: Plausibility, *, now_ms: int
) -> None:
    """Raise :class:`DecodeError` (naming the field) for an implausible event."""
    schema = type(event).SCHEMA
    key_field = KEY_FIELD.get(topic)
    if key_field is not None:
        expected = getattr(event, key_field)
        if key is None:
            raise DecodeError(schema, "$key", f"missing Kafka key (must be the {key_field})")
        if key != expected.encode():
            raise DecodeError(schema, "$key", f"Kafka key differs from the payload's {key_field}")
    ts = getattr(event, "ts_ms", None)
    if isinstance(ts, int) and topic in topics.INPUT_TOPICS:
        if ts < limits.ts_floor_ms:
            raise DecodeError(
                schema,
                "ts_ms",
                f"timestamp {ts} is before the floor {limits.ts_floor_ms} "
                "(milliseconds since the epoch expected; seconds?)",
            )
        if ts > now_ms + limits.max_future_skew_ms:
            raise DecodeError(schema, "ts_ms", "timestamp is in the future")
    rating = event.rating if isinstance(event, Interaction) else None
    if rating is not None and not limits.rating_min <= rating <= limits.rating_max:
        raise DecodeError(
            schema,
            "rating",
            f"rating {rating} is off the scale {limits.rating_min}-{limits.rating_max}",
        )
