"""The faust app: one agent per input topic of the selected roles.

Each agent takes raw bytes in micro-batches (``noack_take``: nothing is acked
until we say so), decodes them with the contracts codecs, hands the valid
events to the pipeline, sends outputs and dead letters through an idempotent
producer, waits for the broker's acks, and only then acks the records, so
faust commits an offset only after the state write and the sends succeeded.

Errors: a record that cannot be decoded goes to the dead-letter topic with
its reason. A retriable error of the batch (Redis or Kafka unavailable) is
retried with capped exponential backoff without acking, so nothing is lost;
any other error dead-letters the batch's records with the reason, and the
agent keeps running.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import faust

from contracts import CODECS, Event, RecstreamError, topics
from streams.deadletter import dead_letter
from streams.kafka import KafkaProducerResource
from streams.metrics import METRICS
from workers.pipeline import Output, Pipeline
from workers.settings import Settings

__all__ = ["ROLES", "ROLE_TOPICS", "Health", "create_app"]

logger = logging.getLogger(__name__)

ROLE_TOPICS: dict[str, str] = {
    "interactions": topics.INTERACTIONS,
    "catalog": topics.CATALOG,
    "requests": topics.REQUESTS,
    "chat": topics.CHAT,
}
ROLES = (*ROLE_TOPICS, "all")

Handler = Callable[[Sequence[Any]], Awaitable[list[Output]]]


@dataclass
class Health:
    """Liveness/readiness facts the web endpoints report."""

    ready: bool = False
    last_progress: float = field(default_factory=time.monotonic)
    in_flight_since: float | None = None
    retrying: str | None = None

    def stalled(self, after_s: float) -> bool:
        """A batch in hand for longer than ``after_s`` means the consumer is stuck."""
        return (
            self.in_flight_since is not None and time.monotonic() - self.in_flight_since > after_s
        )


class BatchProcessor:
    """Decode -> pipeline -> send -> (caller acks). Independent of faust's types."""

    def __init__(self, pipeline: Pipeline, producer: KafkaProducerResource, health: Health) -> None:
        self.pipeline = pipeline
        self.producer = producer
        self.health = health
        self.handlers: dict[str, Handler] = {
            topics.INTERACTIONS: pipeline.on_interactions,
            topics.CATALOG: pipeline.on_catalog,
            topics.REQUESTS: pipeline.on_requests,
            topics.CHAT: pipeline.on_chat,
        }

    async def process(self, topic: str, records: Sequence[Any]) -> None:
        """Process records (objects with topic/partition/offset/key/value) of one topic."""
        started = time.perf_counter()
        self.health.in_flight_since = time.monotonic()
        codec = CODECS[topic]
        valid: list[Event] = []
        dead: list[Output] = []
        for r in records:
            try:
                valid.append(codec.decode(r.value))
            except RecstreamError as exc:
                dl = dead_letter(r.topic, r.partition, r.offset, r.key, r.value, exc)
                dead.append(Output(topics.DEAD_LETTERS, r.key or b"", dl))
        outputs = await self._run(topic, valid, records)
        await self._send(outputs + dead)
        METRICS.events_in.labels(topic).inc(len(records))
        METRICS.dead_letters.labels(topic).inc(
            len(dead) + sum(o.topic == topics.DEAD_LETTERS for o in outputs)
        )
        METRICS.batch_size.labels(topic).observe(len(records))
        for o in outputs:
            METRICS.events_out.labels(o.topic).inc()
            total = getattr(o.event, "timings_ms", {}).get("total")
            if total is not None:
                METRICS.latency.labels(o.topic).observe(total / 1000)
        self.health.in_flight_since = None
        self.health.last_progress = time.monotonic()
        spans: dict[int, list[int]] = {}
        for r in records:
            span = spans.setdefault(r.partition, [r.offset, r.offset])
            span[0], span[1] = min(span[0], r.offset), max(span[1], r.offset)
        logger.info(
            "batch topic=%s offsets=%s in=%d valid=%d dead=%d out=%d ms=%.1f",
            topic,
            ",".join(f"{p}:{lo}-{hi}" for p, (lo, hi) in sorted(spans.items())),
            len(records),
            len(valid),
            len(dead),
            len(outputs),
            (time.perf_counter() - started) * 1000,
        )

    async def _run(self, topic: str, valid: list[Event], records: Sequence[Any]) -> list[Output]:
        if not valid:
            return []
        handler = self.handlers[topic]
        delay = 0.1
        while True:
            try:
                outputs = await handler(valid)
                self.health.retrying = None
                return outputs
            except RecstreamError as exc:
                if not exc.retriable:
                    return self._dead_batch(records, exc)
                self.health.retrying = f"{type(exc).__name__}: {exc}"
                logger.warning("retriable error on %s, retrying in %.1fs: %s", topic, delay, exc)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a bug must not kill the agent: park the batch
                logger.exception("unexpected error on %s; dead-lettering the batch", topic)
                return self._dead_batch(records, exc)
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 10.0)

    def _dead_batch(self, records: Sequence[Any], exc: BaseException) -> list[Output]:
        return [
            Output(
                topics.DEAD_LETTERS,
                r.key or b"",
                dead_letter(r.topic, r.partition, r.offset, r.key, r.value, exc),
            )
            for r in records
        ]

    async def _send(self, outputs: list[Output]) -> None:
        if not outputs:
            return
        delay = 0.1
        while True:
            try:
                producer = self.producer.producer
                settings = self.pipeline.settings.kafka
                futures = [
                    await producer.send(
                        settings.topic(o.topic), value=CODECS[o.topic].encode(o.event), key=o.key
                    )
                    for o in outputs
                ]
                await asyncio.gather(*futures)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # The idempotent producer dedupes retried sends; consumers dedupe by id.
                logger.warning("send failed, retrying in %.1fs: %s", delay, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)


def _record_lag(app: faust.App, events: Sequence[Any]) -> None:
    """Consumer lag per partition: the broker's high watermark minus our position."""
    last: dict[Any, int] = {}
    for e in events:
        tp = e.message.tp
        last[tp] = max(last.get(tp, -1), e.message.offset)
    for tp, offset in last.items():
        try:
            highwater = app.consumer.highwater(tp)
        except Exception:  # not known yet (no fetch response for it): skip
            continue
        if highwater is not None:
            METRICS.lag.labels(tp.topic, str(tp.partition)).set(max(highwater - offset - 1, 0))


def create_app(
    settings: Settings,
    roles: Sequence[str],
    processor_factory: Callable[[], Awaitable[BatchProcessor]],
    health: Health,
) -> faust.App:
    """A faust app consuming the roles' topics; one consumer group per role set."""
    role_set = sorted(ROLE_TOPICS) if "all" in roles else sorted(set(roles))
    group = f"{settings.stream.group_prefix}-{'-'.join(role_set) if len(role_set) < 4 else 'all'}"
    app = faust.App(
        group,
        broker=[f"kafka://{h}" for h in settings.kafka.bootstrap_servers.split(",")],
        value_serializer="raw",
        key_serializer="raw",
        # Topics exist on purpose (recstream topics); faust must not create any.
        topic_allow_declare=False,
        topic_disable_leader=True,
        # Fast group joins in dev/CI; a dead worker's partitions move in ~10 s.
        broker_session_timeout=10.0,
        broker_heartbeat_interval=3.0,
        consumer_auto_offset_reset="earliest",
        # Never wait for buffers to drain on rebalance (faust's wait_empty livelock).
        stream_wait_empty=False,
        web_enabled=True,
        web_port=settings.stream.web_port,
        web_bind="127.0.0.1",
        web_in_thread=False,
        producer_acks=-1,
        broker_commit_interval=1.0,
        store="memory://",
        table_cleanup_interval=3600.0,
    )
    state: dict[str, BatchProcessor] = {}
    within = settings.stream.batch_within_ms / 1000

    async def processor() -> BatchProcessor:
        if "p" not in state:
            state["p"] = await processor_factory()
            health.ready = True
        return state["p"]

    for role in role_set:
        contract_topic = ROLE_TOPICS[role]
        source = app.topic(settings.kafka.topic(contract_topic), value_type=bytes, key_type=bytes)

        async def agent(stream: Any, contract_topic: str = contract_topic) -> None:
            proc = await processor()
            async for events in stream.noack_take(settings.stream.batch_max, within):
                records = [e.message for e in events]
                task = asyncio.ensure_future(proc.process(contract_topic, records))
                try:
                    await asyncio.shield(task)
                except asyncio.CancelledError:
                    # Shutting down: finish the batch in hand (bounded), then ack it.
                    try:
                        await asyncio.wait_for(task, timeout=15)
                    except BaseException:
                        raise asyncio.CancelledError from None
                    for e in events:
                        await stream.ack(e)
                    raise
                for e in events:
                    await stream.ack(e)
                _record_lag(app, events)

        app.agent(source, name=f"{role}-agent")(agent)

    @app.page("/healthz")
    async def healthz(web: Any, request: Any) -> Any:
        stalled = health.stalled(settings.stream.stall_after_s)
        body = {"alive": not stalled, "retrying": health.retrying}
        return web.json(body, status=503 if stalled else 200)

    @app.page("/readyz")
    async def readyz(web: Any, request: Any) -> Any:
        # Ready = resources open, no retry loop, and partitions assigned (before
        # the group join finishes, a "ready" worker would not consume anything).
        ok = health.ready and health.retrying is None and bool(app.consumer.assignment())
        return web.json({"ready": ok, "retrying": health.retrying}, status=200 if ok else 503)

    @app.page("/metrics")
    async def metrics(web: Any, request: Any) -> Any:
        body, content_type = METRICS.render()
        # aiohttp takes the charset apart from the media type.
        return web.text(body.decode(), content_type=content_type.split(";")[0])

    return app
