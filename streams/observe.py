"""The demo's observer on the Kafka edge: reads every topic, costs the workers nothing.

One group-less consumer in the demo's own process reads the inputs and the
outputs of a run and keeps the figures the dashboard shows (throughput per
topic, request -> list latency from Kafka timestamps, serving rungs and
routes, explanation and chat sources, dead letters) and the online hit rate
(:mod:`workers.online`). A second loop scrapes each worker's ``/metrics`` for
what only the workers know: consumer lag per role and the LLM pool's calls,
tokens, cost and cache hits. :meth:`Observer.feed` takes one record and
touches no network, so it runs in tests without Kafka.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from contracts import (
    CODECS,
    ChatMessage,
    ChatReply,
    DecodeError,
    Explanation,
    Interaction,
    Recommendation,
    RecommendationRequest,
    topics,
)
from streams.dashboard import Snapshot
from streams.kafka import topic_reader
from workers.online import PrequentialHitRate
from workers.settings import Settings

__all__ = ["SHOWN_TOPICS", "Observer", "Samples"]

logger = logging.getLogger(__name__)

# Display order: inputs, then outputs, then the internal hand-off.
SHOWN_TOPICS = (
    topics.CATALOG,
    topics.INTERACTIONS,
    topics.REQUESTS,
    topics.CHAT,
    topics.RECOMMENDATIONS,
    topics.EXPLANATIONS,
    topics.CHAT_REPLIES,
    topics.LLM_WORK,
    topics.DEAD_LETTERS,
)
# Throughput is the count's change over about this many seconds.
RATE_WINDOW_S = 5.0


@dataclass
class Samples:
    """What the demo prints after the run: a few lists, explanations, chat."""

    by_request: deque[Recommendation] = field(default_factory=lambda: deque(maxlen=20))
    by_interaction: deque[Recommendation] = field(default_factory=lambda: deque(maxlen=20))
    cold: deque[Recommendation] = field(default_factory=lambda: deque(maxlen=5))
    explanations: dict[tuple[str, str], Explanation] = field(default_factory=dict)
    sessions: dict[str, list[ChatMessage]] = field(default_factory=dict)
    replies: dict[str, ChatReply] = field(default_factory=dict)


class Observer:
    """Figures of one demo run, fed record by record (see the module docstring)."""

    def __init__(
        self,
        settings: Settings,
        *,
        workers: Mapping[str, int] | None = None,
        llm: str = "off",
        llm_on: bool = False,
        model_version: str = "",
        ratings_expected: int = 0,
        offline: Mapping[str, float] | None = None,
        offline_note: str = "",
    ) -> None:
        self.settings = settings
        self.workers = dict(workers or {})
        self.started = time.monotonic()
        self.last_record = self.started
        self.phase = "starting"
        self.malformed_sent: int | None = None
        # the session of the demo's own scripted conversation ('' when none)
        self.showcase = ""
        self.counts: dict[str, int] = dict.fromkeys(SHOWN_TOPICS, 0)
        self._history: deque[tuple[float, dict[str, int]]] = deque()
        self.hit = PrequentialHitRate(k=10)
        self.request_ts: dict[str, int] = {}
        self.answer_ts: dict[str, int] = {}
        self.latencies: list[float] = []
        self.rungs: dict[str, int] = {}
        self.routes: dict[str, int] = {}
        self.explanation_sources: dict[str, int] = {}
        self.reply_sources: dict[str, int] = {}
        self.dead_reasons: dict[str, int] = {}
        self.lag: dict[str, int | None] = dict.fromkeys(self.workers)
        self.llm_calls: dict[str, int] = {}
        self.llm_tokens: dict[str, int] = {}
        self.llm_cost = 0.0
        self.llm_cache: dict[str, int] = {}
        self.samples = Samples()
        self._seen_recs: set[str] = set()
        self._static = {
            "llm": llm,
            "llm_on": llm_on,
            "model_version": model_version,
            "ratings_expected": ratings_expected,
            "offline": dict(offline or {}),
            "offline_note": offline_note,
        }

    # ------------------------------------------------------------ records

    def feed(self, topic: str, value: bytes, ts_ms: int) -> None:
        """One record of ``topic`` (its short name) with its Kafka timestamp."""
        self.counts[topic] = self.counts.get(topic, 0) + 1
        if topic == topics.DEAD_LETTERS:
            try:
                letter = CODECS[topic].decode(value)
                source = letter.source_topic.removeprefix(self.settings.kafka.topic_prefix)
                key = f"{source}:{letter.field or '$'}"
            except DecodeError:
                key = "?"
            self.dead_reasons[key] = self.dead_reasons.get(key, 0) + 1
            return
        if topic not in CODECS:
            return
        try:
            event = CODECS[topic].decode(value)
        except DecodeError:
            return  # the malformed inputs the replay mixes in; the workers dead-letter them
        if isinstance(event, Interaction):
            self.hit.interaction(event.event_id, event.user_id, event.item_id, event.ts_ms, ts_ms)
        elif isinstance(event, RecommendationRequest):
            self.hit.cause("request", event.request_id, event.ts_ms)
            if event.request_id not in self.request_ts:
                self.request_ts[event.request_id] = ts_ms
                answered = self.answer_ts.get(event.request_id)
                if answered is not None:
                    self.latencies.append(answered - ts_ms)
        elif isinstance(event, Recommendation):
            self._recommendation(event, ts_ms)
        elif isinstance(event, Explanation):
            self.explanation_sources[event.source] = (
                self.explanation_sources.get(event.source, 0) + 1
            )
            self.samples.explanations[(event.rec_id, event.item_id)] = event
        elif isinstance(event, ChatMessage):
            self.samples.sessions.setdefault(event.session_id, []).append(event)
        elif isinstance(event, ChatReply):
            self.reply_sources[event.source] = self.reply_sources.get(event.source, 0) + 1
            self.samples.replies[event.in_reply_to] = event

    def _recommendation(self, rec: Recommendation, ts_ms: int) -> None:
        if rec.rec_id in self._seen_recs:
            return  # a re-emitted list (redelivery): the first one counts
        self._seen_recs.add(rec.rec_id)
        rung = rec.rung or rec.strategy
        self.rungs[rung] = self.rungs.get(rung, 0) + 1
        route = rec.route or "-"
        self.routes[route] = self.routes.get(route, 0) + 1
        self.hit.recommendation(
            rec.rec_id,
            rec.user_id,
            rec.cause.kind,
            rec.cause.id,
            [i.item_id for i in rec.items],
            rung,
            ts_ms,
        )
        if rec.cause.kind == "request":
            self.answer_ts.setdefault(rec.cause.id, ts_ms)
            asked = self.request_ts.get(rec.cause.id)
            if asked is not None:
                self.latencies.append(ts_ms - asked)
            if rec.route == "llm_cold":
                self.samples.cold.append(rec)
            elif rung == "model":
                self.samples.by_request.append(rec)
        elif rung == "model":
            self.samples.by_interaction.append(rec)

    @property
    def requests(self) -> int:
        return self.counts.get(topics.REQUESTS, 0)

    @property
    def answered(self) -> int:
        return len(self.answer_ts)

    def quiet_s(self) -> float:
        return time.monotonic() - self.last_record

    # ------------------------------------------------------------ figures

    def snapshot(self) -> Snapshot:
        now = time.monotonic()
        self._history.append((now, dict(self.counts)))
        while len(self._history) > 2 and now - self._history[1][0] >= RATE_WINDOW_S:
            self._history.popleft()
        then, old = self._history[0]
        span = max(now - then, 1e-9)
        flows = {
            t: (n, (n - old.get(t, 0)) / span if now > then else 0.0)
            for t, n in self.counts.items()
        }
        lat = None
        if self.latencies:
            a = np.asarray(self.latencies, dtype=float)
            p50, p95, p99 = np.percentile(a, [50, 95, 99])
            lat = (float(p50), float(p95), float(p99), float(a.max()))
        return Snapshot(
            elapsed_s=now - self.started,
            phase=self.phase,
            topics=flows,
            lag=dict(self.lag),
            requests=self.requests,
            answered=self.answered,
            latency_ms=lat,
            latency_n=len(self.latencies),
            rungs=dict(self.rungs),
            routes=dict(self.routes),
            llm_calls=dict(self.llm_calls),
            llm_tokens=dict(self.llm_tokens),
            llm_cost_usd=self.llm_cost,
            llm_cache=dict(self.llm_cache),
            explanations=dict(self.explanation_sources),
            chat_replies=dict(self.reply_sources),
            dead_letters=self.counts.get(topics.DEAD_LETTERS, 0),
            malformed_sent=self.malformed_sent,
            hit=self.hit.snapshot(),
            **self._static,  # type: ignore[arg-type]
        )

    # ------------------------------------------------------------ loops

    async def consume(self, stop: asyncio.Event) -> None:
        """Read every topic of the run from the beginning until ``stop`` is set."""
        consumer = topic_reader(
            self.settings.kafka, *SHOWN_TOPICS, max_partition_fetch_bytes=4 * 1024 * 1024
        )
        prefix = self.settings.kafka.topic_prefix
        await consumer.start()
        try:
            while not stop.is_set():
                batch = await consumer.getmany(timeout_ms=300, max_records=5000)
                for tp, records in batch.items():
                    short = tp.topic.removeprefix(prefix)
                    for r in records:
                        if r.value is not None:
                            self.feed(short, r.value, r.timestamp)
                if batch:
                    self.last_record = time.monotonic()
                # Let the dashboard and the replay's producer run between batches.
                await asyncio.sleep(0)
        finally:
            await consumer.stop()

    async def scrape(self, stop: asyncio.Event, every_s: float = 2.0) -> None:
        """Poll each worker's /metrics for lag and LLM figures until ``stop`` is set."""
        async with httpx.AsyncClient(timeout=2.0) as client:
            while not stop.is_set():
                await self.scrape_once(client)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), every_s)

    async def scrape_once(self, client: httpx.AsyncClient) -> None:
        calls: dict[str, int] = {}
        tokens: dict[str, int] = {}
        cache: dict[str, int] = {}
        cost = 0.0
        for role, port in self.workers.items():
            try:
                text = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
            except httpx.HTTPError:
                continue  # starting or stopping: keep the last figures
            lag = 0
            for family in text_string_to_metric_families(text):
                for s in family.samples:
                    if s.name == "recstream_consumer_lag":
                        lag += int(s.value)
                    elif s.name == "recstream_llm_calls_total":
                        key = s.labels.get("outcome", "?")
                        calls[key] = calls.get(key, 0) + int(s.value)
                    elif s.name == "recstream_llm_tokens_total":
                        key = s.labels.get("kind", "?")
                        tokens[key] = tokens.get(key, 0) + int(s.value)
                    elif s.name == "recstream_llm_cost_usd_total":
                        cost += s.value
                    elif s.name == "recstream_llm_cache_total":
                        key = s.labels.get("result", "?")
                        cache[key] = cache.get(key, 0) + int(s.value)
            self.lag[role] = lag
        self.llm_calls, self.llm_tokens, self.llm_cache, self.llm_cost = calls, tokens, cache, cost

    def summary(self) -> dict[str, Any]:
        """The run's figures as JSON-ready data (for the summary files)."""
        snap = self.snapshot()
        data = snap.to_dict()
        data["dead_letters_by_source"] = dict(self.dead_reasons)
        return data
