"""The batch edge: a role consumed straight from aiokafka, batch by batch, no faust Stream.

Why: faust hands records to an agent one at a time (flow control, an Event,
a queue put, an ack each). On the interactions role, whose per-record work is
a decode and a Redis script, that machinery took 55-65% of the worker's busy
time (benchmarks/results/2026-11-30-cpu-2core/findings.md). Here a batch is
one ``getmany``: decode, state write, sends acked, then the batch's offsets
are committed. Nothing else moves an offset, so a record is committed only
after its state write, through any rebalance or stop:

* the batch in hand is processed and committed under a lock; the rebalance
  listener takes that lock before the partitions go, so a revocation waits
  for the batch to finish (and to commit) instead of racing it;
* a commit that loses to a rebalance (the partition moved on) fails and is
  logged: the new owner re-reads those records, and the idempotent state
  write and deterministic output ids make the repeat harmless;
* offsets are committed only for partitions still assigned, never past a
  record that was processed.

The role's consumer group is its own (``<prefix>-<role>``), also when the
process runs other roles in faust: one Kafka member per group, the same
group a replica that runs only this role joins.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError

from streams.kafka import client_security
from streams.metrics import METRICS
from workers.roles import Role, consumer_group
from workers.settings import Settings

__all__ = ["BatchEdge"]

logger = logging.getLogger(__name__)


class Processor(Protocol):
    """What the edge hands a batch to (streams.app.BatchProcessor): decode, state
    write, sends acked; returns once the batch may be committed."""

    async def process(self, role: Role, records: Sequence[Any]) -> None: ...


# A stop waits this long for the batch in hand (a Redis outage can hold it in
# its retry loop); after that it stops without committing (the records are
# re-read by the next owner: a repeat, never a loss).
_STOP_GRACE_S = 15.0


class _FinishBeforeRevoke(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, edge: BatchEdge) -> None:
        self.edge = edge

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        # Wait for the batch in hand (processed and committed under the lock).
        async with self.edge.batch_lock:
            logger.info("edge %s: partitions revoked %s", self.edge.role.name, _tps(revoked))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        logger.info("edge %s: partitions assigned %s", self.edge.role.name, _tps(assigned))


class BatchEdge:
    """One role's consume -> process -> commit loop, run as a task of the worker."""

    def __init__(
        self,
        settings: Settings,
        role: Role,
        processor: Callable[[], Awaitable[Processor]],
    ) -> None:
        self.settings = settings
        self.role = role
        self.group = consumer_group(settings.stream.group_prefix, [role])
        self._processor = processor
        self.batch_lock = asyncio.Lock()
        self._consumer: AIOKafkaConsumer | None = None
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._next_offset: dict[TopicPartition, int] = {}

    @property
    def assigned(self) -> bool:
        return self._consumer is not None and bool(self._consumer.assignment())

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        """Finish (and commit) the batch in hand, then leave the group."""
        self._stopping.set()
        if self._task is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(self._task), timeout=_STOP_GRACE_S + 15)
        except TimeoutError:
            logger.warning("edge %s: did not stop in time; cancelling", self.role.name)
            self._task.cancel()
        except Exception:
            logger.exception("edge %s: failed", self.role.name)

    async def _run(self) -> None:
        stream = self.settings.stream
        kafka = self.settings.kafka
        proc = await self._processor()
        consumer = AIOKafkaConsumer(
            bootstrap_servers=kafka.bootstrap_servers,
            client_id=f"{kafka.client_id}-{self.role.name}",
            group_id=self.group,
            group_instance_id=(
                f"{stream.instance_id}-{self.role.name}" if stream.instance_id else None
            ),
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            # Same membership timing as the faust agents (streams.app).
            session_timeout_ms=10_000,
            heartbeat_interval_ms=3_000,
            max_poll_records=stream.batch_max,
            **client_security(kafka),
        )
        consumer.subscribe([kafka.topic(self.role.consumes)], listener=_FinishBeforeRevoke(self))
        self._consumer = consumer
        await _start_until_up(consumer, self._stopping)
        try:
            while not self._stopping.is_set():
                fetched = await consumer.getmany(
                    timeout_ms=stream.batch_within_ms, max_records=stream.batch_max
                )
                # Per partition, the offset after the batch's last record.
                ends = {tp: batch[-1].offset + 1 for tp, batch in fetched.items()}
                self._next_offset.update(ends)
                self._record_lag(consumer)
                if not fetched:
                    continue
                async with self.batch_lock:
                    records = [r for batch in fetched.values() for r in batch]
                    task = asyncio.ensure_future(proc.process(self.role, records))
                    try:
                        await asyncio.shield(task)
                    except asyncio.CancelledError:
                        await asyncio.wait_for(task, timeout=_STOP_GRACE_S)
                        await self._commit(consumer, ends)
                        raise
                    await self._commit(consumer, ends)
        finally:
            self._consumer = None
            await consumer.stop()  # leaves the group: its partitions move at once

    async def _commit(self, consumer: AIOKafkaConsumer, ends: dict[TopicPartition, int]) -> None:
        assigned = consumer.assignment()
        offsets = {tp: end for tp, end in ends.items() if tp in assigned}
        if not offsets:
            return
        try:
            await consumer.commit(offsets)
        except (CommitFailedError, KafkaError) as exc:
            # The partitions moved (or the broker is away): the next owner, or this
            # consumer after the rejoin, re-reads from the last committed offset.
            logger.warning("edge %s: commit of %s failed: %s", self.role.name, offsets, exc)

    def _record_lag(self, consumer: AIOKafkaConsumer) -> None:
        """Lag per assigned partition on every poll, so an idle consumer reports its
        true lag (0 when caught up), not the figure of its last batch."""
        for tp in consumer.assignment():
            highwater = consumer.highwater(tp)
            position = self._next_offset.get(tp)
            if highwater is None or position is None:
                continue  # no fetch response (or no record) for it yet
            METRICS.lag.labels(tp.topic, str(tp.partition)).set(max(highwater - position, 0))


async def _start_until_up(consumer: AIOKafkaConsumer, stopping: asyncio.Event) -> None:
    delay = 0.5
    while True:
        try:
            await consumer.start()
            return
        except KafkaError as exc:
            if stopping.is_set():
                raise
            logger.warning("edge consumer cannot start (%s); retrying in %.1fs", exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)


def _tps(tps: set[TopicPartition]) -> str:
    return ",".join(f"{tp.topic}:{tp.partition}" for tp in sorted(tps)) or "-"
