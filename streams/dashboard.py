"""The demo's live terminal dashboard: one :class:`Snapshot` in, a screen out.

The observer (:mod:`streams.observe`) builds a :class:`Snapshot` of what it
read from Kafka and scraped from the workers; this module only draws it: a
rich screen when stdout is a terminal (:func:`render`), one plain line per
refresh otherwise (:func:`plain_line`: CI logs and pipes get no cursor
tricks). Nothing here touches Kafka, so a test renders a hand-made snapshot.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rich import box
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from workers.online import HitRate

__all__ = ["LLM_TEST_LABEL", "Dashboard", "Snapshot", "plain_line", "render"]

# Shown wherever output of the scripted test server appears, so no one takes
# its canned text for a model's answer.
LLM_TEST_LABEL = "LLM TEST SERVER (scripted, not a model)"


@dataclass
class Snapshot:
    """What the dashboard shows at one moment (all counts since the run began)."""

    elapsed_s: float = 0.0
    phase: str = "starting"
    llm: str = "off (no endpoint configured): LLM paths off"
    llm_on: bool = False
    model_version: str = ""
    ratings_expected: int = 0
    # topic -> (records seen, records/s over the last few seconds)
    topics: dict[str, tuple[int, float]] = field(default_factory=dict)
    # role -> records behind the end of its input partitions (None: not scraped yet)
    lag: dict[str, int | None] = field(default_factory=dict)
    requests: int = 0
    answered: int = 0
    # request -> recommendation, Kafka timestamps: p50, p95, p99, max (ms)
    latency_ms: tuple[float, float, float, float] | None = None
    latency_n: int = 0
    rungs: dict[str, int] = field(default_factory=dict)
    routes: dict[str, int] = field(default_factory=dict)
    # the workers' LLM metrics (summed over roles)
    llm_calls: dict[str, int] = field(default_factory=dict)
    llm_tokens: dict[str, int] = field(default_factory=dict)
    llm_cost_usd: float = 0.0
    llm_cache: dict[str, int] = field(default_factory=dict)
    explanations: dict[str, int] = field(default_factory=dict)
    chat_replies: dict[str, int] = field(default_factory=dict)
    dead_letters: int = 0
    malformed_sent: int | None = None
    hit: HitRate = field(default_factory=HitRate)
    # offline metric name -> value (e.g. "mixed HR@10"), empty when unknown
    offline: dict[str, float] = field(default_factory=dict)
    offline_note: str = ""

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k != "hit"}
        out["topics"] = {
            t: {"records": n, "per_s": round(r, 1)} for t, (n, r) in self.topics.items()
        }
        out["hit_rate"] = self.hit.to_dict()
        return out


def _mix(counts: dict[str, int]) -> str:
    total = sum(counts.values())
    if not total:
        return "-"
    return "  ".join(
        f"{k} {v:,} ({100 * v / total:.0f}%)"
        for k, v in sorted(counts.items(), key=lambda kv: -kv[1])
    )


def _hit_text(s: Snapshot) -> str:
    h = s.hit
    return (
        f"{100 * h.rate:.1f}% ({h.hits:,}/{h.evaluated:,} interactions; "
        f"{h.no_list:,} had no list yet)"
    )


def _offline_text(s: Snapshot) -> str:
    if not s.offline:
        return s.offline_note or "not in the model manifest"
    return "  ".join(f"{k} {100 * v:.1f}%" for k, v in s.offline.items())


def render(s: Snapshot) -> RenderableType:
    """The full screen for ``s``."""
    head = Text.assemble(
        ("recstream demo", "bold"),
        f"  {s.phase}  {s.elapsed_s:5.0f}s   model {s.model_version or '-'}   ",
        ("LLM: ", "bold"),
        # the label up to its first ';' (the LLM panel has the rest)
        (s.llm.split(";")[0], "yellow" if s.llm_on else "dim"),
    )

    flow = Table(box=box.SIMPLE, expand=True, title="throughput per topic", title_justify="left")
    flow.add_column("topic")
    flow.add_column("records", justify="right")
    flow.add_column("per s", justify="right")
    for topic, (n, rate) in s.topics.items():
        flow.add_row(topic, f"{n:,}", f"{rate:,.0f}")
    if s.ratings_expected:
        done = s.topics.get("interactions", (0, 0.0))[0]
        flow.caption = f"ratings {done:,}/{s.ratings_expected:,}"

    lag = Table(box=box.SIMPLE, expand=True, title="consumer lag per role", title_justify="left")
    lag.add_column("role (group)")
    lag.add_column("lag", justify="right")
    for role, value in s.lag.items():
        lag.add_row(role, "?" if value is None else f"{value:,}")

    serve = Table.grid(padding=(0, 2))
    serve.add_column(style="bold")
    serve.add_column()
    if s.latency_ms:
        p50, p95, p99, top = s.latency_ms
        lat = f"p50 {p50:,.0f} ms  p95 {p95:,.0f} ms  p99 {p99:,.0f} ms  max {top:,.0f} ms"
    else:
        lat = "-"
    serve.add_row("requests answered", f"{s.answered:,}/{s.requests:,}")
    serve.add_row("latency", f"{lat}  (request -> list, n={s.latency_n:,})")
    serve.add_row("serving rungs", _mix(s.rungs))
    serve.add_row("routes", _mix(s.routes))
    serve.add_row("explanations", _mix(s.explanations))
    serve.add_row("chat replies", _mix(s.chat_replies))
    sent = "" if s.malformed_sent is None else f" (malformed sent: {s.malformed_sent:,})"
    serve.add_row("dead letters", f"{s.dead_letters:,}{sent}")

    llm = Table.grid(padding=(0, 2))
    llm.add_column(style="bold")
    llm.add_column()
    if s.llm_on:
        tokens = sum(s.llm_tokens.values())
        hits = s.llm_cache.get("hit", 0) + s.llm_cache.get("shared", 0)
        lookups = sum(s.llm_cache.values())
        llm.add_row("endpoint", Text(s.llm, style="yellow"))
        llm.add_row("calls", _mix(s.llm_calls))
        llm.add_row(
            "tokens",
            f"{tokens:,} ("
            + ", ".join(f"{k} {v:,}" for k, v in sorted(s.llm_tokens.items()))
            + f")  cost ${s.llm_cost_usd:.4f}",
        )
        llm.add_row("cache", f"{hits:,} hits of {lookups:,} lookups")
    else:
        llm.add_row("LLM", s.llm)

    quality = Table.grid(padding=(0, 2))
    quality.add_column(style="bold")
    quality.add_column()
    quality.add_row("online HR@10 (prequential)", _hit_text(s))
    by_rung = "  ".join(
        f"{r} {100 * h / n:.1f}% of {n:,}" for r, (h, n) in sorted(s.hit.by_rung.items()) if n
    )
    quality.add_row("  by rung of the list", by_rung or "-")
    h = s.hit
    quality.add_row(
        "  lists already emitted",
        f"{100 * h.shown_rate:.1f}% ({h.shown_hits:,}/{h.shown_evaluated:,}): only lists "
        "emitted before the interaction was sent",
    )
    quality.add_row("offline (same model)", _offline_text(s))

    grid = Table.grid(expand=True)
    grid.add_column(ratio=3)
    grid.add_column(ratio=2)
    grid.add_row(flow, lag)
    return Group(
        head,
        grid,
        Panel(serve, title="serving", title_align="left", box=box.ROUNDED),
        Panel(llm, title="LLM", title_align="left", box=box.ROUNDED),
        Panel(quality, title="quality", title_align="left", box=box.ROUNDED),
    )


def plain_line(s: Snapshot) -> str:
    """One line for logs: the same figures, no terminal control."""
    flows = " ".join(f"{t}={n}@{r:.0f}/s" for t, (n, r) in s.topics.items())
    lag = " ".join(f"{r}={'?' if v is None else v}" for r, v in s.lag.items())
    lat = "-"
    if s.latency_ms:
        lat = "p50/p95/p99={:.0f}/{:.0f}/{:.0f}ms".format(*s.latency_ms[:3])
    rungs = ",".join(f"{k}:{v}" for k, v in sorted(s.rungs.items()))
    llm = "off"
    if s.llm_on:
        llm = (
            f"{s.llm}: calls={sum(s.llm_calls.values())} tokens={sum(s.llm_tokens.values())} "
            f"cost=${s.llm_cost_usd:.4f} cache_hits={s.llm_cache.get('hit', 0)}"
        )
    offline = ",".join(f"{k}={v:.3f}" for k, v in s.offline.items()) or "-"
    return (
        f"[{s.elapsed_s:5.0f}s {s.phase}] {flows} | lag {lag or '-'} | answered "
        f"{s.answered}/{s.requests} {lat} | rungs {rungs or '-'} | llm {llm} | dead "
        f"{s.dead_letters} | online HR@10 {s.hit.rate:.3f} ({s.hit.hits}/{s.hit.evaluated}) "
        f"emitted-before {s.hit.shown_rate:.3f} "
        f"offline {offline}"
    )


class Dashboard:
    """Redraws a snapshot every ``interval_s`` until stopped.

    On a terminal: a rich Live screen (kept on screen when it ends). Elsewhere:
    a plain line every ``plain_every_s`` seconds, so CI logs stay short.
    """

    def __init__(
        self,
        console: Console | None = None,
        *,
        interval_s: float = 1.0,
        plain_every_s: float = 10.0,
    ) -> None:
        self.console = console or Console()
        self.interval_s = interval_s
        self.plain_every_s = plain_every_s

    @property
    def live(self) -> bool:
        return self.console.is_terminal

    async def run(self, snapshot: Callable[[], Snapshot], stop: asyncio.Event) -> Snapshot:
        """Draw until ``stop`` is set; return the last snapshot drawn."""
        last = snapshot()
        if not self.live:
            while True:
                self.console.print(plain_line(last), soft_wrap=True, highlight=False)
                with_stop = await _wait(stop, self.plain_every_s)
                last = snapshot()
                if with_stop:
                    self.console.print(plain_line(last), soft_wrap=True, highlight=False)
                    return last
        with Live(render(last), console=self.console, auto_refresh=False) as live:
            while not await _wait(stop, self.interval_s):
                last = snapshot()
                live.update(render(last), refresh=True)
            last = snapshot()
            live.update(render(last), refresh=True)
        return last


async def _wait(event: asyncio.Event, seconds: float) -> bool:
    try:
        await asyncio.wait_for(event.wait(), seconds)
    except TimeoutError:
        return False
    return True
