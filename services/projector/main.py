"""The projector: every topic of the registry and every dead-letter topic → the Postgres read models.

Records are decoded one by one (poison is dead-lettered by the ConsumerLoop at once) and their changes
buffered; the buffer is written in ONE database transaction just before the loop commits the offsets
(`before_commit`), so an offset is never committed ahead of the rows it stands for, and a crash only
replays a batch of idempotent upserts. The batch's cost lines go in with one COPY and one upsert
(services/projector/store.py): no database round trip per line. Batches are up to `commit_every` records
or one second of traffic, whichever comes first. A batch the database refuses is re-applied record by record so a
single bad row is dead-lettered instead of blocking the partition.
"""

from __future__ import annotations

import logging
import time

import psycopg

from services.projector.domain import Change, to_change
from services.projector.store import ReadModelWriter
from shared.db import DictConnection, connect, migrate
from shared.kafka import ConsumerLoop, EventProducer, StopSignal, create_topics, dead_letter
from shared.kafka.records import Record
from shared.metrics import serve
from shared.settings import Settings
from shared.topics import ALL, DLQ_SUFFIX, group_id

log = logging.getLogger(__name__)

SERVICE = "projector"


def topics(settings: Settings) -> list[str]:
    """Every registry topic and every dead-letter topic."""
    p = settings.kafka_topic_prefix
    return [t.name(p) for t in ALL] + [t.dlq(p) for t in ALL if t.has_dlq]


class Projector:
    """Buffers each record's change; `flush()` writes them all in one transaction."""

    def __init__(
        self,
        settings: Settings,
        *,
        stop: StopSignal,
        dlq: EventProducer,
        max_db_attempts: int = 6,
    ) -> None:
        self.settings = settings
        self.stop = stop
        self.dlq = dlq
        self.max_db_attempts = max_db_attempts
        self.pending: list[tuple[Record, Change]] = []
        self.conn: DictConnection | None = None
        self.batches = 0

    # ------------------------------------------------------------------------------------------- loop hooks
    def handle(self, rec: Record) -> None:
        change = to_change(rec, self.settings.kafka_topic_prefix)
        if change is not None:
            self.pending.append((rec, change))

    def flush(self) -> None:
        if not self.pending:
            return
        attempt = 0
        while True:
            attempt += 1
            try:
                self._write_batch()
                break
            except psycopg.OperationalError as e:  # database unreachable: retry, never skip
                self._drop_connection()
                if attempt >= self.max_db_attempts or self.stop.is_set():
                    raise
                delay = min(10.0, 0.5 * 2 ** (attempt - 1))
                log.warning("read-model write failed (%s), retrying in %.1fs", type(e).__name__, delay)
                self.stop.wait(delay)
            except psycopg.Error as e:  # some row is refused: find it, dead-letter it, keep the others
                log.warning("batch of %d refused (%s): applying one by one", len(self.pending), type(e).__name__)
                self._write_one_by_one()
                break
        self.pending.clear()
        self.batches += 1

    # -------------------------------------------------------------------------------------------- internals
    def _connection(self) -> DictConnection:
        if self.conn is None or self.conn.closed:
            self.conn = connect(self.settings, autocommit=True)
        return self.conn

    def _drop_connection(self) -> None:
        if self.conn is not None:
            try:
                self.conn.close()
            finally:
                self.conn = None

    def _write_batch(self) -> None:
        conn = self._connection()
        started = time.monotonic()
        with conn.transaction():
            ReadModelWriter(conn).apply([c for _, c in self.pending])
        log.debug("projected %d change(s) in %.3fs", len(self.pending), time.monotonic() - started)

    def _write_one_by_one(self) -> None:
        conn = self._connection()
        for rec, change in self.pending:
            try:
                with conn.transaction():
                    ReadModelWriter(conn).apply([change])
            except psycopg.OperationalError:
                raise
            except psycopg.Error as e:
                if rec.topic.endswith(DLQ_SUFFIX):
                    # A dead letter's dead letter would go nowhere anyone looks: say it loudly instead.
                    log.error(
                        "dead letter %s[%d]@%d not projected: %s", rec.topic, rec.partition, rec.offset, e.sqlstate
                    )
                    continue
                self.dlq.produce(dead_letter(rec, e, SERVICE))
        self.dlq.flush()

    def close(self) -> None:
        try:
            self.dlq.close()
        finally:
            self._drop_connection()


def build(
    settings: Settings, stop: StopSignal, *, group: str | None = None, commit_every: int = 2000
) -> tuple[ConsumerLoop, Projector]:
    """The loop and its projector, wired (tests use `group` to replay from offset 0 as a new group)."""
    dlq = EventProducer(settings, f"{SERVICE}-db-dlq")
    projector = Projector(settings, stop=stop, dlq=dlq)
    loop = ConsumerLoop(
        settings,
        service=SERVICE,
        group=group or group_id(settings, SERVICE),
        topics=topics(settings),
        handler=projector.handle,
        stop=stop,
        commit_every=commit_every,
        before_commit=projector.flush,
    )
    return loop, projector


def run(settings: Settings, stop: StopSignal | None = None, *, group: str | None = None) -> None:
    """`cloudbill run projector`: project until stop/SIGTERM."""
    if stop is None:
        stop = StopSignal().install()
    migrate(settings, ["readmodel"])
    create_topics(settings)
    serve(settings.metrics_port)
    loop, projector = build(settings, stop, group=group)
    try:
        loop.run()
    finally:
        projector.close()
