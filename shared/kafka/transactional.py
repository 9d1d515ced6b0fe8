"""Consume-transform-produce in Kafka transactions: the outputs and the consumed offset commit together.

`transform(record)` returns the records to produce for one input record. Each input record is one
transaction (its outputs plus `send_offsets_to_transaction`). A transform that raises a non-retryable
error produces the record's dead-letter copy in that same transaction instead, so nothing blocks. One that
raises `Retryable` waits without blocking the other partitions, and is parked after its budget, in a
transaction too (shared/kafka/retry.py).

Transaction errors follow librdkafka's classes. A *retriable* error of `commit_transaction` (a timeout while
the broker restarts) calls it again, as librdkafka documents: the transaction is still open and its outcome
undecided (rewinding and calling `begin_transaction` again used to fail, "Operation not valid in state...",
and end the service). Any other error before the commit (`send_offsets_to_transaction` included, retriable or
not), an error that *requires abort*, or commit retries that outlast the transaction timeout: the transaction
is aborted and the record fetched again. A call still blocked well past its own timeout (seen after a broker
SIGKILL) ends the process for its supervisor to restart (shared/kafka/watchdog.py). A *fatal* error: fenced by a newer instance ends the process; any
other (a broker restart can leave the transaction in a state the broker refuses) replaces the producer, whose
`init_transactions` aborts what was open, and the record is fetched again. The new producer then re-commits
the offsets this processor knows it committed, which settles an offset the broker's restart left pending
forever (a read_committed consumer would otherwise never start fetching again; see `_settle_orphans`); so does
an owned partition without a fetch position for `POSITION_STUCK_S` (`_watch_positions`).

Ownership: rebalance callbacks run only inside `poll()`, between records; a partition revoked there is
never transformed, sought or committed by this processor again (its new owner takes it from the committed
offset). Before, a record retried across a rebalance was transformed by both owners and its outputs
committed twice.

Atomicity must not rest on the broker alone (the embedded broker shows aborted records to
read_committed consumers): outputs carry deterministic event ids and downstream acts on a revision
only once its end marker and all its lines are in.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from shared.kafka.config import TRANSACTION_TIMEOUT_S, consumer_config, instance_id, producer_config
from shared.kafka.consumer import StopSignal
from shared.kafka.deadletter import dead_letter
from shared.kafka.records import Out, Record, produce_out, topic_partition
from shared.kafka.retry import Parked, PartitionWaits, Retryable, apply_retry
from shared.kafka.watchdog import deadline as call_deadline
from shared.metrics import DEAD_LETTERED, PROCESSED
from shared.retry import RetryPolicy, backoff_s
from shared.settings import Settings

log = logging.getLogger(__name__)

# Another instance took our transactional id: the work is its now, this process must stop.
FENCED = frozenset({KafkaError._FENCED, KafkaError.PRODUCER_FENCED, KafkaError.INVALID_PRODUCER_EPOCH})

Transform = Callable[[Record], Iterable[Out]]


SETTLE_ATTEMPTS = 5  # re-commits of known offsets tried (as a group member) before aborting instead
POSITION_STUCK_S = 15.0  # an owned partition without a position this long: are its committed offsets readable?
POSITION_RECHECK_S = 60.0  # after that question, the next one (idle partitions have no position either)


@dataclass
class _Orphans:
    """Offsets of our producer id the group may hold pending (`TransactionalProcessor._settle_orphans`)."""

    fallback: TopicPartition  # a partition of ours for an aborted settle when no committed offset is known
    attempts: int = 0
    next_try: float = 0.0


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
        retry_topic: str | None = None,
        policy: RetryPolicy | None = None,
        txn_timeout_s: float = TRANSACTION_TIMEOUT_S,
        after_commit: Callable[[Record], None] | None = None,
        on_blocked: Callable[[str, float], None] | None = None,
    ) -> None:
        self.service = service
        self.topics = list(topics)
        self.transform = transform
        self.after_commit = after_commit
        self.stop = stop or StopSignal()
        self.policy = policy or settings.retry_policy(max_backoff_s)
        self.retry_topic = retry_topic
        # Each transaction call (send offsets, commit, abort) waits at most this long per try (by default the
        # broker's transaction timeout: past it the broker aborts the transaction anyway); retriable failures
        # are retried until twice that.
        self.txn_timeout_s = txn_timeout_s
        self.txn_retry_s = max(txn_timeout_s, 2 * TRANSACTION_TIMEOUT_S)
        # A transaction call still blocked well past its timeout: by default the process exits 70 for its
        # supervisor to restart it (shared/kafka/watchdog.py); a test running the processor in a thread plays
        # the supervisor instead.
        self.on_blocked = on_blocked
        self.consumer = Consumer(consumer_config(settings, group, f"{service}-consumer", read_committed=True))
        self.waits = PartitionWaits(self.consumer)
        # The embedded broker drops the offsets of a transaction that produced nothing: there only, such a
        # record's offset is committed directly (see _commit).
        self.direct_commit_when_empty = settings.kafka_broker_flavor == "embedded"
        txn_id = transactional_id or f"{group}.{instance_id()}"
        self._producer_config = producer_config(settings, f"{service}-producer", transactional_id=txn_id)
        self.producer = Producer(self._producer_config)
        self.producer.init_transactions(30)
        # The offset this processor last committed, per partition it owns (see _settle_orphans).
        self._committed: dict[tuple[str, int], int] = {}
        self._orphans: _Orphans | None = None
        self._member_lost = False
        self._unpositioned_since: float | None = None
        self._next_position_check = 0.0
        self.processed = 0
        self.dead_lettered = 0
        self.parked = 0
        self.aborted = 0
        self.settled_by_abort = 0  # pending offsets settled by an abort: records may be processed again

    def run(self) -> None:
        topics = self.topics + ([self.retry_topic] if self.retry_topic else [])
        self.consumer.subscribe(topics, on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost)
        log.info("%s consuming %s transactionally", self.service, ", ".join(topics))
        try:
            while not self.stop.is_set():
                self.waits.release_due(time.monotonic())
                msg = self.consumer.poll(self.waits.timeout(time.monotonic(), 0.5))
                self._watch_positions(time.monotonic())
                if self._orphans is not None:
                    self._settle_orphans(self._orphans)
                if msg is None:
                    continue
                if err := msg.error():
                    if err.fatal():
                        raise KafkaException(err)
                    if err.code() != KafkaError._PARTITION_EOF:
                        log.warning("consumer error: %s", err)
                    continue
                tp = topic_partition(msg)
                if not self.waits.owns(tp) or self.waits.blocked(tp):
                    continue  # revoked (its new owner reads it), or waiting: fetched again when resumed
                self._process(msg)
        finally:
            self.consumer.close()
            self.producer.close()

    def _on_assign(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.waits.assigned(partitions)
        self._member_lost = False
        log.info("%s assigned %s", self.service, [f"{p.topic}[{p.partition}]" for p in partitions])

    def _on_revoke(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.waits.revoked(partitions)
        for p in partitions:
            self._committed.pop((p.topic, p.partition), None)  # its next owner commits from now on
        log.info("%s revoked %s", self.service, [f"{p.topic}[{p.partition}]" for p in partitions])

    def _on_lost(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """The group session was lost (the broker is away, or this process was): offsets can be committed again
        only once assigned again. What it committed is kept: nobody could commit past it meanwhile, and it is
        what `_settle_orphans` re-commits should the broker come back with our offsets pending."""
        self._member_lost = True
        self.waits.revoked(partitions)
        log.info("%s lost %s", self.service, [f"{p.topic}[{p.partition}]" for p in partitions])

    def _process(self, msg: Message) -> None:
        """One record, one transaction: its outputs (or its dead letter, or its parked copy) and its offset."""
        at = Record.from_message(msg)
        tp = (at.topic, at.partition)
        rec, parks = at, 0
        if at.topic == self.retry_topic:
            parked = Parked.from_record(at)
            if parked is None:
                log.error("%s: %s[%d]@%d is not a parked record, skipped", self.service, *tp, at.offset)
                self._settle(at, at, [])
                return
            if (due_in := parked.due_in()) > 0:
                self.waits.wait(tp, at.offset, time.monotonic() + due_in)  # not due yet: not an attempt
                return
            rec, parks = parked.record, parked.parks
        counted = False
        try:
            outs = list(self.transform(rec))
            counted = True
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
                outs = [r.parked]
                self.parked += 1
            else:
                assert r.give_up is not None
                outs = [self._dead_letter(rec, r.give_up)]
        except Exception as e:
            outs = [self._dead_letter(rec, e)]
        self._settle(at, rec, outs, counted=counted)

    def _dead_letter(self, rec: Record, error: BaseException) -> Out:
        DEAD_LETTERED.labels(self.service, rec.topic).inc()
        self.dead_lettered += 1
        return dead_letter(rec, error, self.service)

    def _settle(self, at: Record, rec: Record, outs: list[Out], *, counted: bool = False) -> None:
        """Commit `outs` with the offset after `at`; an aborted transaction makes the record wait and retry."""
        tp = (at.topic, at.partition)
        if not self.waits.owns(tp):
            return
        if self._commit(at, outs):
            self._committed[tp] = at.offset + 1
            self.waits.done(tp)
            if counted:
                PROCESSED.labels(self.service, rec.topic).inc()
            self.processed += 1
            if self.after_commit:
                self.after_commit(rec)
            return
        attempts, _ = self.waits.failed(tp, at.offset, time.monotonic())
        self.waits.wait(tp, at.offset, time.monotonic() + backoff_s(attempts, cap=5.0))

    def _commit(self, at: Record, outs: list[Out]) -> bool:
        """One transaction: outputs + the offset after `at`. False when aborted (the record is fetched again).

        On Apache Kafka a record with no outputs commits its offset in a records-free transaction, like
        every other record (one commit path, fenced like the rest). The embedded broker drops the offsets
        of such a transaction, so there the offset is committed directly: a record with no outputs needs
        no atomicity, and at worst it is redelivered and found to need nothing again.
        """
        offsets = [TopicPartition(at.topic, at.partition, at.offset + 1)]
        if not outs and self.direct_commit_when_empty:
            try:
                self.consumer.commit(offsets=offsets, asynchronous=False)
                return True
            except KafkaException as e:
                log.warning(
                    "%s: offset commit for %s[%d]@%d failed: %s", self.service, at.topic, at.partition, at.offset, e
                )
                return False
        self.producer.begin_transaction()
        try:
            for o in outs:
                produce_out(self.producer, o)
            # Not retried: nothing is committed yet, so a failure here (retriable or not) aborts and the record is
            # fetched again. (Calling it again after a transport error blocked past its timeout in librdkafka 2.16.)
            with call_deadline(
                "send_offsets_to_transaction", self.txn_timeout_s, on_expiry=self.on_blocked
            ):  # it can block past its timeout
                self.producer.send_offsets_to_transaction(
                    offsets, self.consumer.consumer_group_metadata(), self.txn_timeout_s
                )
            # Retried: after a retriable error the commit's outcome is unknown, and librdkafka documents calling it
            # again (it resumes the same commit); aborting there could undo a commit that is already decided.
            self._txn_call("commit_transaction", lambda: self.producer.commit_transaction(self.txn_timeout_s))
            return True
        except KafkaException as e:
            err: KafkaError = e.args[0]
            if err.fatal():
                self._replace_producer(err, at)  # raises when fenced
                return False
            log.warning(
                "%s: aborting the transaction for %s[%d]@%d (the record is fetched again): %s",
                self.service,
                at.topic,
                at.partition,
                at.offset,
                err,
            )
            try:
                self._abort()
            except KafkaException as abort_error:
                if not abort_error.args[0].fatal():
                    raise
                self._replace_producer(abort_error.args[0], at)
            return False

    def _replace_producer(self, err: KafkaError, at: Record) -> None:
        """A fatal producer error. Fenced by a newer instance with our transactional id: stop (it owns the work).
        Otherwise (a broker restart can leave the transaction in a state the broker refuses: INVALID_TXN_STATE)
        a new producer with the same transactional id: its `init_transactions` aborts whatever was left open,
        then `_settle_orphans` settles the offsets that abort can leave pending."""
        if err.code() in FENCED:
            raise KafkaException(err)
        log.warning("%s: fatal producer error, starting a new transactional producer: %s", self.service, err)
        with contextlib.suppress(Exception):
            # The stub has close() without arguments; librdkafka's Producer.close takes a timeout (checked at runtime).
            self.producer.close(5)  # type: ignore[call-arg]
        attempt = 0
        while True:
            try:
                producer = Producer(self._producer_config)
                producer.init_transactions(self.txn_timeout_s * 5)
                self.producer = producer
                self._orphans = _Orphans(TopicPartition(at.topic, at.partition, at.offset))
                return
            except KafkaException as e:
                attempt += 1
                if e.args[0].code() in FENCED or self.stop.is_set() or attempt >= 20:
                    raise
                log.warning("%s: init_transactions failed (attempt %d): %s", self.service, attempt, e.args[0])
                time.sleep(backoff_s(attempt, cap=5.0))

    def _watch_positions(self, now: float) -> None:
        """Owned partitions still without a position `POSITION_STUCK_S` after they were assigned, whose committed
        offsets cannot be read (UNSTABLE_OFFSET_COMMIT): our producer settles what it left pending.
        This catches the orphan whatever led to it (a crash of the broker while this process was idle, or of
        this process before it): the symptom, not one path to it."""
        if self._orphans is not None or now < self._next_position_check:
            return
        self._next_position_check = now + 5.0
        owned = [TopicPartition(t, p) for t, p in self.waits.owned if not self.waits.blocked((t, p))]
        if not owned or self._member_lost:
            self._unpositioned_since = None
            return
        try:
            stuck = [tp for tp in self.consumer.position(owned) if tp.offset < 0]
        except KafkaException:
            return
        if not stuck:
            self._unpositioned_since = None
        elif self._unpositioned_since is None:
            self._unpositioned_since = now
        elif now - self._unpositioned_since >= POSITION_STUCK_S:
            # No position also means "nothing consumed yet" (an idle partition): ask the group for its offsets.
            if self._offsets_unreadable(stuck):
                log.warning(
                    "%s: the committed offsets of %s cannot be read (pending?): settling them",
                    self.service,
                    _tps(stuck),
                )
                self._orphans = _Orphans(TopicPartition(stuck[0].topic, stuck[0].partition, 0))
            self._unpositioned_since = None
            self._next_position_check = now + POSITION_RECHECK_S

    def _offsets_unreadable(self, tps: list[TopicPartition]) -> bool:
        """The group's committed offsets of these partitions cannot be fetched as a read_committed consumer
        fetches them (UNSTABLE_OFFSET_COMMIT is retried until the timeout)."""
        try:
            got = self.consumer.committed([TopicPartition(tp.topic, tp.partition) for tp in tps], timeout=5.0)
        except KafkaException:
            return True
        return any(tp.error is not None for tp in got)

    def _settle_orphans(self, orphans: _Orphans) -> None:
        """One records-free transaction that adds offsets for our group, so the group coordinator gets a marker
        for our producer id: after a new producer, or when `_watch_positions` sees the consumer stuck.

        Measured on Apache Kafka 4.4: after a broker SIGKILL right after a commit, the group kept that committed
        transaction's offset *pending* with no marker ever written for it (the transaction coordinator said
        COMPLETE_COMMIT). A read_committed consumer fetches committed offsets with `require_stable`, so it got
        UNSTABLE_OFFSET_COMMIT (librdkafka retries that forever, silently) and never fetched again: the
        processor polled an assignment that delivered nothing, for good. A marker for our producer id settles
        every offset it left pending. So the offsets this processor *knows* it committed (in the partitions it
        owns) are committed again, once the consumer is a group member again (the broker refuses offsets from a
        lost member): the marker settles the orphan as what it was, a commit. Knowing none, or failing
        `SETTLE_ATTEMPTS` times, the transaction is aborted instead: no committed offset moves forward, so at
        worst records are processed again (their outputs carry deterministic ids), never skipped or stalled."""
        now = time.monotonic()
        if self._member_lost or now < orphans.next_try:
            return
        known = [TopicPartition(t, p, o) for (t, p), o in self._committed.items() if self.waits.owns((t, p))]
        commit = bool(known) and orphans.attempts < SETTLE_ATTEMPTS
        offsets = known if commit else [orphans.fallback]
        orphans.attempts += 1
        try:
            self.producer.begin_transaction()
            try:
                with call_deadline("send_offsets_to_transaction", self.txn_timeout_s, on_expiry=self.on_blocked):
                    self.producer.send_offsets_to_transaction(
                        offsets, self.consumer.consumer_group_metadata(), self.txn_timeout_s
                    )
                if commit:
                    self._txn_call("commit_transaction", lambda: self.producer.commit_transaction(self.txn_timeout_s))
            except KafkaException as e:
                log.warning("%s: settling pending offsets: %s; aborting", self.service, e.args[0])
                self._abort()
                orphans.next_try = now + 2.0
                return
            if not commit:
                self._abort()  # the abort's marker is the point: it settles whatever we left pending
                self.settled_by_abort += 1
        except KafkaException as e:
            log.warning("%s: could not settle pending offsets yet: %s", self.service, e.args[0])
            orphans.next_try = now + 2.0
            return
        self._orphans = None
        log.info(
            "%s: %s %s to settle pending offsets", self.service, "re-committed" if commit else "aborted", _tps(offsets)
        )

    def _txn_call(self, what: str, call: Callable[[], object]) -> None:
        """Call a transaction step; a retriable error calls it again (the transaction is still open), until
        the transaction could have timed out on the broker. Abortable and fatal errors are raised at once."""
        deadline = time.monotonic() + self.txn_retry_s
        attempt = 0
        while True:
            try:
                with call_deadline(what, self.txn_timeout_s, on_expiry=self.on_blocked):
                    call()
                return
            except KafkaException as e:
                err: KafkaError = e.args[0]
                if err.fatal() or err.txn_requires_abort() or not err.retriable():
                    raise
                attempt += 1
                if time.monotonic() > deadline or self.stop.is_set():
                    raise
                log.warning("%s: %s failed, retrying (attempt %d): %s", self.service, what, attempt, err)
                time.sleep(backoff_s(attempt, cap=2.0))

    def _abort(self) -> None:
        """Abort the open transaction (retrying retriable failures); its outputs are never seen."""
        self.aborted += 1
        self._txn_call("abort_transaction", lambda: self.producer.abort_transaction(self.txn_timeout_s))


def _tps(tps: list[TopicPartition]) -> str:
    return ", ".join(f"{tp.topic}[{tp.partition}]@{tp.offset}" for tp in tps)
