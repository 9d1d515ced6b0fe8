"""At-least-once consumer loop: process, then commit; poison records to the DLQ; graceful stop.

A handler raises `Retryable` when the record should be tried again later (the partition waits; nothing
is committed past it). Any other exception dead-letters the record and the loop goes on.
"""

from __future__ import annotations

import logging
import random
import signal
import threading
import time
from collections.abc import Callable, Iterable

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from shared.kafka.config import consumer_config
from shared.kafka.deadletter import dead_letter
from shared.kafka.producer import EventProducer
from shared.kafka.records import Record
from shared.metrics import DEAD_LETTERED, PROCESSED, RETRIES
from shared.settings import Settings

log = logging.getLogger(__name__)


class Retryable(Exception):
    """Try this record again after a backoff; the partition does not advance meanwhile."""

    def __init__(self, message: str, *, delay_s: float | None = None) -> None:
        super().__init__(message)
        self.delay_s = delay_s


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
        max_backoff_s: float = 30.0,
        extra_config: dict | None = None,
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
        self.max_backoff_s = max_backoff_s
        self.on_idle = on_idle
        # Called before every offset commit: a handler that buffers its writes (e.g. one DB transaction per
        # batch) flushes them here, so an offset is never committed ahead of the writes it stands for.
        self.before_commit = before_commit
        cfg = consumer_config(settings, group, f"{service}-consumer") | {"enable.partition.eof": True}
        self.consumer = Consumer(cfg | (extra_config or {}))
        self.dlq = EventProducer(settings, f"{service}-dlq")
        self._uncommitted = 0
        self._last_commit = time.monotonic()
        self.processed = 0
        self.dead_lettered = 0
        self.eof: set[tuple[str, int]] = set()

    # -------------------------------------------------------------------------------------------- run
    def run(self) -> None:
        self.consumer.subscribe(self.topics, on_revoke=self._on_revoke, on_assign=self._on_assign)
        log.info("%s consuming %s", self.service, ", ".join(self.topics))
        try:
            while not self.stop.is_set():
                msg = self.consumer.poll(0.5)
                if msg is None:
                    self._maybe_commit(force=self._uncommitted > 0)
                    if self.on_idle:
                        self.on_idle()
                    continue
                if msg.error():
                    if msg.error().code() == KafkaError._PARTITION_EOF:
                        self.eof.add((msg.topic(), msg.partition()))
                        continue
                    if msg.error().fatal():
                        raise KafkaException(msg.error())
                    log.warning("consumer error: %s", msg.error())
                    continue
                self.eof.discard((msg.topic(), msg.partition()))
                self._process(Record.from_message(msg))
        finally:
            self.close()

    def _process(self, rec: Record) -> None:
        attempt = 0
        while True:
            try:
                self.handler(rec)
                PROCESSED.labels(self.service, rec.topic).inc()
                break
            except Retryable as e:
                attempt += 1
                delay = e.delay_s if e.delay_s is not None else backoff(attempt, cap=self.max_backoff_s)
                RETRIES.labels(self.service, rec.topic).inc()
                log.warning(
                    "%s: retrying %s[%d]@%d in %.1fs: %s", self.service, rec.topic, rec.partition, rec.offset, delay, e
                )
                # Keep the group membership alive while the partition waits.
                self._commit_processed()
                if self._sleep_polling(delay, rec):
                    return  # stopping: the record stays uncommitted and is redelivered
            except Exception as e:  # poison: dead-letter and move on
                self.dlq.produce(dead_letter(rec, e, self.service))
                self.dlq.flush()
                DEAD_LETTERED.labels(self.service, rec.topic).inc()
                self.dead_lettered += 1
                break
        self.consumer.store_offsets(offsets=[TopicPartition(rec.topic, rec.partition, rec.offset + 1)])
        self.processed += 1
        self._uncommitted += 1
        self._maybe_commit()

    def _sleep_polling(self, delay: float, rec: Record) -> bool:
        """Wait `delay` seconds without leaving the group: pause the partition and keep polling."""
        tp = [TopicPartition(rec.topic, rec.partition)]
        self.consumer.pause(tp)
        deadline = time.monotonic() + delay
        try:
            while time.monotonic() < deadline:
                if self.stop.is_set():
                    return True
                msg = self.consumer.poll(min(0.5, max(0.0, deadline - time.monotonic())))
                if msg is not None and not msg.error():
                    # Another partition's record: rewind it so it is read again after the wait.
                    self.consumer.seek(TopicPartition(msg.topic(), msg.partition(), msg.offset()))
        finally:
            self.consumer.resume(tp)
        return False

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
        try:
            self.consumer.commit(asynchronous=False)
        except KafkaException as e:
            if e.args[0].code() != KafkaError._NO_OFFSET:
                raise
        self._uncommitted = 0
        self._last_commit = time.monotonic()

    def _on_revoke(self, _consumer: Consumer, _partitions: list[TopicPartition]) -> None:
        try:
            self._commit_processed()
        except KafkaException as e:
            log.warning("commit on revoke failed: %s", e)

    def _on_assign(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        log.info("%s assigned %s", self.service, [f"{p.topic}[{p.partition}]" for p in partitions])

    def close(self) -> None:
        try:
            self._commit_processed()
        finally:
            self.consumer.close()
            self.dlq.close()
            log.info(
                "%s stopped after %d record(s), %d dead-lettered", self.service, self.processed, self.dead_lettered
            )


def backoff(attempt: int, *, base: float = 0.5, cap: float = 30.0) -> float:
    """Capped exponential backoff with full jitter."""
    return random.uniform(0, min(cap, base * (2 ** max(0, attempt - 1)))) + min(base, cap) / 2
