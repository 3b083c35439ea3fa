"""Constants of the recommendation logic, each with why it has its value."""

from __future__ import annotations

from typing import Final

from contracts import InteractionKind

# SASRec attends over the last 50 items (A-LLMRec's maxlen), so that is all the
# history scoring ever reads; a few more keep exclusion of consumed items useful.
HISTORY_MAX: Final = 200

# Event ids are remembered per user for a week: long enough to cover any
# realistic Kafka replay (retention, a rewound consumer group), short enough to
# bound memory. The count cap bounds a pathological user.
DEDUPE_TTL_MS: Final = 7 * 24 * 3600 * 1000
DEDUPE_MAX_PER_USER: Final = 20_000

# Integer weights (milli-units are unnecessary: small integers suffice) keep
# affinity sums exact, so replays and offline recomputation agree bit for bit.
KIND_WEIGHT: Final[dict[InteractionKind, int]] = {
    "view": 1,
    "click": 2,
    "add_to_cart": 3,
    "purchase": 5,
    "rating": 0,  # replaced by rating_weight()
    "skip": -1,
}

# Kinds that put the item into the user's history (a skip is a negative signal,
# not a consumption).
HISTORY_KINDS: Final[frozenset[str]] = frozenset(
    {"view", "click", "add_to_cart", "purchase", "rating"}
)

# Items a user has consumed are not recommended again; by default anything
# that entered the history, and skipped items (the user said no).
EXCLUDE_KINDS: Final[frozenset[str]] = frozenset(
    {"view", "click", "add_to_cart", "purchase", "rating", "skip"}
)

# Popularity is counted in hourly buckets; "trending" sums the last 24.
POPULARITY_BUCKET_MS: Final = 3600 * 1000
POPULARITY_WINDOW_BUCKETS: Final = 24
# Buckets outlive the window a little so late events still land somewhere.
POPULARITY_BUCKET_TTL_S: Final = (POPULARITY_WINDOW_BUCKETS + 6) * 3600


def rating_weight(rating: float) -> int:
    """Affinity weight of an explicit rating on a 1-5 scale: 5 -> +4, 3 -> 0, 1 -> -4."""
    return round((rating - 3.0) * 2)
