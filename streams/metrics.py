"""Prometheus metrics of the stream processors (one registry per process)."""

from __future__ import annotations

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["METRICS", "StreamMetrics"]


class StreamMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.events_in = Counter(
            "recstream_events_in_total", "records consumed", ["topic"], registry=r
        )
        self.events_out = Counter(
            "recstream_events_out_total", "events produced", ["topic"], registry=r
        )
        self.dead_letters = Counter(
            "recstream_dead_letters_total", "records dead-lettered", ["topic"], registry=r
        )
        self.batch_size = Histogram(
            "recstream_batch_size",
            "records per micro-batch",
            ["topic"],
            buckets=(1, 5, 10, 25, 50, 100, 250, 500, 1000),
            registry=r,
        )
        self.latency = Histogram(
            "recstream_output_latency_seconds",
            "cause received -> output built",
            ["topic"],
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=r,
        )
        self.lag = Gauge(
            "recstream_consumer_lag", "records behind the end", ["topic", "partition"], registry=r
        )

        self.served = Counter(
            "recstream_served_total",
            "outputs by serving route and the fallback-ladder rung that answered",
            ["topic", "route", "rung"],
            registry=r,
        )

    def render(self) -> tuple[bytes, str]:
        # The stream's own registry, then the default one (the LLM pool's metrics).
        return generate_latest(self.registry) + generate_latest(REGISTRY), CONTENT_TYPE_LATEST


METRICS = StreamMetrics()
