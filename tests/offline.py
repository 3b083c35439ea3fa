"""Offline recomputation of user state from an input stream, for comparisons."""

from __future__ import annotations

from collections.abc import Iterable

from contracts import Interaction
from workers import constants as c
from workers.state import UserState, event_weight


def recompute(
    events: Iterable[Interaction],
    *,
    history_max: int = c.HISTORY_MAX,
    exclude_kinds: frozenset[str] = c.EXCLUDE_KINDS,
) -> dict[str, UserState]:
    """The state that applying ``events`` once, in order, must produce."""
    hist: dict[str, list[str]] = {}
    counters: dict[str, dict[str, int]] = {}
    aff: dict[str, dict[str, int]] = {}
    excl: dict[str, set[str]] = {}
    seen: set[str] = set()
    for e in events:
        if e.event_id in seen:
            continue
        seen.add(e.event_id)
        h = hist.setdefault(e.user_id, [])
        if e.kind in c.HISTORY_KINDS:
            if e.item_id in h:
                h.remove(e.item_id)
            h.insert(0, e.item_id)
            del h[history_max:]
        if e.kind in exclude_kinds:
            excl.setdefault(e.user_id, set()).add(e.item_id)
        cn = counters.setdefault(e.user_id, {})
        cn["n"] = cn.get("n", 0) + 1
        cn[f"n:{e.kind}"] = cn.get(f"n:{e.kind}", 0) + 1
        cn["last_ts"] = max(cn.get("last_ts", -1), e.ts_ms)
        cn["first_ts"] = min(cn.get("first_ts", e.ts_ms), e.ts_ms)
        w = event_weight(e)
        if w:
            a = aff.setdefault(e.user_id, {})
            a[e.item_id] = a.get(e.item_id, 0) + w
    return {
        u: UserState(u, tuple(hist[u]), counters[u], aff.get(u, {}), frozenset(excl.get(u, ())))
        for u in counters
    }
