"""Retrying a record without stalling anything else: per-partition waits, parking, the retry topic.

What the Kafka loops (`ConsumerLoop`, `TransactionalProcessor`) share when a handler raises `Retryable`:

- **Only its partition waits.** The partition is paused and positioned back on the record
  (`PartitionWaits.wait`); the loop keeps consuming every other partition and resumes this one when the wait
  is over, so the record is fetched and tried again. Nothing sleeps inside the loop, so the consumer keeps
  polling (no `max.poll.interval.ms` eviction) and rebalances are only ever served between records.
- **Ownership is re-checked.** A partition revoked while it waits is forgotten: never resumed, sought,
  processed or committed by this consumer again (its new owner reads the record from the committed offset).
  A partition assigned again starts fresh.
- **Waits are floored, capped and growing** (`shared.retry.RetryPolicy`): a server's `Retry-After: 0` is no
  reason for a busy loop.
- **A budget, then parking.** After `RETRY_MAX_ATTEMPTS` attempts or `RETRY_MAX_S` seconds, a record whose
  failure is specific to it (`Retryable(parkable=True)`, the default) is *parked*: copied to the stage's retry
  topic (`<prefix>cloudbill.<stage>.retry`) with the reason, and its offset committed, so the partition flows
  again. The stage also consumes its retry topic: a parked record is retried once it is due
  (`RETRY_PARK_DELAY_S`, doubling per park), with its original topic, partition, offset, key, value and
  headers, so the handler cannot tell it from the original. Failing again, it is parked again; after
  `RETRY_MAX_PARKS` parks it is dead-lettered with its last reason (`RetryBudgetExhausted`).
- A failure that every record would share (the database is down, finance refuses our credentials) is
  `Retryable(parkable=False)`: parking would only move every record to the retry topic and back, so such
  a record keeps waiting in place, with capped backoff, and its partition with it.

Parked records are visible: a WARNING log line, `cloudbill_records_parked_total{service,topic}`, `cloudbill
status` (per stage, the records waiting in its retry topic) and `cloudbill dlq list --topic <retry topic>`
(a parked copy carries the dead-letter headers: source topic, partition, offset, error class and message).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime

from confluent_kafka import Consumer, TopicPartition

from shared.kafka.deadletter import H_OFFSET, H_PARTITION, H_TOPIC, dead_letter_headers
from shared.kafka.records import Out, Record
from shared.metrics import PARKED, RETRIES
from shared.retry import RetryPolicy

log = logging.getLogger(__name__)

H_PARKS = "retry.parks"  # how often this record was parked (1 = once)
H_ATTEMPTS = "retry.attempts"  # attempts in place before its latest park
H_DUE = "retry.due_at"  # ISO time from which it is tried again
H_FIRST_FAILED = "retry.first_failed_at"

TP = tuple[str, int]


class Retryable(Exception):
    """Try this record again after a backoff; its partition does not advance meanwhile (the others do).

    `delay_s`: at least this long (a server's Retry-After); the policy still floors, caps and grows it.
    `parkable`: False for failures every record shares (database down, credentials refused): such a record
    waits in place rather than being parked after the budget."""

    def __init__(self, message: str, *, delay_s: float | None = None, parkable: bool = True) -> None:
        super().__init__(message)
        self.delay_s = delay_s
        self.parkable = parkable


class RetryBudgetExhausted(Exception):
    """A record failed transiently through every attempt and park: dead-lettered with the last reason."""


@dataclass
class _Waiting:
    offset: int
    attempts: int
    first_failed: float  # monotonic
    due: float  # monotonic
    paused: bool


class PartitionWaits:
    """The partitions this consumer owns, and those paused on a record that waits to be retried."""

    def __init__(self, consumer: Consumer) -> None:
        self.consumer = consumer
        self.owned: set[TP] = set()
        self._state: dict[TP, _Waiting] = {}
        # Assigned since the last poll: resumed once the assignment is in effect. librdkafka keeps a partition's
        # pause flag across a revoke and a new assignment (a session lost while a record waited left it paused).
        self._fresh: set[TP] = set()

    # ------------------------------------------------------------------------------------- ownership
    def assigned(self, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            key = (tp.topic, tp.partition)
            self.owned.add(key)
            self._state.pop(key, None)  # assigned again: a fresh start from the committed offset
            self._fresh.add(key)

    def revoked(self, partitions: list[TopicPartition]) -> None:
        """Forget them; un-pause the ones still paused so a later assignment starts unpaused."""
        paused = [tp for tp in partitions if (s := self._state.get((tp.topic, tp.partition))) and s.paused]
        for tp in partitions:
            self.owned.discard((tp.topic, tp.partition))
            self._state.pop((tp.topic, tp.partition), None)
        if paused:
            try:
                self.consumer.resume([TopicPartition(t.topic, t.partition) for t in paused])
            except Exception as e:  # already gone from the assignment: nothing to un-pause
                log.debug("resume on revoke: %s", e)

    def owns(self, tp: TP) -> bool:
        return tp in self.owned

    def blocked(self, tp: TP) -> bool:
        """Its partition waits: a record of it fetched meanwhile is dropped (it is fetched again later)."""
        s = self._state.get(tp)
        return s is not None and s.paused

    # ------------------------------------------------------------------------------------- attempts
    def failed(self, tp: TP, offset: int, now: float) -> tuple[int, float]:
        """Count one more failed attempt of the record at `offset`; returns (attempts, first failure time)."""
        s = self._state.get(tp)
        if s is None or s.offset != offset:
            s = self._state[tp] = _Waiting(offset, 0, now, now, False)
        s.attempts += 1
        return s.attempts, s.first_failed

    def wait(self, tp: TP, offset: int, due: float) -> None:
        """Pause the partition, positioned back on `offset`, until `due` (monotonic)."""
        if tp not in self.owned:
            return
        s = self._state.get(tp)
        if s is None or s.offset != offset:
            s = self._state[tp] = _Waiting(offset, 0, due, due, False)
        s.due = due
        part = TopicPartition(tp[0], tp[1], offset)
        self.consumer.pause([TopicPartition(tp[0], tp[1])])
        self.consumer.seek(part)
        s.paused = True

    def done(self, tp: TP) -> None:
        """The record the partition was retrying is settled (processed, parked or dead-lettered)."""
        self._state.pop(tp, None)

    def release_due(self, now: float) -> None:
        """Resume every owned partition whose wait is over (its record is fetched again), and every newly
        assigned one (see `_fresh`)."""
        fresh = [tp for tp in self._fresh if tp in self.owned and tp not in self._state]
        self._fresh.clear()
        if fresh:
            try:
                self.consumer.resume([TopicPartition(t, p) for t, p in fresh])
            except Exception as e:  # revoked again meanwhile
                log.debug("resume after assign: %s", e)
        due = [tp for tp, s in self._state.items() if s.paused and s.due <= now and tp in self.owned]
        if not due:
            return
        for tp in due:
            self._state[tp].paused = False
        self.consumer.resume([TopicPartition(t, p) for t, p in due])

    def timeout(self, now: float, longest: float) -> float:
        """How long the next poll may block: until the next wait is over, at most `longest`."""
        dues = [s.due for s in self._state.values() if s.paused]
        return max(0.0, min([longest, *(d - now for d in dues)]))

    def waiting(self) -> int:
        return sum(1 for s in self._state.values() if s.paused)


# ------------------------------------------------------------------------------------------ parking
@dataclass(frozen=True)
class Parked:
    """A record read from a retry topic: the original record, how often it was parked, when it is due."""

    record: Record
    parks: int
    due_at: datetime | None

    @classmethod
    def from_record(cls, rec: Record) -> Parked | None:
        """None when the record is not a parked copy (no source coordinates): it cannot be retried."""
        h = {k: v.decode("utf-8", "replace") for k, v in rec.headers.items()}
        try:
            topic, partition, offset = h[H_TOPIC], int(h[H_PARTITION]), int(h[H_OFFSET])
        except (KeyError, ValueError):
            return None
        try:
            parks = int(h.get(H_PARKS, "1"))
        except ValueError:
            parks = 1
        try:
            due = datetime.fromisoformat(h[H_DUE]) if h.get(H_DUE) else None
        except ValueError:
            due = None
        original = {k: v for k, v in rec.headers.items() if not k.startswith(("dlq.", "retry."))}
        return cls(Record(topic, partition, offset, rec.key, rec.value, original, rec.timestamp_ms), parks, due)

    def due_in(self, now: datetime | None = None) -> float:
        if self.due_at is None:
            return 0.0
        return (self.due_at - (now or datetime.now(UTC))).total_seconds()


def park(
    rec: Record,
    error: BaseException,
    service: str,
    retry_topic: str,
    *,
    parks: int,
    attempts: int,
    first_failed_at: datetime,
    delay_s: float,
) -> Out:
    """The copy of `rec` for the retry topic: its key, value and headers whole, plus where from, why, when due."""
    due = datetime.now(UTC).timestamp() + delay_s
    headers = dead_letter_headers(rec, error, service) | {
        H_PARKS: str(parks),
        H_ATTEMPTS: str(attempts),
        H_DUE: datetime.fromtimestamp(due, UTC).isoformat(),
        H_FIRST_FAILED: first_failed_at.isoformat(),
    }
    log.warning(
        "PARKED %s[%d]@%d in %s (park %d, after %d attempt(s)), retried in %.1fs: %s",
        rec.topic,
        rec.partition,
        rec.offset,
        retry_topic,
        parks,
        attempts,
        delay_s,
        str(error)[:300],
        extra={"parked": True},
    )
    return Out(retry_topic, rec.key, rec.value, headers)


@dataclass(frozen=True)
class Decision:
    """What to do with a record that raised Retryable: wait in place, park it, or give up (dead-letter)."""

    action: str  # "wait" | "park" | "dead"
    delay_s: float = 0.0
    parks: int = 0
    attempts: int = 0
    first_failed: float = 0.0


def decide(
    policy: RetryPolicy,
    waits: PartitionWaits,
    tp: TP,
    offset: int,
    error: Retryable,
    *,
    parks: int,
    can_park: bool,
    now: float,
) -> Decision:
    """The retry rule of the module docstring, in one place for both loops.

    `parks`: 0 for a record read from its own topic, else how often it was parked already (it comes from the
    retry topic: one attempt per park, then parked again)."""
    attempts, first = waits.failed(tp, offset, now)
    parkable = error.parkable and can_park
    if parks:
        if not parkable:
            return Decision("wait", policy.wait(attempts, error.delay_s), parks, attempts, first)
        if parks >= policy.max_parks:
            return Decision("dead", parks=parks, attempts=attempts, first_failed=first)
        return Decision("park", policy.park_delay(parks + 1), parks + 1, attempts, first)
    if parkable and policy.exhausted(attempts, now - first):
        return Decision("park", policy.park_delay(1), 1, attempts, first)
    return Decision("wait", policy.wait(attempts, error.delay_s), 0, attempts, first)


@dataclass(frozen=True)
class RetryOutcome:
    """What a loop does after `apply_retry`: nothing more (the partition waits), produce `parked`, or
    dead-letter the record with `give_up` as the reason."""

    parked: Out | None = None
    give_up: RetryBudgetExhausted | None = None

    @property
    def waiting(self) -> bool:
        return self.parked is None and self.give_up is None


def apply_retry(
    policy: RetryPolicy,
    waits: PartitionWaits,
    at: Record,
    rec: Record,
    error: Retryable,
    *,
    parks: int,
    service: str,
    retry_topic: str | None,
    now: float,
) -> RetryOutcome:
    """`decide`, then its effect shared by both loops: a wait pauses the partition on `at` (logged); a park
    builds the record's parked copy; giving up names the reason. Counted in the retry/park metrics."""
    tp = (at.topic, at.partition)
    d = decide(policy, waits, tp, at.offset, error, parks=parks, can_park=retry_topic is not None, now=now)
    RETRIES.labels(service, rec.topic).inc()
    if d.action == "wait":
        log.warning(
            "%s: retrying %s[%d]@%d in %.1fs (attempt %d): %s",
            service,
            rec.topic,
            rec.partition,
            rec.offset,
            d.delay_s,
            d.attempts,
            error,
        )
        waits.wait(tp, at.offset, now + d.delay_s)
        return RetryOutcome()
    if d.action == "park":
        assert retry_topic is not None
        first = datetime.now(UTC).timestamp() - (now - d.first_failed)
        PARKED.labels(service, rec.topic).inc()
        return RetryOutcome(
            parked=park(
                rec,
                error,
                service,
                retry_topic,
                parks=d.parks,
                attempts=d.attempts,
                first_failed_at=datetime.fromtimestamp(first, UTC),
                delay_s=d.delay_s,
            )
        )
    return RetryOutcome(give_up=RetryBudgetExhausted(f"gave up after {d.parks} park(s): {error}"))
