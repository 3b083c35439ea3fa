"""The faust app: one agent per selected role (workers.roles), each on the role's topic.

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
from aiokafka.errors import KafkaConnectionError, KafkaError, KafkaTimeoutError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from contracts import CODECS, Event, RecstreamError, topics
from streams.deadletter import dead_letter
from streams.edge import BatchEdge
from streams.kafka import KafkaProducerResource, faust_credentials
from streams.metrics import METRICS
from workers.outputs import Output
from workers.roles import Role, consumer_group
from workers.runtime import Handler
from workers.settings import Settings
from workers.validation import Plausibility, check_plausible

__all__ = ["BatchProcessor", "Health", "RecstreamApp", "create_app"]

logger = logging.getLogger(__name__)

# Infrastructure errors that pass: retry the batch (without acking) rather than
# dead-letter valid input. Anything else that is not a RecstreamError is a bug.
_TRANSIENT = (RedisConnectionError, RedisTimeoutError, KafkaConnectionError, KafkaTimeoutError)


@dataclass
class Health:
    """Liveness/readiness facts, per role (agents never mask each other)."""

    ready: bool = False
    in_flight_since: dict[str, float] = field(default_factory=dict)
    retrying: dict[str, str] = field(default_factory=dict)
    # Dependencies that do not answer their probe now (see streams.dependencies).
    failing: dict[str, str] = field(default_factory=dict)
    # Why the worker is not processing yet (a dependency still coming up).
    waiting_for: str = ""

    def stalled(self, after_s: float) -> list[str]:
        """Roles whose batch has been in hand longer than ``after_s`` without a retry
        loop to explain it: a stuck consumer (a dependency outage shows in readiness)."""
        now = time.monotonic()
        return [
            role
            for role, since in self.in_flight_since.items()
            if now - since > after_s and role not in self.retrying
        ]


class BatchProcessor:
    """Decode -> role handler -> send -> (caller acks). Independent of faust's types."""

    def __init__(
        self,
        handlers: dict[str, Handler],
        producer: KafkaProducerResource,
        health: Health,
        settings: Settings,
    ) -> None:
        self.handlers = handlers
        self.producer = producer
        self.health = health
        self.settings = settings
        stream = settings.stream
        self.plausibility = Plausibility(
            ts_floor_ms=stream.ts_floor_ms,
            max_future_skew_ms=stream.max_future_skew_ms,
            rating_min=stream.rating_min,
            rating_max=stream.rating_max,
        )

    def _decode(
        self, topic: str, records: Sequence[Any]
    ) -> tuple[list[Event], list[Any], list[Output]]:
        """(valid events, their records, dead letters for the rest)."""
        codec = CODECS[topic]
        now_ms = int(time.time() * 1000)
        valid: list[Event] = []
        valid_records: list[Any] = []
        dead: list[Output] = []
        for r in records:
            try:
                event = codec.decode(r.value)
                check_plausible(topic, r.key, event, self.plausibility, now_ms=now_ms)
            except RecstreamError as exc:
                dead.append(_dead(r, exc))
            else:
                valid.append(event)
                valid_records.append(r)
        return valid, valid_records, dead

    async def process(self, role: Role, records: Sequence[Any]) -> None:
        """Process records (objects with topic/partition/offset/key/value) of one role."""
        started = time.perf_counter()
        topic = role.consumes
        self.health.in_flight_since[role.name] = time.monotonic()
        valid, valid_records, dead = self._decode(topic, records)
        if not role.dead_letters:
            dead = []  # the topic's owner role dead-letters these
        outputs = await self._run(role.name, valid, valid_records)
        await self._send(role.name, outputs + dead)
        n_dead = len(dead) + sum(o.topic == topics.DEAD_LETTERS for o in outputs)
        METRICS.events_in.labels(topic).inc(len(records))
        METRICS.dead_letters.labels(topic).inc(n_dead)
        METRICS.batch_size.labels(topic).observe(len(records))
        for o in outputs:
            METRICS.events_out.labels(o.topic).inc()
            route = getattr(o.event, "route", None)
            if route is not None:
                rung = getattr(o.event, "rung", None) or getattr(o.event, "source", None) or ""
                METRICS.served.labels(o.topic, route, rung).inc()
            total = getattr(o.event, "timings_ms", {}).get("total")
            if total is not None:
                METRICS.latency.labels(o.topic).observe(total / 1000)
        self.health.in_flight_since.pop(role.name, None)
        spans: dict[int, list[int]] = {}
        for r in records:
            span = spans.setdefault(r.partition, [r.offset, r.offset])
            span[0], span[1] = min(span[0], r.offset), max(span[1], r.offset)
        logger.info(
            "batch role=%s offsets=%s in=%d valid=%d dead=%d out=%d ms=%.1f",
            role.name,
            ",".join(f"{p}:{lo}-{hi}" for p, (lo, hi) in sorted(spans.items())),
            len(records),
            len(valid),
            n_dead,
            len(outputs) + len(dead) - n_dead,
            (time.perf_counter() - started) * 1000,
        )

    async def _run(self, role: str, valid: list[Event], records: Sequence[Any]) -> list[Output]:
        if not valid:
            return []
        handler = self.handlers[role]
        delay = 0.1
        while True:
            try:
                outputs = await handler(valid)
                self.health.retrying.pop(role, None)
                return outputs
            except RecstreamError as exc:
                if not exc.retriable:
                    return [_dead(r, exc) for r in records]
                reason = f"{type(exc).__name__}: {exc}"
            except _TRANSIENT as exc:
                reason = f"{type(exc).__name__}: {exc}"
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a bug must not kill the agent: park the batch
                logger.exception("unexpected error in role %s; dead-lettering the batch", role)
                return [_dead(r, exc) for r in records]
            self.health.retrying[role] = reason
            logger.warning("retriable error in role %s, retrying in %.1fs: %s", role, delay, reason)
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 10.0)

    async def send_outputs(self, outputs: list[Output]) -> None:
        """Send outputs made outside a batch (a deadline guard's fallback answer)."""
        await self._send("deadline", outputs)
        for o in outputs:
            METRICS.events_out.labels(o.topic).inc()

    async def _send(self, role: str, outputs: list[Output]) -> None:
        """Send and wait for every ack; retry only the sends that failed, only on
        Kafka errors (anything else is a bug and must not loop forever)."""
        settings = self.settings.kafka
        pending = [
            (settings.topic(o.topic), o.key, CODECS[o.topic].encode(o.event)) for o in outputs
        ]
        delay = 0.1
        while pending:
            producer = self.producer.producer
            futures = [await producer.send(t, value=v, key=k) for t, k, v in pending]
            results = await asyncio.gather(*futures, return_exceptions=True)
            failed = [
                p for p, r in zip(pending, results, strict=True) if isinstance(r, BaseException)
            ]
            errors = [r for r in results if isinstance(r, BaseException)]
            for error in errors:
                if not isinstance(error, KafkaError):
                    raise error
            if failed:
                self.health.retrying[f"{role}:send"] = f"{type(errors[0]).__name__}: {errors[0]}"
                logger.warning(
                    "%d sends failed, retrying in %.1fs: %s", len(failed), delay, errors[0]
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
            else:
                self.health.retrying.pop(f"{role}:send", None)
            pending = failed


def _dead(record: Any, exc: BaseException) -> Output:
    """The dead-letter output of one record (keyed like the record; keyless stays keyless)."""
    letter = dead_letter(
        record.topic, record.partition, record.offset, record.key, record.value, exc
    )
    return Output(topics.DEAD_LETTERS, record.key, letter)


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


class RecstreamApp(faust.App):
    """faust's App, closing our resources only after the agents have stopped.

    faust's ``on_before_shutdown`` fires before the agents stop, which would
    close Redis and the producer under the batch in hand; ``on_shutdown``
    runs after the children (agents) are stopped.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.closers: list[Callable[[], Awaitable[None]]] = []
        self.edges: list[BatchEdge] = []

    async def on_stop(self) -> None:
        # The batch edges finish and commit their batch in hand first, while
        # Redis and the producer are still open.
        await asyncio.gather(*(edge.stop() for edge in self.edges))
        await super().on_stop()

    async def on_shutdown(self) -> None:
        for close in reversed(self.closers):
            try:
                await close()
            except Exception:
                logger.exception("closing a resource failed")
        await super().on_shutdown()


def create_app(
    settings: Settings,
    roles: Sequence[Role],
    processor_factory: Callable[[], Awaitable[BatchProcessor]],
    health: Health,
) -> RecstreamApp:
    """A faust app with one agent per role, in the roles' consumer group; the
    roles in ``settings.stream.batch_edge_roles`` run on a ``BatchEdge`` instead
    (their own consumer group each, see streams.edge)."""
    edge_roles = [r for r in roles if r.name in settings.stream.batch_edge_roles]
    agent_roles = [r for r in roles if r not in edge_roles]
    group = consumer_group(settings.stream.group_prefix, roles)
    datadir = settings.home / "faust" / group
    datadir.mkdir(parents=True, exist_ok=True)
    app = RecstreamApp(
        group,
        broker=[f"kafka://{h}" for h in settings.kafka.bootstrap_servers.split(",")],
        broker_credentials=faust_credentials(settings.kafka),
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
        web_bind=settings.stream.web_bind,
        web_in_thread=False,
        producer_acks=-1,
        broker_commit_interval=1.0,
        store="memory://",
        table_cleanup_interval=3600.0,
        # faust keeps a small data folder per app: under RECSTREAM_HOME, never the cwd.
        datadir=str(datadir),
        consumer_group_instance_id=settings.stream.instance_id or None,
    )
    if not agent_roles:
        # Every role is on a batch edge: faust serves the web endpoints only (a
        # faust consumer without topics would fail to subscribe, and must not
        # join the edge's group).
        app.boot_strategy = app.BootStrategy(app, enable_kafka_consumer=False)
    # Every agent shares one processor (one model, one Redis pool, one producer):
    # memoise the future, so agents starting together do not each build one.
    opening: dict[str, asyncio.Future[BatchProcessor]] = {}
    within = settings.stream.batch_within_ms / 1000

    async def processor() -> BatchProcessor:
        if "p" not in opening or (opening["p"].done() and opening["p"].exception()):
            opening["p"] = asyncio.ensure_future(processor_factory())
        proc = await asyncio.shield(opening["p"])
        health.ready = True
        return proc

    for role in edge_roles:
        app.edges.append(BatchEdge(settings, role, processor))

    async def start_edges() -> None:
        for edge in app.edges:
            edge.start()

    app.task(start_edges)  # runs once the app has started

    for role in agent_roles:
        source = app.topic(settings.kafka.topic(role.consumes), value_type=bytes, key_type=bytes)

        async def agent(stream: Any, role: Role = role) -> None:
            proc = await processor()
            async for events in stream.noack_take(settings.stream.batch_max, within):
                records = [e.message for e in events]
                task = asyncio.ensure_future(proc.process(role, records))
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

        app.agent(source, name=f"{role.name}-agent")(agent)

    @app.page("/healthz")
    async def healthz(web: Any, request: Any) -> Any:
        stalled = health.stalled(settings.stream.stall_after_s)
        body = {
            "alive": not stalled,
            "stalled": stalled,
            "retrying": health.retrying,
            "waiting_for": health.waiting_for,
        }
        return web.json(body, status=503 if stalled else 200)

    @app.page("/readyz")
    async def readyz(web: Any, request: Any) -> Any:
        # Ready = resources open, the broker and Redis answer their probes, no
        # retry loop, and partitions assigned (before the group join finishes, a
        # "ready" worker would not consume anything).
        assigned = (not agent_roles or bool(app.consumer.assignment())) and all(
            edge.assigned for edge in app.edges
        )
        ok = health.ready and not health.retrying and not health.failing and assigned
        body = {
            "ready": ok,
            "failing": health.failing,
            "retrying": health.retrying,
            "waiting_for": health.waiting_for,
            "partitions_assigned": assigned,
        }
        return web.json(body, status=200 if ok else 503)

    @app.page("/metrics")
    async def metrics(web: Any, request: Any) -> Any:
        body, content_type = METRICS.render()
        # aiohttp takes the charset apart from the media type.
        return web.text(body.decode(), content_type=content_type.split(";")[0])

    return app
