"""invoice-discovered → (fetch CSV, parse, reserve a revision) → cost-line events + end marker.

`transform` runs inside `TransactionalProcessor`: whatever it returns is produced in one Kafka transaction
together with the consumed offset; an exception other than `Retryable` dead-letters the record (in that
same transaction). See `services/ingester/ledger.py` for the crash-safety design.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC
from typing import Protocol

import psycopg

from services.ingester.csv_parser import CsvParseError, parse_invoice_csv
from services.ingester.domain import build_events
from services.ingester.ledger import Ledger
from shared.digitalocean import DigitalOceanAuthError, DigitalOceanUnavailable
from shared.events import InvoiceDiscovered, encode
from shared.kafka import Out, Record, Retryable, dead_letter
from shared.metrics import DEAD_LETTERED, EVENTS_PRODUCED
from shared.settings import Settings
from shared.topics import COST_LINES

log = logging.getLogger(__name__)

SERVICE = "ingester"
H_CSV_ROW = "dlq.csv.row"
H_CSV_LINE = "dlq.csv.line"
H_CSV_COLUMN = "dlq.csv.column"
H_CSV_VALUE = "dlq.csv.value"


class CsvSource(Protocol):
    """What the handler needs from a DigitalOcean client."""

    def invoice_csv(self, invoice_uuid: str) -> str: ...


class UnknownAccount(ValueError):
    """The event names an account this ingester has no token for (dead-lettered)."""


class UnexpectedEvent(ValueError):
    """A record on invoice-discovered that is not an InvoiceDiscovered event (dead-lettered)."""


class IngestHandler:
    def __init__(
        self,
        settings: Settings,
        ledger: Ledger,
        source_for: Callable[[str], CsvSource | None],
        *,
        known_accounts: list[str] | None = None,
        auth_retry_s: float = 300.0,
    ) -> None:
        self.ledger = ledger
        self.source_for = source_for
        self.known_accounts = known_accounts or []
        self.auth_retry_s = auth_retry_s
        self.out_topic = COST_LINES.name(settings.kafka_topic_prefix)
        # Revisions produced in the transaction now being committed, by consumed record: marked
        # `committed` in the ledger once the processor reports the commit.
        self._in_flight: dict[tuple[str, int, int], tuple[str, int]] = {}

    # ---------------------------------------------------------------------------------- transform
    def transform(self, rec: Record) -> list[Out]:
        env, data = rec.event()
        if not isinstance(data, InvoiceDiscovered):
            raise UnexpectedEvent(f"expected {InvoiceDiscovered.TYPE}, got {env.type}")
        uuid = data.invoice_uuid
        source = self.source_for(env.account)
        if source is None:
            known = ", ".join(self.known_accounts) or "none"
            raise UnknownAccount(f"no DigitalOcean account named {env.account!r} is configured (known: {known})")

        text = self._fetch(source, uuid, env.account)
        try:
            parsed = parse_invoice_csv(text)
        except CsvParseError as e:
            return [self._dead_letter_csv(rec, e, uuid)]

        try:
            decision, reserved_at = self.ledger.reserve(uuid, env.account, parsed)
        except psycopg.OperationalError as e:
            raise Retryable(f"ledger unavailable: {type(e).__name__}") from e

        key = (rec.topic, rec.partition, rec.offset)
        if decision.action == "skip":
            self._in_flight.pop(key, None)
            log.info("invoice %s: unchanged (revision %d, same CSV and parser), skipped", uuid, decision.revision)
            return []
        assert reserved_at is not None
        occurred_at = reserved_at.astimezone(UTC)
        lines, end = build_events(data, parsed, decision.revision)
        outs = [Out(self.out_topic, uuid, encode(line, env.account, occurred_at)) for line in lines]
        outs.append(Out(self.out_topic, uuid, encode(end, env.account, occurred_at)))
        self._in_flight[key] = (uuid, decision.revision)
        log.info(
            "invoice %s: %s revision %d: %d line(s), net %d tax %d gross %d %s, reconciliation %s%s",
            uuid,
            "re-emitting" if decision.action == "reemit" else "emitting",
            decision.revision,
            end.line_count,
            end.amount_net_minor,
            end.amount_tax_minor,
            end.amount_gross_minor,
            end.currency,
            end.reconciliation.status,
            f" (difference {end.reconciliation.difference_minor})" if end.reconciliation.status == "mismatch" else "",
        )
        return outs

    def after_commit(self, rec: Record) -> None:
        """The transaction for `rec` committed: its revision is now known to be on the topic.

        (A skipped record produced nothing: the processor committed its offset directly.)
        """
        key = (rec.topic, rec.partition, rec.offset)
        done = self._in_flight.pop(key, None)
        if done is None:
            return
        uuid, revision = done
        EVENTS_PRODUCED.labels(SERVICE, "billing.invoice-revision").inc()
        try:
            self.ledger.mark_committed(uuid, revision)
        except psycopg.Error as e:
            # Safe to leave pending: the next discovery of this content re-emits the same revision (deduped
            # downstream) and marks it then.
            log.warning("invoice %s revision %d committed but not marked in the ledger: %s", uuid, revision, e)

    # ---------------------------------------------------------------------------------- helpers
    def _fetch(self, source: CsvSource, uuid: str, account: str) -> str:
        try:
            return source.invoice_csv(uuid)
        except DigitalOceanUnavailable as e:
            raise Retryable(str(e)) from e
        except DigitalOceanAuthError as e:
            log.error(
                "DIGITALOCEAN TOKEN REJECTED for account %r (%s): invoice %s waits; fix the token, retrying in %.0fs",
                account,
                e,
                uuid,
                self.auth_retry_s,
            )
            raise Retryable(str(e), delay_s=self.auth_retry_s) from e
        # DigitalOceanNotFound and other DigitalOceanError (4xx) propagate: the processor dead-letters them.

    def _dead_letter_csv(self, rec: Record, e: CsvParseError, uuid: str) -> Out:
        """The DLQ copy with the row, line, column and value also as separate headers."""
        base = dead_letter(rec, e, SERVICE)
        extra = {
            H_CSV_ROW: e.row,
            H_CSV_LINE: e.line,
            H_CSV_COLUMN: e.column,
            H_CSV_VALUE: e.value,
        }
        headers = base.headers | {k: str(v) for k, v in extra.items() if v is not None}
        DEAD_LETTERED.labels(SERVICE, rec.topic).inc()
        log.warning("invoice %s: CSV rejected, nothing emitted: %s", uuid, e)
        return Out(base.topic, base.key, base.value, headers)
