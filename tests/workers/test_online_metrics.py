"""The online (prequential) hit rate: workers.online, no Kafka."""

from __future__ import annotations

import random

from workers.online import PrequentialHitRate


def test_an_interaction_hits_the_latest_earlier_list() -> None:
    m = PrequentialHitRate(k=10)
    m.cause("request", "r1", 100)
    m.recommendation("rec1", "u", "request", "r1", ["a", "b"], "model")
    m.interaction("i1", "u", "a", 200)  # in the list: hit
    m.interaction("i2", "u", "c", 300)  # not in it: miss
    m.interaction("i3", "v", "a", 300)  # another user, never recommended to: no list
    h = m.snapshot()
    assert (h.hits, h.evaluated, h.no_list) == (1, 2, 1)
    assert h.rate == 0.5
    assert h.by_rung == {"model": (1, 2)}


def test_only_the_latest_list_before_the_interaction_counts() -> None:
    m = PrequentialHitRate()
    m.interaction("i0", "u", "x", 50)  # a cause of the list rec0 (and before any list)
    m.recommendation("rec0", "u", "interaction", "i0", ["a"], "model")
    m.cause("request", "r1", 150)
    m.recommendation("rec1", "u", "request", "r1", ["b"], "popular")
    m.interaction("i1", "u", "a", 200)  # in rec0 but rec1 is the latest: miss
    m.interaction("i2", "u", "b", 210)  # in rec1: hit
    h = m.snapshot()
    assert (h.hits, h.evaluated, h.no_list) == (1, 2, 1)
    assert h.by_rung == {"popular": (1, 2)}


def test_event_time_decides_not_arrival_order() -> None:
    m = PrequentialHitRate()
    # The interaction arrives first; the list answering an earlier request later
    # (processing lag): it still was there before the interaction.
    m.interaction("i1", "u", "a", 200)
    m.cause("request", "r1", 100)
    m.recommendation("rec1", "u", "request", "r1", ["a"], "model")
    # A list caused later in event time never counts for an earlier interaction.
    m.cause("request", "r2", 300)
    m.recommendation("rec2", "u", "request", "r2", ["zz"], "model")
    h = m.snapshot()
    assert (h.hits, h.evaluated) == (1, 1)


def test_a_list_at_the_same_time_or_caused_by_the_interaction_is_not_before_it() -> None:
    m = PrequentialHitRate()
    m.interaction("i1", "u", "a", 200)
    m.recommendation("rec-i1", "u", "interaction", "i1", ["a"], "model")
    m.cause("request", "r1", 200)
    m.recommendation("rec-r1", "u", "request", "r1", ["a"], "model")
    h = m.snapshot()
    assert (h.hits, h.evaluated, h.no_list) == (0, 0, 1)


def test_a_list_waits_for_its_cause_and_duplicates_count_once() -> None:
    m = PrequentialHitRate()
    m.recommendation("rec1", "u", "request", "r1", ["a"], "model")
    assert m.waiting == 1
    m.interaction("i1", "u", "a", 200)
    assert m.snapshot().evaluated == 0  # the list's time is not known yet
    m.cause("request", "r1", 100)
    assert m.waiting == 0
    m.interaction("i1", "u", "a", 200)  # redelivered
    m.recommendation("rec1", "u", "request", "r1", ["zz"], "model")  # re-emitted
    h = m.snapshot()
    assert (h.hits, h.evaluated) == (1, 1)


def test_only_the_top_k_count() -> None:
    m = PrequentialHitRate(k=10)
    m.cause("request", "r1", 100)
    m.recommendation("rec1", "u", "request", "r1", [f"i{n}" for n in range(20)], "model")
    m.interaction("e1", "u", "i9", 200)  # rank 10: hit
    m.interaction("e2", "u", "i10", 200)  # rank 11: miss
    h = m.snapshot()
    assert (h.hits, h.evaluated) == (1, 2)


def _brute_force(
    lists: list[tuple[str, int, int, frozenset[str], int]], inters: list[tuple[str, int, str, int]]
) -> tuple[int, int, int, int, int]:
    """(user, cause ts, arrival, items, emitted) lists; (user, ts, item, sent) interactions."""
    hits = evaluated = none = shown_hits = shown_evaluated = 0
    for user, ts, item, sent in inters:
        before = [(t, seq, items, e) for u, t, seq, items, e in lists if u == user and t < ts]
        if not before:
            none += 1
            continue
        evaluated += 1
        hits += item in max(before, key=lambda b: (b[0], b[1]))[2]
        shown = [b for b in before if b[3] < sent]
        if shown:
            shown_evaluated += 1
            shown_hits += item in max(shown, key=lambda b: (b[0], b[1]))[2]
    return hits, evaluated, none, shown_hits, shown_evaluated


def test_incremental_snapshots_agree_with_a_recount_from_scratch() -> None:
    rng = random.Random(5)
    users = [f"u{n}" for n in range(8)]
    items = [f"i{n}" for n in range(15)]
    events: list[tuple[str, ...]] = []
    for n in range(400):
        user, ts, wall = rng.choice(users), rng.randrange(1000), str(rng.randrange(1000))
        if rng.random() < 0.5:
            events.append(("inter", f"e{n}", user, rng.choice(items), str(ts), wall))
        else:
            events.append(("rec", f"r{n}", user, ",".join(rng.sample(items, 4)), str(ts), wall))
    rng.shuffle(events)  # arrival order is not event-time order
    m = PrequentialHitRate(k=10)
    lists: list[tuple[str, int, int, frozenset[str], int]] = []
    inters: list[tuple[str, int, str, int]] = []
    for n, (kind, eid, user, what, ts, wall) in enumerate(events):
        if kind == "inter":
            m.interaction(eid, user, what, int(ts), int(wall))
            inters.append((user, int(ts), what, int(wall)))
        else:
            m.cause("request", eid, int(ts))
            m.recommendation(
                f"rec-{eid}", user, "request", eid, what.split(","), "model", int(wall)
            )
            lists.append((user, int(ts), n, frozenset(what.split(",")), int(wall)))
        if n % 37 == 0:  # snapshots along the way must not change the end result
            h = m.snapshot()
            got = (h.hits, h.evaluated, h.no_list, h.shown_hits, h.shown_evaluated)
            assert got == _brute_force(lists, inters)
    h = m.snapshot()
    expected = _brute_force(lists, inters)
    assert (h.hits, h.evaluated, h.no_list, h.shown_hits, h.shown_evaluated) == expected
    assert h.evaluated + h.no_list == len(inters)
    assert 0 < h.hits < h.evaluated  # the random data exercises both outcomes
    assert 0 < h.shown_evaluated < h.evaluated


def test_the_stricter_count_takes_only_lists_emitted_before_the_interaction_was_sent() -> None:
    m = PrequentialHitRate()
    m.cause("request", "r1", 100)
    m.recommendation("rec1", "u", "request", "r1", ["a", "b"], "model", emitted_ms=1_000)
    m.cause("request", "r2", 150)
    # Caused before the interaction in event time, but emitted after it was sent
    # (a compressed replay): its state already held "b", so it left "b" out.
    m.recommendation("rec2", "u", "request", "r2", ["c"], "model", emitted_ms=3_000)
    m.interaction("i1", "u", "b", 200, sent_ms=2_000)
    m.interaction("i2", "u", "c", 300, sent_ms=500)  # sent before any list was out
    h = m.snapshot()
    assert (h.hits, h.evaluated) == (1, 2)  # event time: rec2 is the latest for both (i2 hits)
    assert (h.shown_hits, h.shown_evaluated) == (1, 1)  # i1 against rec1; i2 had none yet
    assert h.shown_rate == 1.0
