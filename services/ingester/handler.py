"""invoice-discovered → (fetch CSV, parse, reconcile, reserve a revision) → cost-line events + end marker.

One consumed record (InvoiceDiscovered, or InvoiceRefetchRequested for a held invoice) → the records of one
new revision. Orchestration, not pure: it calls DigitalOcean through `CsvSource` (CSV, summary, invoice
list, items) and the revision ledger (services/ingester/ledger.py); the decisions are pure in `domain.py`,
`csv_parser.py`, `items.py` and `refetch.py`. `main.py` builds the clients, the ledger and the
`TransactionalProcessor` that consumes, produces and commits.

`transform` runs inside `TransactionalProcessor`: whatever it returns is produced in one Kafka transaction
together with the consumed offset; an exception other than `Retryable` dead-letters the record (in that
same transaction). See `services/ingester/ledger.py` for the crash-safety design.

Money gates (docs/architecture.md): every revision carries its reconciliation — the lines' gross against the
billing-history amount (in the event), the invoice list's amount (in the event, else fetched here) and the
summary's amount and taxes (fetched here) — and a revision that does not reconcile is still emitted (the
read models show it, held) but marks the invoice held: its CSV is fetched again with backoff
(`InvoiceRefetchRequested` on this same topic) until a changed CSV reconciles or an admin steps in.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC
from typing import Any, Protocol, TypeVar

import psycopg

from services.ingester.csv_parser import CsvParseError, ParsedInvoice, parse_invoice_csv
from services.ingester.domain import (
    Outcome,
    RefetchPolicy,
    build_events,
    evidence_sha256,
    expected_of,
    reconciliation_of,
)
from services.ingester.items import (
    Item,
    RowItem,
    content_sha256,
    items_sha256,
    join_items,
    keep_on_items_outage,
    parse_item,
)
from services.ingester.ledger import Ledger
from shared.digitalocean import (
    DigitalOceanAuthError,
    DigitalOceanError,
    DigitalOceanNotFound,
    DigitalOceanUnavailable,
    invoice_listing,
)
from shared.events import InvoiceDiscovered, InvoiceRefetchRequested, Reconciliation, encode
from shared.kafka import Out, Record, Retryable, dead_letter
from shared.metrics import DEAD_LETTERED, EVENTS_PRODUCED, ITEM_ROWS, ITEMS_FETCHED
from shared.settings import Settings
from shared.topics import COST_LINES

log = logging.getLogger(__name__)
T = TypeVar("T")

SERVICE = "ingester"
H_CSV_ROW = "dlq.csv.row"
H_CSV_LINE = "dlq.csv.line"
H_CSV_COLUMN = "dlq.csv.column"
H_CSV_VALUE = "dlq.csv.value"
H_CSV_BYTE = "dlq.csv.byte"
LISTING_TTL_S = 60.0


class CsvSource(Protocol):
    """What the handler needs from a DigitalOcean client."""

    def invoice_csv(self, invoice_uuid: str) -> bytes: ...

    def invoice_summary(self, invoice_uuid: str) -> dict[str, Any]: ...

    def invoices(self) -> Iterator[dict[str, Any]]: ...

    def invoice_items(self, invoice_uuid: str) -> Iterator[dict[str, Any]]: ...


class UnknownInvoice(ValueError):
    """A re-fetch was requested for an invoice this ingester never discovered (dead-lettered)."""


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
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ledger = ledger
        self.tax_rule = settings.tax_rule()
        self.tolerance_minor = settings.reconciliation_tolerance_minor
        self.fetch_summary = settings.ingester_fetch_summary
        self.fetch_items = settings.ingester_fetch_items
        self.items_wait_s = settings.ingester_items_wait_s
        # Invoice uuid -> when its items were first found unavailable (monotonic), while its record waits.
        self._items_down_since: dict[str, float] = {}
        self.policy = RefetchPolicy(
            settings.held_refetch_initial_s, settings.held_refetch_max_s, settings.held_refetch_max_attempts
        )
        self._clock = clock
        self._listings: dict[str, tuple[float, dict[str, int | None]]] = {}
        self.source_for = source_for
        self.known_accounts = known_accounts or []
        self.auth_retry_s = auth_retry_s
        self.out_topic = COST_LINES.name(settings.kafka_topic_prefix)
        # Revisions produced in the transaction now being committed, by consumed record: marked
        # `committed` in the ledger once the processor reports the commit.
        self._in_flight: dict[tuple[str, int, int], tuple[str, int]] = {}

    # ---------------------------------------------------------------------------------- transform
    def transform(self, rec: Record) -> list[Out]:
        """One discovery (or re-fetch request): its CSV fetched, parsed, reconciled and joined to its items, then
        a new revision emitted, or nothing when unchanged; a CSV that does not parse is dead-lettered."""
        env, data = rec.event()
        account, discovered = self._discovery(env.account, env.type, data)
        uuid = discovered.invoice_uuid
        source = self._source(account)
        if isinstance(data, InvoiceDiscovered):
            self._db(lambda: self.ledger.remember(account, discovered))

        # The commit verifier's request to emit a committed revision again whose records never became readable.
        reemit = data.reemit_revision if isinstance(data, InvoiceRefetchRequested) else None
        raw = self._fetch(source, uuid, account)
        try:
            parsed = parse_invoice_csv(raw, tax_rule=self.tax_rule)
        except CsvParseError as e:
            self._settle(uuid, "rejected", None, str(e))
            return [self._dead_letter_csv(rec, e, uuid)]
        reconciliation = self._reconcile(source, discovered, parsed, account)
        items, items_note, wait = self._items(source, uuid, parsed.currency)
        evidence = evidence_sha256(reconciliation)
        if items is None and reemit is None and self._db(lambda: self._kept_with_items(uuid, parsed, evidence)):
            # The same CSV was emitted and committed; an items outage now is no reason for a revision without ids.
            self._items_down_since.pop(uuid, None)
            self._settle(uuid, "unchanged", None, reconciliation.reason)
            log.info("invoice %s: unchanged CSV, items unavailable (%s): latest revision kept", uuid, items_note)
            return []
        if wait is not None:
            raise wait
        joined = self._joined(parsed, items, items_note)
        digest = content_sha256(evidence, items_sha256(items) if items is not None else None)
        return self._emit(rec, account, discovered, parsed, reconciliation, joined, digest, reemit)

    def _discovery(self, account: str, event_type: str, data: object) -> tuple[str, InvoiceDiscovered]:
        """The account and discovery a record is about: its own, or, for a re-fetch request, the ledger's."""
        if isinstance(data, InvoiceDiscovered):
            return account, data
        if not isinstance(data, InvoiceRefetchRequested):
            raise UnexpectedEvent(f"expected {InvoiceDiscovered.TYPE}, got {event_type}")
        known = self._db(lambda: self.ledger.last_discovery(data.invoice_uuid))
        if known is None:
            raise UnknownInvoice(f"re-fetch of invoice {data.invoice_uuid}: never discovered by this ingester")
        log.info(
            "invoice %s: re-fetching its CSV (%s, by %s: %s)",
            data.invoice_uuid,
            f"re-emission of unreadable revision {data.reemit_revision}"
            if data.reemit_revision
            else f"attempt {data.attempt}"
            if data.attempt
            else "admin request",
            data.requested_by,
            data.reason,
        )
        return known

    def _source(self, account: str) -> CsvSource:
        source = self.source_for(account)
        if source is None:
            known_names = ", ".join(self.known_accounts) or "none"
            raise UnknownAccount(f"no DigitalOcean account named {account!r} is configured (known: {known_names})")
        return source

    def _joined(self, parsed: ParsedInvoice, items: list[Item] | None, items_note: str) -> list[RowItem]:
        """Each CSV row's item, or, without items, the same note on every row."""
        joined = (
            join_items(parsed.lines, items)
            if items is not None
            else [RowItem("items_disabled" if not self.fetch_items else "items_unavailable", None, items_note)]
            * parsed.line_count
        )
        for row in joined:
            ITEM_ROWS.labels(row.join).inc()
        return joined

    def _emit(
        self,
        rec: Record,
        account: str,
        discovered: InvoiceDiscovered,
        parsed: ParsedInvoice,
        reconciliation: Reconciliation,
        joined: list[RowItem],
        digest: str,
        reemit: int | None = None,
    ) -> list[Out]:
        """The ledger decides: the same content is skipped, anything else is a revision's lines and end marker."""
        uuid = discovered.invoice_uuid
        decision, reserved_at = self._db(
            lambda: self.ledger.reserve(uuid, account, parsed, digest, reconciliation.status, reemit_unverified=reemit)
        )
        key = (rec.topic, rec.partition, rec.offset)
        if decision.action == "skip":
            self._in_flight.pop(key, None)
            self._settle(uuid, "unchanged", decision.revision, reconciliation.reason)
            log.info("invoice %s: unchanged (revision %d, same CSV and parser), skipped", uuid, decision.revision)
            return []
        assert reserved_at is not None
        occurred_at = reserved_at.astimezone(UTC)
        lines, end = build_events(discovered, parsed, decision.revision, reconciliation, joined)
        outs = [Out(self.out_topic, uuid, encode(line, account, occurred_at)) for line in lines]
        outs.append(Out(self.out_topic, uuid, encode(end, account, occurred_at)))
        self._in_flight[key] = (uuid, decision.revision)
        held = reconciliation.status != "matched"
        self._settle(uuid, "held" if held else "reconciled", decision.revision, reconciliation.reason)
        log.log(
            logging.WARNING if held else logging.INFO,
            "invoice %s: %s revision %d: %d line(s), net %d tax %d gross %d %s, reconciliation %s%s",
            uuid,
            "re-emitting" if decision.action == "reemit" else "emitting",
            decision.revision,
            end.line_count,
            end.amount_net_minor,
            end.amount_tax_minor,
            end.amount_gross_minor,
            end.currency,
            reconciliation.status,
            f": HELD, {reconciliation.reason}" if held else "",
        )
        return outs

    # ---------------------------------------------------------------------------------- items
    def _items(self, source: CsvSource, uuid: str, currency: str) -> tuple[list[Item] | None, str, Retryable | None]:
        """The invoice's items (all pages), or None, why, and whether the record should rather wait.

        A transient outage (`DigitalOceanUnavailable`) makes the record wait and retry, as a CSV outage does, for
        up to `INGESTER_ITEMS_WAIT_S`, unless the same CSV is already committed (then it is simply kept): a short
        5xx burst must not turn into a revision without resource ids and then a second revision once they are
        back. Past that window, or on any other error, the CSV alone with a note: items only add ids, they never
        block an invoice. (The window is kept in memory: a restart starts it again, which only bounds the wait
        by the restarts.)"""
        if not self.fetch_items:
            ITEMS_FETCHED.labels("disabled").inc()
            return None, "items not fetched (INGESTER_FETCH_ITEMS=false)", None
        try:
            raw = list(source.invoice_items(uuid))
        except DigitalOceanNotFound:
            outcome, note = "not_found", "DigitalOcean has no items for this invoice"
        except DigitalOceanUnavailable as e:
            waited = self._items_waited(uuid)
            if waited < self.items_wait_s:
                ITEMS_FETCHED.labels("waiting").inc()
                note = f"items unavailable for {waited:.0f}s: {e}"
                wait = Retryable(f"invoice {uuid}: {note} (waits up to {self.items_wait_s:.0f}s, then the CSV alone)")
                return None, note, wait
            outcome, note = "failed", f"items unavailable for {waited:.0f}s: {type(e).__name__}"
            log.warning("invoice %s: items unavailable, ingested from the CSV alone (no resource ids): %s", uuid, e)
        except DigitalOceanError as e:  # a rejected token or another 4xx: the CSV alone, as before items
            outcome, note = "failed", f"items unavailable: {type(e).__name__}"
            log.warning("invoice %s: items unavailable, ingested from the CSV alone (no resource ids): %s", uuid, e)
        else:
            self._items_down_since.pop(uuid, None)
            ITEMS_FETCHED.labels("fetched").inc()
            return [parse_item(r, currency) for r in raw if isinstance(r, Mapping)], "", None
        self._items_down_since.pop(uuid, None)
        ITEMS_FETCHED.labels(outcome).inc()
        if outcome == "not_found":
            log.info("invoice %s: %s; ingested from the CSV alone", uuid, note)
        return None, note, None

    def _items_waited(self, uuid: str) -> float:
        """Seconds since this invoice's items were first found unavailable (0 the first time)."""
        now = self._clock()
        return now - self._items_down_since.setdefault(uuid, now)

    def _kept_with_items(self, uuid: str, parsed: ParsedInvoice, evidence: str) -> bool:
        """The latest revision is this very content, committed: keep it (it may carry ids) rather than drop them."""
        revisions = self.ledger.revisions(uuid)
        latest = revisions[-1] if revisions else None
        return keep_on_items_outage(latest, parsed.csv_sha256, parsed.parser_version, evidence)

    # ---------------------------------------------------------------------------------- money gates
    def _reconcile(
        self, source: CsvSource, discovered: InvoiceDiscovered, parsed: ParsedInvoice, account: str
    ) -> Reconciliation:
        listed = None
        if discovered.listed_amount_minor is None:
            listed = self._listed_amount(source, discovered, account)
        summary = self._summary(source, discovered.invoice_uuid, account) if self.fetch_summary else None
        expected = expected_of(discovered, listed, summary, self.fetch_summary)
        return reconciliation_of(parsed, expected, self.tolerance_minor)

    def _listed_amount(self, source: CsvSource, discovered: InvoiceDiscovered, account: str) -> int | None:
        """The invoice list's amount when the discovery did not carry it (events from before the poller did)."""
        cached = self._listings.get(account)
        if cached is None or self._clock() - cached[0] > LISTING_TTL_S or discovered.invoice_uuid not in cached[1]:
            try:
                listing = invoice_listing(
                    self._call(lambda: source.invoices(), account, "invoice list"), discovered.currency
                )
            except DigitalOceanNotFound:
                listing = {}
            cached = (self._clock(), {u: x.amount_minor for u, x in listing.items()})
            self._listings[account] = cached
        return cached[1].get(discovered.invoice_uuid)

    def _summary(self, source: CsvSource, uuid: str, account: str) -> Mapping[str, Any] | None:
        try:
            summary: Mapping[str, Any] | None = self._call(
                lambda: source.invoice_summary(uuid), account, f"summary of {uuid}"
            )
            return summary
        except DigitalOceanNotFound:
            log.info("invoice %s: DigitalOcean has no summary; reconciled without it", uuid)
            return None

    def _settle(self, uuid: str, outcome: Outcome, revision: int | None, reason: str) -> None:
        hold = self._db(lambda: self.ledger.settle(uuid, outcome, revision=revision, reason=reason, policy=self.policy))
        if hold is not None and outcome != "held":
            when = hold.next_at.isoformat() if hold.next_at else "never again automatically (refetch or release it)"
            log.warning(
                "invoice %s: still held after %d re-fetch(es) (%s); next re-fetch %s",
                uuid,
                hold.attempts,
                outcome,
                when,
            )

    @staticmethod
    def _db(call: Callable[[], T]) -> T:
        """A ledger call; an unreachable database makes the record wait, never dead-letters it."""
        try:
            return call()
        except psycopg.OperationalError as e:
            raise Retryable(f"ledger unavailable: {type(e).__name__}", parkable=False) from e

    def after_commit(self, rec: Record) -> None:
        """The transaction for `rec` committed: its revision is now known to be on the topic.

        (A skipped record produced nothing: only its offset was committed.)
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
    def _fetch(self, source: CsvSource, uuid: str, account: str) -> bytes:
        body: bytes = self._call(lambda: source.invoice_csv(uuid), account, f"CSV of {uuid}")
        return body

    def _call(self, call: Callable[[], Any], account: str, what: str) -> Any:
        """A DigitalOcean call: outages and a rejected token make the record wait (Retryable)."""
        try:
            result = call()
            return list(result) if isinstance(result, Iterator) else result
        except DigitalOceanUnavailable as e:
            raise Retryable(str(e)) from e
        except DigitalOceanAuthError as e:
            log.error(
                "DIGITALOCEAN TOKEN REJECTED for account %r (%s): %s waits; fix the token, retrying in %.0fs",
                account,
                e,
                what,
                self.auth_retry_s,
            )
            raise Retryable(str(e), delay_s=self.auth_retry_s, parkable=False) from e
        # DigitalOceanNotFound and other DigitalOceanError (4xx) propagate: the processor dead-letters them.

    def _dead_letter_csv(self, rec: Record, e: CsvParseError, uuid: str) -> Out:
        """The DLQ copy with the row, line, column and value also as separate headers."""
        base = dead_letter(rec, e, SERVICE)
        extra = {
            H_CSV_ROW: e.row,
            H_CSV_LINE: e.line,
            H_CSV_COLUMN: e.column,
            H_CSV_VALUE: e.value,
            H_CSV_BYTE: e.byte,
        }
        headers = base.headers | {k: str(v) for k, v in extra.items() if v is not None}
        DEAD_LETTERED.labels(SERVICE, rec.topic).inc()
        log.warning("invoice %s: CSV rejected, nothing emitted: %s", uuid, e)
        return Out(base.topic, base.key, base.value, headers)
