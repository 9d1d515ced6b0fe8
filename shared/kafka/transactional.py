"""Consume-transform-produce in Kafka transactions: the outputs and the consumed offset commit together.

`transform(record)` returns the records to produce for one input record. Each input record is one
transaction (its outputs plus `send_offsets_to_transaction`). A transform that raises a non-retryable
error produces the record's dead-letter copy in that same transaction instead, so nothing blocks.

Atomicity must not rest on the broker alone (the embedded broker shows aborted records to
read_committed consumers): outputs carry deterministic event ids and downstream acts on a revision
only once its end marker and all its lines are in.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from shared.kafka.config import consumer_config, instance_id, producer_config
from shared.kafka.consumer import Retryable, StopSignal, backoff
from shared.kafka.deadletter import dead_letter
from shared.kafka.records import Out, Record
from shared.metrics import DEAD_LETTERED, PROCESSED, RETRIES
from shared.settings import Settings

log = logging.getLogger(__name__)

Transform = Callable[[Record], Iterable[Out]]


class TransactionalProcessor:
    def __init__(
        self,
        settings: Settings,
        *,
        service: str,
        group: str,
        topics: Iterable[str],
        transform: Transform,
        stop: StopSignal | None = None,
        transactional_id: str | None = None,
        max_backoff_s: float = 30.0,
        after_commit: Callable[[Record], None] | None = None,
    ) -> None:
        self.service = service
        self.topics = list(topics)
        self.transform = transform
        self.after_commit = after_commit
        self.stop = stop or StopSignal()
        self.max_backoff_s = max_backoff_s
        self.consumer = Consumer(consumer_config(settings, group, f"{service}-consumer", read_committed=True))
        txn_id = transactional_id or f"{group}.{instance_id()}"
        self.producer = Producer(producer_config(settings, f"{service}-producer", transactional_id=txn_id))
        self.producer.init_transactions(30)
        self.processed = 0
        self.dead_lettered = 0

    def run(self) -> None:
        self.consumer.subscribe(self.topics)
        log.info("%s consuming %s transactionally", self.service, ", ".join(self.topics))
        try:
            while not self.stop.is_set():
                msg = self.consumer.poll(0.5)
                if msg is None:
                    continue
                if msg.error():
                    if msg.error().fatal():
                        raise KafkaException(msg.error())
                    if msg.error().code() != KafkaError._PARTITION_EOF:
                        log.warning("consumer error: %s", msg.error())
                    continue
                self._process(Record.from_message(msg))
        finally:
            self.consumer.close()
            self.producer.close()

    def _process(self, rec: Record) -> None:
        attempt = 0
        while not self.stop.is_set():
            try:
                outs = list(self.transform(rec))
            except Retryable as e:
                attempt += 1
                RETRIES.labels(self.service, rec.topic).inc()
                delay = e.delay_s if e.delay_s is not None else backoff(attempt, cap=self.max_backoff_s)
                log.warning(
                    "%s: retrying %s[%d]@%d in %.1fs: %s", self.service, rec.topic, rec.partition, rec.offset, delay, e
                )
                self._wait(delay, rec)
                continue
            except Exception as e:
                outs = [dead_letter(rec, e, self.service)]
                DEAD_LETTERED.labels(self.service, rec.topic).inc()
                self.dead_lettered += 1
            if self._commit(rec, outs):
                PROCESSED.labels(self.service, rec.topic).inc()
                self.processed += 1
                if self.after_commit:
                    self.after_commit(rec)
                return
            attempt += 1
            time.sleep(backoff(attempt, cap=5))
        # Stopping mid-record: nothing was committed for it; it is redelivered after restart.

    def _commit(self, rec: Record, outs: list[Out]) -> bool:
        """One transaction: outputs + the offset after `rec`. False when aborted (the record is retried).

        A record with no outputs needs no atomicity: its offset is committed directly. (The embedded
        broker also drops the offsets of a transaction that produced nothing.) At worst such a record is
        redelivered and found to need nothing again.
        """
        offsets = [TopicPartition(rec.topic, rec.partition, rec.offset + 1)]
        if not outs:
            try:
                self.consumer.commit(offsets=offsets, asynchronous=False)
                return True
            except KafkaException as e:
                log.warning(
                    "%s: offset commit for %s[%d]@%d failed: %s", self.service, rec.topic, rec.partition, rec.offset, e
                )
                self._rewind(rec)
                return False
        try:
            self.producer.begin_transaction()
            for o in outs:
                while True:
                    try:
                        self.producer.produce(o.topic, key=o.key, value=o.value, headers=list(o.headers.items()))
                        break
                    except BufferError:
                        self.producer.poll(0.1)
            self.producer.send_offsets_to_transaction(offsets, self.consumer.consumer_group_metadata(), 30)
            self.producer.commit_transaction(60)
            return True
        except KafkaException as e:
            err: KafkaError = e.args[0]
            if err.txn_requires_abort():
                log.warning(
                    "%s: aborting transaction for %s[%d]@%d: %s",
                    self.service,
                    rec.topic,
                    rec.partition,
                    rec.offset,
                    err,
                )
                self.producer.abort_transaction(30)
                self._rewind(rec)
                return False
            if err.retriable():
                log.warning("%s: retriable transaction error: %s", self.service, err)
                self._rewind(rec)
                return False
            raise  # fatal (e.g. fenced by a newer instance): the process must stop

    def _rewind(self, rec: Record) -> None:
        self.consumer.seek(TopicPartition(rec.topic, rec.partition, rec.offset))

    def _wait(self, delay: float, rec: Record) -> None:
        tp = [TopicPartition(rec.topic, rec.partition)]
        self.consumer.pause(tp)
        deadline = time.monotonic() + delay
        try:
            while time.monotonic() < deadline and not self.stop.is_set():
                msg = self.consumer.poll(min(0.5, max(0.0, deadline - time.monotonic())))
                if msg is not None and not msg.error():
                    self.consumer.seek(TopicPartition(msg.topic(), msg.partition(), msg.offset()))
        finally:
            self.consumer.resume(tp)
