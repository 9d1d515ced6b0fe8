"""The commit verifier: every revision the ingester committed is proven readable on the cost-lines topic.

Why: a Kafka transaction's commit can be acknowledged and its records still be lost. Apache Kafka's
transaction coordinator, restarted between a transaction's PrepareCommit and the partition's COMMIT marker,
completes the transaction but skips the marker of a partition whose leader it does not know yet; the
partition keeps the records as an open transaction, the producer's next transaction continues it, and the
restarted producer's `init_transactions` aborts both. The ledger (services/ingester/ledger.py) marked the
first revision `committed` when `commit_transaction` returned, so without this check its next discovery
is skipped as unchanged and the invoice is never matched, completed or pushed, silently.

How (a thread beside the transactional processor):
1. A read_committed consumer reads every cost-lines partition (assigned, not a group member) and records
   each end marker it sees: `Ledger.verified` marks those revisions verified and stores how far each
   partition was read, in one database transaction (a restart reads on from there).
2. A checkpoint (`domain.Checkpoint`) is the database's clock, then each partition's high watermark. A
   revision marked committed before that clock has every record below those watermarks. When the reader
   has read each partition up to them, such a revision is either verified or provably unreadable: an
   aborted record is never delivered, and the reader gets past an open transaction only once it ended.
3. Each provably unreadable revision (the invoice's latest, at most `INGESTER_VERIFY_MAX_REEMITS` times) is
   asked for again: an `InvoiceRefetchRequested` with `reemit_revision` on the ingester's own input topic,
   keyed by the invoice like its discoveries. The handler fetches the CSV and, when it is unchanged, emits
   the same revision again (same event ids, same `occurred_at`): downstream dedupes by (invoice, revision,
   line), so an emission that was readable after all costs nothing. A changed CSV is a new revision.

A revision that stays unverified (the broker never lets the reader past it, or its re-emissions ran out) is
shown with its age by `cloudbill status` and counted by `cloudbill_ingester_unverified_revisions`.

On the embedded broker aborted records stay visible, so there an aborted marker counts as seen: the same
visible records the matcher reads and completes.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import cast

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Message, TopicPartition

from services.ingester.domain import Checkpoint
from services.ingester.ledger import Ledger
from shared.events import EventDecodeError, InvoiceEnd, InvoiceRefetchRequested, decode, utcnow
from shared.kafka import EventProducer, StopSignal
from shared.kafka.config import consumer_config
from shared.metrics import REVISIONS_REEMITTED, REVISIONS_UNVERIFIED, REVISIONS_VERIFIED
from shared.settings import Settings
from shared.topics import COST_LINES, INVOICE_DISCOVERED, group_id

log = logging.getLogger(__name__)

REQUESTED_BY = "ingester-verifier"
REEMIT_LEASE = timedelta(minutes=5)  # a request that produced no emission (say the CSV fetch failed) is asked again
MARKER_TYPE = InvoiceEnd.TYPE.encode()
BATCH = 500
EXHAUSTED_LOG_S = 600.0  # revisions past their re-emissions are logged again when their number changes, or after this


def end_marker(value: bytes | None) -> tuple[str, int] | None:
    """(invoice uuid, revision) when the record is an end marker; None for a line or anything unreadable."""
    if value is None or MARKER_TYPE not in value:  # lines are most records: no JSON parse for them
        return None
    try:
        _, data = decode(value)
    except EventDecodeError:
        return None
    return (data.invoice_uuid, data.revision) if isinstance(data, InvoiceEnd) else None


class CommitVerifier:
    """Reads cost-lines read_committed, verifies revisions, and asks for the unreadable ones again."""

    def __init__(
        self,
        settings: Settings,
        ledger: Ledger,
        stop: StopSignal,
        *,
        producer_factory: Callable[[], EventProducer] | None = None,
    ) -> None:
        self.settings = settings
        self.ledger = ledger
        self.stop = stop
        self.interval_s = settings.ingester_verify_interval_s
        self.max_reemits = settings.ingester_verify_max_reemits
        self.topic = COST_LINES.name(settings.kafka_topic_prefix)
        self.requests_topic = INVOICE_DISCOVERED.name(settings.kafka_topic_prefix)
        self._factory = producer_factory or (lambda: EventProducer(settings, "ingester-verifier"))
        self._producer: EventProducer | None = None
        self._consumer: Consumer | None = None
        self._stored: dict[int, int] = {}  # where the ledger said, at start, each partition was read to
        self.read_to: dict[int, int] = {}  # next offset per partition, as far as read (not yet stored: _dirty)
        self._seen: set[tuple[str, int]] = set()
        self._dirty = False
        self.checkpoint: Checkpoint | None = None
        self._next_checkpoint = 0.0
        self.requested = 0
        self.verified = 0
        self.proofs = 0  # checkpoints reached
        self._exhausted_logged, self._next_exhausted_log = 0, 0.0

    # ------------------------------------------------------------------------------ reading
    def _open(self) -> Consumer:
        self._stored = self.ledger.read_to(self.topic)  # first: a database error here leaves no consumer behind
        c = Consumer(
            consumer_config(self.settings, group_id(self.settings, "ingester-verifier"), "ingester-verifier")
            | {"enable.partition.eof": True}
        )
        self._consumer = c
        self._assign_new()
        return c

    def _partitions(self) -> list[int]:
        assert self._consumer is not None
        md = self._consumer.list_topics(self.topic, timeout=10).topics.get(self.topic)
        return sorted(md.partitions) if md is not None and md.error is None else []

    def _assign_new(self) -> None:
        """Assign the partitions not read yet (all at start; new ones when the topic grows), from where the
        ledger said at start they were read to, else from their beginning."""
        assert self._consumer is not None
        new = [p for p in self._partitions() if p not in self.read_to]
        if not new:
            return
        start = self._stored
        for p in new:
            self.read_to[p] = start.get(p, 0)
        self._consumer.incremental_assign([TopicPartition(self.topic, p, start.get(p, OFFSET_BEGINNING)) for p in new])
        log.info("commit verifier reading %s partitions %s", self.topic, new)

    def poll_once(self, timeout: float = 0.5) -> int:
        """Read what is there (up to a batch); returns the records read (partition ends are not records)."""
        c = self._consumer or self._open()
        msgs = c.consume(BATCH, timeout)
        for m in msgs:
            self._read(m)
        return sum(1 for m in msgs if m.error() is None)

    def _read(self, m: Message) -> None:
        p, off = cast(int, m.partition()), cast(int, m.offset())
        if err := m.error():
            if err.code() == KafkaError._PARTITION_EOF:
                # The reader is at the partition's end as read_committed sees it (its LSO): every record below was
                # delivered or was aborted, and an open transaction below it has ended.
                self._advance(p, off)
            elif err.fatal():
                raise RuntimeError(f"commit verifier: fatal consumer error: {err}")
            else:
                log.debug("commit verifier: consumer error: %s", err)
            return
        marker = end_marker(m.value())
        if marker is not None:
            self._seen.add(marker)
        self._advance(p, off + 1)

    def _advance(self, partition: int, next_offset: int) -> None:
        if next_offset > self.read_to.get(partition, 0):
            self.read_to[partition] = next_offset
            self._dirty = True

    def store(self) -> int:
        """Write what was seen and how far, in one database transaction."""
        if not self._dirty and not self._seen:
            return 0
        n = self.ledger.verified(self._seen, self.topic, dict(self.read_to))
        self._seen.clear()
        self._dirty = False
        self.verified += n
        REVISIONS_VERIFIED.inc(n)
        return n

    # ------------------------------------------------------------------------------ proving
    def prove(self, now: float) -> int:
        """Take a checkpoint, or, once the reader got past it, ask again for what it proved unreadable.
        Returns the re-emissions asked for."""
        assert self._consumer is not None
        if self.checkpoint is None:
            if now < self._next_checkpoint:
                return 0
            self._assign_new()
            if not self.read_to:
                return 0  # no partition known (metadata unavailable): an empty checkpoint would prove everything
            at = self.ledger.now()  # before the watermarks: see domain.Checkpoint
            ends = {
                p: self._consumer.get_watermark_offsets(TopicPartition(self.topic, p), timeout=10, cached=False)[1]
                for p in sorted(self.read_to)
            }
            self.checkpoint = Checkpoint(at, ends)
            return 0
        if not self.checkpoint.reached(self.read_to):
            return 0
        self.store()  # every marker read before the checkpoint was reached is recorded before judging
        at = self.checkpoint.at
        self.checkpoint = None
        self._next_checkpoint = now + self.interval_s
        self.proofs += 1
        due = self.ledger.claim_unreadable(at, max_reemits=self.max_reemits, lease=REEMIT_LEASE)
        unverified = self.ledger.unverified(at)
        REVISIONS_UNVERIFIED.set(len(unverified))
        exhausted = [u for u in unverified if u["reemits"] >= self.max_reemits]
        if exhausted and (len(exhausted) != self._exhausted_logged or now >= self._next_exhausted_log):
            self._exhausted_logged, self._next_exhausted_log = len(exhausted), now + EXHAUSTED_LOG_S
            log.error(
                "commit verifier: %d committed revision(s) still unreadable on %s after %d re-emission(s), oldest"
                " %s revision %d (%ds): see `cloudbill status`",
                len(exhausted),
                self.topic,
                self.max_reemits,
                exhausted[0]["invoice_uuid"],
                exhausted[0]["revision"],
                exhausted[0]["age_s"],
            )
        if due:
            self._ask(due)
        return len(due)

    def _ask(self, due: list[tuple[str, str, int, int]]) -> None:
        if self._producer is None:
            self._producer = self._factory()
        now = utcnow()
        for uuid, account, revision, n in due:
            req = InvoiceRefetchRequested(
                invoice_uuid=uuid,
                requested_by=REQUESTED_BY,
                reason=f"revision {revision} committed but not readable on {self.topic}: re-emission {n}",
                requested_at=now,
                reemit_revision=revision,
            )
            self._producer.publish(self.requests_topic, uuid, req, account)
            log.warning(
                "invoice %s: revision %d was committed but its records are not readable on %s (aborted after the"
                " commit was acknowledged): re-emission %d of %d requested",
                uuid,
                revision,
                self.topic,
                n,
                self.max_reemits,
            )
        self._producer.flush()
        self.requested += len(due)
        REVISIONS_REEMITTED.inc(len(due))

    # ------------------------------------------------------------------------------ running
    def run(self) -> None:
        last_store = time.monotonic()
        try:
            while not self.stop.is_set():
                try:
                    self.poll_once()
                    now = time.monotonic()
                    if now - last_store >= 1.0 or len(self._seen) >= 5 * BATCH:
                        self.store()
                        last_store = now
                    self.prove(now)
                except Exception as e:  # database or broker trouble: what was read is stored on a later try
                    log.warning("commit verifier: %s: %s", type(e).__name__, e)
                    self.checkpoint = None
                    self.stop.wait(1.0)
            try:
                self.store()
            except Exception as e:
                log.warning("commit verifier: final store: %s: %s", type(e).__name__, e)
        finally:
            if self._consumer is not None:
                self._consumer.close()
            if self._producer is not None:
                self._producer.close()

    def start(self) -> threading.Thread:
        t = threading.Thread(target=self.run, name="ingester-commit-verifier", daemon=True)
        t.start()
        return t
