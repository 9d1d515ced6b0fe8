"""At-least-once consumer loop: process, then commit; poison records to the DLQ; graceful stop.

A handler raises `Retryable` when the record should be tried again later: only its partition waits (paused,
positioned back on the record) while the others flow, and after the retry budget the record is parked in the
stage's retry topic (shared/kafka/retry.py). Any other exception dead-letters the record and the loop goes on.

No round trip per record: records are fetched in batches (`consume`), the next offset of each partition is
remembered locally, and offsets are committed every `commit_every` records or `commit_interval_s` — after
`before_commit` (the handler's buffered writes) and after the dead letters and parked copies are delivered, so
a committed offset never runs ahead of the effects it stands for. A crash replays at most the uncommitted
batch. Rebalance callbacks only run inside `consume()`, between records: a partition revoked there is never
processed, sought or committed by this consumer again.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, cast

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition
from prometheus_client import Counter

from shared.kafka.config import consumer_config
from shared.kafka.deadletter import dead_letter
from shared.kafka.producer import EventProducer
from shared.kafka.records import Record, topic_partition
from shared.kafka.retry import Parked, PartitionWaits, Retryable, apply_retry
from shared.metrics import DEAD_LETTERED, PROCESSED
from shared.retry import RetryPolicy
from shared.settings import Settings

log = logging.getLogger(__name__)

__all__ = ["ConsumerLoop", "Retryable", "StopSignal"]


class StopSignal:
    """A stop flag set by SIGTERM/SIGINT (or by code, for tests and embedded runs)."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def set(self, *_: object) -> None:
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    def wait(self, seconds: float) -> bool:
        return self._event.wait(seconds)

    def install(self) -> StopSignal:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self.set)
            signal.signal(signal.SIGINT, self.set)
        return self


Handler = Callable[[Record], None]


class ConsumerLoop:
    def __init__(
        self,
        settings: Settings,
        *,
        service: str,
        group: str,
        topics: Iterable[str],
        handler: Handler,
        stop: StopSignal | None = None,
        commit_every: int = 200,
        commit_interval_s: float = 1.0,
        batch_size: int = 500,
        max_batch_s: float = 30.0,
        max_backoff_s: float = 30.0,
        retry_topic: str | None = None,
        policy: RetryPolicy | None = None,
        extra_config: dict[str, Any] | None = None,
        on_idle: Callable[[], None] | None = None,
        before_commit: Callable[[], None] | None = None,
    ) -> None:
        self.settings = settings
        self.service = service
        self.topics = list(topics)
        self.handler = handler
        self.stop = stop or StopSignal()
        self.commit_every = commit_every
        self.commit_interval_s = commit_interval_s
        self.batch_size = batch_size
        # A slow handler (a remote call per record) must not keep the loop away from consume() for long: past
        # this, the rest of the batch is rewound and fetched again (max.poll.interval.ms is 300 s by default).
        self.max_batch_s = max_batch_s
        self.policy = policy or settings.retry_policy(max_backoff_s)
        # Records that keep failing transiently are parked here and retried from here (None: they wait in place).
        self.retry_topic = retry_topic
        self.on_idle = on_idle
        # Called before every offset commit: a handler that buffers its writes (e.g. one DB transaction per
        # batch) flushes them here, so an offset is never committed ahead of the writes it stands for.
        self.before_commit = before_commit
        cfg = consumer_config(settings, group, f"{service}-consumer") | {"enable.partition.eof": True}
        self.consumer = Consumer(cfg | (extra_config or {}))
        self.dlq = EventProducer(settings, f"{service}-dlq")
        self.waits = PartitionWaits(self.consumer)
        self._uncommitted = 0
        self._last_commit = time.monotonic()
        # Next offset to commit per (topic, partition): processed, not yet committed.
        self._to_store: dict[tuple[str, int], int] = {}
        self._metrics: dict[str, Counter] = {}
        self.processed = 0
        self.dead_lettered = 0
        self.parked = 0
        self.eof: set[tuple[str, int]] = set()

    @property
    def _assigned(self) -> set[tuple[str, int]]:
        return self.waits.owned

    # -------------------------------------------------------------------------------------------- run
    def run(self) -> None:
        topics = self.topics + ([self.retry_topic] if self.retry_topic else [])
        self.consumer.subscribe(topics, on_revoke=self._on_revoke, on_assign=self._on_assign, on_lost=self._on_revoke)
        log.info("%s consuming %s", self.service, ", ".join(topics))
        try:
            while not self.stop.is_set():
                self.waits.release_due(time.monotonic())
                batch = self.consumer.consume(self.batch_size, self.waits.timeout(time.monotonic(), 0.5))
                if not batch:
                    self._maybe_commit(force=self._uncommitted > 0)
                    if self.on_idle:
                        self.on_idle()
                    continue
                began = time.monotonic()
                for i, msg in enumerate(batch):
                    if self.stop.is_set():
                        break  # the rest stays uncommitted and is redelivered
                    if time.monotonic() - began > self.max_batch_s:
                        self._rewind(batch[i:])
                        break
                    if err := msg.error():
                        if err.code() == KafkaError._PARTITION_EOF:
                            self.eof.add(topic_partition(msg))
                            continue
                        if err.fatal():
                            raise KafkaException(err)
                        log.warning("consumer error: %s", err)
                        continue
                    tp = topic_partition(msg)
                    if not self.waits.owns(tp) or self.waits.blocked(tp):
                        continue  # revoked (the new owner reads it), or waiting: fetched again when resumed
                    self.eof.discard(tp)
                    self._process(msg)
        finally:
            self.close()

    def _rewind(self, rest: list[Message]) -> None:
        """Fetch these records again: seek each owned, running partition back to its first one not processed."""
        first: dict[tuple[str, int], int] = {}
        for m in rest:
            tp = topic_partition(m)
            if not m.error() and self.waits.owns(tp) and not self.waits.blocked(tp) and tp not in first:
                first[tp] = cast(int, m.offset())  # set on every consumed message
        for (topic, partition), offset in first.items():
            self.consumer.seek(TopicPartition(topic, partition, offset))

    def _process(self, msg: Message) -> None:
        """One record: handled, dead-lettered or parked (its offset then stored), or left waiting."""
        at = Record.from_message(msg)
        tp = (at.topic, at.partition)
        rec, parks = at, 0
        if at.topic == self.retry_topic:
            parked = Parked.from_record(at)
            if parked is None:
                log.error("%s: %s[%d]@%d is not a parked record, skipped", self.service, *tp, at.offset)
                self._store(at)
                return
            if (due_in := parked.due_in()) > 0:
                self.waits.wait(tp, at.offset, time.monotonic() + due_in)  # not due yet: not an attempt
                return
            rec, parks = parked.record, parked.parks
        try:
            self.handler(rec)
            self._processed_counter(rec.topic).inc()
        except Retryable as e:
            r = apply_retry(
                self.policy,
                self.waits,
                at,
                rec,
                e,
                parks=parks,
                service=self.service,
                retry_topic=self.retry_topic,
                now=time.monotonic(),
            )
            if r.waiting:
                return
            if r.parked is not None:
                self.dlq.produce(r.parked)
                self.parked += 1
            else:
                assert r.give_up is not None
                self._dead_letter(rec, r.give_up)
        except Exception as e:  # poison: dead-letter and move on (delivered before the offset is committed)
            self._dead_letter(rec, e)
        self._store(at)

    def _dead_letter(self, rec: Record, error: BaseException) -> None:
        self.dlq.produce(dead_letter(rec, error, self.service))
        DEAD_LETTERED.labels(self.service, rec.topic).inc()
        self.dead_lettered += 1

    def _store(self, at: Record) -> None:
        """The record at this position is settled: its offset goes with the next commit (if still ours)."""
        tp = (at.topic, at.partition)
        self.waits.done(tp)
        if not self.waits.owns(tp):
            return
        self._to_store[tp] = at.offset + 1
        self.processed += 1
        self._uncommitted += 1
        self._maybe_commit()

    def _processed_counter(self, topic: str) -> Counter:
        """The labelled counter, looked up once per topic rather than once per record."""
        counter = self._metrics.get(topic)
        if counter is None:
            counter = self._metrics[topic] = PROCESSED.labels(self.service, topic)
        return counter

    # -------------------------------------------------------------------------------------- commits
    def _maybe_commit(self, force: bool = False) -> None:
        due = self._uncommitted >= self.commit_every or (time.monotonic() - self._last_commit) >= self.commit_interval_s
        if self._uncommitted and (force or due):
            self._commit_processed()

    def _commit_processed(self) -> None:
        if not self._uncommitted:
            return
        if self.before_commit:
            self.before_commit()
        self.dlq.flush()
        offsets = [TopicPartition(t, p, o) for (t, p), o in self._to_store.items() if self.waits.owns((t, p))]
        if offsets:
            try:
                self.consumer.commit(offsets=offsets, asynchronous=False)
            except KafkaException as e:
                err: KafkaError = e.args[0]
                if err.fatal():
                    raise
                if err.code() != KafkaError._NO_OFFSET:
                    # The broker restarting, the coordinator moving, the group rebalancing: the offsets are kept
                    # and committed with the next batch (or redelivered to the partition's next owner: the
                    # handlers are idempotent). Raising here used to end the service whenever the broker was down.
                    log.warning("%s: offset commit failed, retried with the next one: %s", self.service, err)
                    self._last_commit = time.monotonic()
                    return
        self._to_store.clear()
        self._uncommitted = 0
        self._last_commit = time.monotonic()

    def _on_revoke(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        try:
            self._commit_processed()
        except KafkaException as e:
            log.warning("commit on revoke failed: %s", e)
        self.waits.revoked(partitions)
        for tp in partitions:
            self._to_store.pop((tp.topic, tp.partition), None)

    def _on_assign(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.waits.assigned(partitions)
        log.info("%s assigned %s", self.service, [f"{p.topic}[{p.partition}]" for p in partitions])

    def close(self) -> None:
        try:
            self._commit_processed()
        except KafkaException as e:  # stopping anyway: what was not committed is redelivered
            log.warning("%s: last offset commit failed: %s", self.service, e)
        finally:
            self.consumer.close()
            self.dlq.close()
            log.info(
                "%s stopped after %d record(s), %d dead-lettered, %d parked",
                self.service,
                self.processed,
                self.dead_lettered,
                self.parked,
            )
