"""The demo's dashboard drawn from snapshots, and the observer fed records (no Kafka)."""

from __future__ import annotations

import asyncio
import io

from rich.console import Console

from contracts import (
    CODECS,
    Cause,
    Interaction,
    RankedItem,
    Recommendation,
    RecommendationRequest,
    topics,
)
from streams.dashboard import LLM_TEST_LABEL, Dashboard, Snapshot, plain_line, render
from streams.observe import Observer
from workers.online import HitRate
from workers.settings import Settings


def _snapshot(**changes: object) -> Snapshot:
    s = Snapshot(
        elapsed_s=42.0,
        phase="replaying",
        model_version="ml100k-test",
        ratings_expected=100_000,
        topics={"interactions": (51_234, 1_803.0), "recommendations": (20_500, 640.0)},
        lag={"interactions": 120, "requests": 0, "explain": None},
        requests=5_000,
        answered=4_990,
        latency_ms=(35.0, 180.0, 412.0, 900.0),
        latency_n=4_990,
        rungs={"model": 19_000, "popular": 1_500},
        routes={"model": 19_000, "popular": 1_200, "llm_cold": 300},
        dead_letters=517,
        malformed_sent=517,
        hit=HitRate(
            hits=2_345,
            evaluated=40_000,
            no_list=900,
            shown_hits=3_000,
            shown_evaluated=30_000,
            by_rung={"model": (2_300, 38_000)},
        ),
        offline={"HR@10 mixed": 0.1506, "HR@10 warm": 0.1983},
    )
    for name, value in changes.items():
        setattr(s, name, value)
    return s


def _text(s: Snapshot) -> str:
    console = Console(record=True, width=140, file=io.StringIO(), force_terminal=False)
    console.print(render(s))
    return console.export_text()


def test_the_screen_shows_every_figure_of_the_snapshot() -> None:
    text = _text(_snapshot())
    for expected in (
        "interactions",
        "51,234",
        "1,803",
        "ratings 51,234/100,000",
        "consumer lag per role",
        "120",
        "4,990/5,000",
        "p99 412 ms",
        "model 19,000 (93%)",
        "llm_cold 300",
        "517 (malformed sent: 517)",
        "5.9% (2,345/40,000",
        "900 had no list yet",
        "10.0% (3,000/30,000)",
        "HR@10 mixed 15.1%",
        "HR@10 warm 19.8%",
        "LLM paths off",
    ):
        assert expected in text, expected
    assert "explain" in text and "?" in text  # a role not scraped yet shows as unknown


def test_the_llm_panel_shows_calls_tokens_cost_and_cache_and_the_test_label() -> None:
    s = _snapshot(
        llm=f"{LLM_TEST_LABEL} at http://127.0.0.1:1/v1",
        llm_on=True,
        llm_calls={"ok": 40, "deadline": 2},
        llm_tokens={"prompt": 9_000, "completion": 1_000},
        llm_cost_usd=0.0123,
        llm_cache={"hit": 5, "miss": 37},
    )
    text = _text(s)
    assert LLM_TEST_LABEL in text
    assert "ok 40" in text and "10,000" in text and "$0.0123" in text
    assert "5 hits of 42 lookups" in text
    assert "LLM paths off" not in text
    assert LLM_TEST_LABEL in plain_line(s)


def test_plain_lines_carry_the_figures_without_terminal_control() -> None:
    line = plain_line(_snapshot())
    assert "\n" not in line and "\x1b" not in line
    for expected in ("interactions=51234@1803/s", "p50/p95/p99=35/180/412ms", "dead 517"):
        assert expected in line, expected
    assert "online HR@10 0.059 (2345/40000)" in line
    assert "HR@10 mixed=0.151" in line


async def test_without_a_terminal_the_dashboard_prints_plain_lines_until_stopped() -> None:
    out = io.StringIO()
    dashboard = Dashboard(
        Console(file=out, force_terminal=False, width=500), interval_s=0.01, plain_every_s=0.01
    )
    assert not dashboard.live
    calls = 0
    stop = asyncio.Event()

    def snapshot() -> Snapshot:
        nonlocal calls
        calls += 1
        if calls == 4:
            stop.set()  # as the demo does once the drain is over
        return _snapshot(elapsed_s=float(calls))

    last = await asyncio.wait_for(dashboard.run(snapshot, stop), 30)
    lines = out.getvalue().splitlines()
    assert len(lines) >= 4
    assert all(line.startswith("[") and "online HR@10" in line for line in lines)
    assert "\x1b" not in out.getvalue()
    assert last.elapsed_s == calls  # the final line shows the last snapshot


def test_the_observer_turns_records_into_the_snapshot() -> None:
    obs = Observer(Settings.from_mapping({}), llm="off", ratings_expected=3)

    def feed(topic: str, event: object, ts_ms: int) -> None:
        obs.feed(topic, CODECS[topic].encode(event), ts_ms)

    feed(topics.REQUESTS, RecommendationRequest("r1", "u1", 10, 1_000), 50_000)
    items = tuple(RankedItem(i, 1.0 / (n + 1), n + 1) for n, i in enumerate(["a", "b"]))
    rec = Recommendation(
        "rec1", "u1", Cause("request", "r1"), items, "model", "v1", 0, rung="model", route="model"
    )
    feed(topics.RECOMMENDATIONS, rec, 50_120)
    feed(topics.RECOMMENDATIONS, rec, 50_500)  # re-emitted: counted once
    feed(topics.INTERACTIONS, Interaction("i1", "u1", "a", "rating", 2_000, rating=5.0), 51_000)
    feed(topics.INTERACTIONS, Interaction("i2", "u1", "z", "rating", 3_000, rating=5.0), 51_000)
    obs.feed(topics.INTERACTIONS, b"not json", 51_000)  # malformed input: counted, skipped
    s = obs.snapshot()
    assert s.topics[topics.INTERACTIONS][0] == 3
    assert s.topics[topics.RECOMMENDATIONS][0] == 2
    assert (s.requests, s.answered) == (1, 1)
    assert s.latency_n == 1 and s.latency_ms is not None and s.latency_ms[0] == 120
    assert s.rungs == {"model": 1} and s.routes == {"model": 1}
    assert (s.hit.hits, s.hit.evaluated) == (1, 2)
    # the list was emitted (50,120) before both interactions were sent (51,000)
    assert (s.hit.shown_hits, s.hit.shown_evaluated) == (1, 2)
    assert list(obs.samples.by_request) == [rec]
