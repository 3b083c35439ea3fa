"""Online (prequential) hit rate of the recommendations a stream emitted.

For each interaction, the question is the one a user's next click answers:
was its item in the *latest* list recommended to that user *before* it, in
event time? A list's event time is its cause's (the interaction or request it
answered), so processing lag does not change the verdict, only when it can be
given. Interactions with no earlier list count apart (``no_list``): there was
nothing to hit.

Pure logic, no Kafka: an observer feeds it the events it reads (causes,
recommendations, interactions) in whatever order they arrive, and asks for a
:class:`HitRate` whenever it wants one. Only the users touched since the last
ask are recomputed, so a live dashboard can ask every second.

Ties: a list whose cause has the same timestamp as the interaction does not
count as "before" it (MovieLens-100k stamps in seconds, and a list caused by
the interaction itself must never count). Among lists with the same cause
time, the one that arrived last is the latest.

A second, stricter count (``shown_*``) also asks that the list was *emitted*
(its Kafka timestamp) before the interaction was *sent* (its Kafka
timestamp): the list the user could have seen when they acted. A replay
compresses data time, so a list caused before an interaction in event time
may be computed after that interaction reached the user's state, and then
leaves its item out as already seen; the stricter count is free of that.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from dataclasses import dataclass, field

__all__ = ["HitRate", "PrequentialHitRate"]

# Stands for "no timestamp": later than any list, so the stricter count
# reduces to the event-time one.
_LATEST = 2**62


@dataclass(frozen=True)
class HitRate:
    """Counts of one evaluation: ``rate`` = hits / evaluated (0 when none)."""

    hits: int = 0
    evaluated: int = 0
    no_list: int = 0
    # the stricter count: lists emitted before the interaction was sent
    shown_hits: int = 0
    shown_evaluated: int = 0
    # hits and evaluated interactions by the rung of the list in force
    by_rung: dict[str, tuple[int, int]] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.hits / self.evaluated if self.evaluated else 0.0

    @property
    def shown_rate(self) -> float:
        return self.shown_hits / self.shown_evaluated if self.shown_evaluated else 0.0

    def to_dict(self) -> dict[str, object]:
        return {
            "hits": self.hits,
            "evaluated": self.evaluated,
            "no_list": self.no_list,
            "rate": round(self.rate, 6),
            "shown_hits": self.shown_hits,
            "shown_evaluated": self.shown_evaluated,
            "shown_rate": round(self.shown_rate, 6),
            "by_rung": {
                r: {"hits": h, "evaluated": n, "rate": round(h / n, 6) if n else 0.0}
                for r, (h, n) in sorted(self.by_rung.items())
            },
        }


@dataclass
class _User:
    # lists sorted by (cause time, arrival): (ts_ms, seq, rung, items, emitted_ms)
    lists: list[tuple[int, int, str, frozenset[str], int]] = field(default_factory=list)
    # (ts_ms, item_id, sent_ms)
    interactions: list[tuple[int, str, int]] = field(default_factory=list)
    result: tuple[int, int, int, int, int, dict[str, tuple[int, int]]] = (0, 0, 0, 0, 0, {})


class PrequentialHitRate:
    """Accumulates causes, lists and interactions; :meth:`snapshot` scores them.

    ``k`` caps how many of a list's items count (the lists' own length when
    shorter). Duplicates (a redelivered interaction, a re-emitted list) are
    recognised by id and counted once.
    """

    def __init__(self, k: int = 10) -> None:
        self.k = k
        self._cause_ts: dict[tuple[str, str], int] = {}
        # lists whose cause was not seen yet: cause -> [(user, rec_id, rung, items)]
        self._waiting: dict[tuple[str, str], list[tuple[str, str, str, tuple[str, ...], int]]] = {}
        self._users: dict[str, _User] = {}
        self._dirty: set[str] = set()
        self._seen_lists: set[str] = set()
        self._seen_interactions: set[str] = set()
        self._seq = 0
        self._totals: HitRate = HitRate()

    def cause(self, kind: str, cause_id: str, ts_ms: int) -> None:
        """The event time of a possible cause (a request; interactions record their own)."""
        key = (kind, cause_id)
        self._cause_ts.setdefault(key, ts_ms)
        for user, rec_id, rung, items, emitted in self._waiting.pop(key, ()):
            self._add_list(user, rec_id, ts_ms, rung, items, emitted)

    def interaction(
        self, event_id: str, user_id: str, item_id: str, ts_ms: int, sent_ms: int | None = None
    ) -> None:
        """An interaction: scored against the lists before it, and a cause of later ones.

        ``sent_ms``: when it was sent (its Kafka timestamp), for the stricter count;
        None counts it as sent after every list.
        """
        if event_id in self._seen_interactions:
            return
        self._seen_interactions.add(event_id)
        user = self._users.setdefault(user_id, _User())
        sent = _LATEST if sent_ms is None else sent_ms
        bisect.insort(user.interactions, (ts_ms, item_id, sent))
        self._dirty.add(user_id)
        self.cause("interaction", event_id, ts_ms)

    def recommendation(
        self,
        rec_id: str,
        user_id: str,
        cause_kind: str,
        cause_id: str,
        items: Iterable[str],
        rung: str | None = None,
        emitted_ms: int | None = None,
    ) -> None:
        """A list emitted to ``user_id`` in answer to the cause ``(cause_kind, cause_id)``.

        ``emitted_ms``: its Kafka timestamp, for the stricter count; None counts
        it as emitted before every interaction.
        """
        if rec_id in self._seen_lists:
            return
        self._seen_lists.add(rec_id)
        top = tuple(items)[: self.k]
        key = (cause_kind, cause_id)
        ts = self._cause_ts.get(key)
        emitted = -_LATEST if emitted_ms is None else emitted_ms
        if ts is None:
            self._waiting.setdefault(key, []).append((user_id, rec_id, rung or "?", top, emitted))
        else:
            self._add_list(user_id, rec_id, ts, rung or "?", top, emitted)

    def _add_list(
        self,
        user_id: str,
        rec_id: str,
        ts_ms: int,
        rung: str,
        items: tuple[str, ...],
        emitted_ms: int,
    ) -> None:
        self._seq += 1
        user = self._users.setdefault(user_id, _User())
        bisect.insort(user.lists, (ts_ms, self._seq, rung, frozenset(items), emitted_ms))
        self._dirty.add(user_id)

    @property
    def waiting(self) -> int:
        """Lists held back until their cause's event time is known."""
        return sum(len(v) for v in self._waiting.values())

    def snapshot(self) -> HitRate:
        """The hit rate over everything fed so far (dirty users recomputed)."""
        if not self._dirty:
            return self._totals
        for name in self._dirty:
            self._users[name].result = _score(self._users[name])
        self._dirty.clear()
        hits = evaluated = no_list = shown_hits = shown_evaluated = 0
        by_rung: dict[str, list[int]] = {}
        for user in self._users.values():
            h, n, z, sh, sn, rungs = user.result
            hits, evaluated, no_list = hits + h, evaluated + n, no_list + z
            shown_hits, shown_evaluated = shown_hits + sh, shown_evaluated + sn
            for rung, (rh, rn) in rungs.items():
                acc = by_rung.setdefault(rung, [0, 0])
                acc[0] += rh
                acc[1] += rn
        self._totals = HitRate(
            hits,
            evaluated,
            no_list,
            shown_hits,
            shown_evaluated,
            {r: (v[0], v[1]) for r, v in by_rung.items()},
        )
        return self._totals


def _score(user: _User) -> tuple[int, int, int, int, int, dict[str, tuple[int, int]]]:
    hits = evaluated = no_list = shown_hits = shown_evaluated = 0
    rungs: dict[str, tuple[int, int]] = {}
    lists = user.lists
    for ts, item, sent in user.interactions:
        # Lists strictly before ts: every entry whose (ts, seq) < (ts, 0).
        at = bisect.bisect_left(lists, (ts, 0))
        if at == 0:
            no_list += 1
            continue
        _, _, rung, items, _ = lists[at - 1]
        hit = item in items
        evaluated += 1
        hits += hit
        rh, rn = rungs.get(rung, (0, 0))
        rungs[rung] = (rh + hit, rn + 1)
        # The stricter count: the latest of those lists already emitted when the
        # interaction was sent (lists come out nearly in cause order: a short walk).
        j = at - 1
        while j >= 0 and lists[j][4] >= sent:
            j -= 1
        if j >= 0:
            shown_evaluated += 1
            shown_hits += item in lists[j][3]
    return hits, evaluated, no_list, shown_hits, shown_evaluated, rungs
