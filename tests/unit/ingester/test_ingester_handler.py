"""IngestHandler with an in-memory ledger and CSV source: outputs, skips, re-emission, error mapping."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime

import psycopg
import pytest

from services.ingester.csv_parser import ParsedInvoice
from services.ingester.domain import Decision, Hold, LedgerEntry, decide, next_hold
from services.ingester.handler import (
    H_CSV_BYTE,
    H_CSV_COLUMN,
    H_CSV_LINE,
    H_CSV_ROW,
    H_CSV_VALUE,
    IngestHandler,
    UnexpectedEvent,
    UnknownAccount,
    UnknownInvoice,
)
from shared.digitalocean import DigitalOceanAuthError, DigitalOceanNotFound, DigitalOceanUnavailable
from shared.events import (
    BillingHistoryEntry,
    CostLine,
    InvoiceDiscovered,
    InvoiceEnd,
    decode,
    encode,
)
from shared.kafka import Record, Retryable
from shared.kafka.deadletter import H_ERROR_CLASS, H_ERROR_MESSAGE
from shared.settings import Settings
from tests.factories import event_record, invoice_discovered, invoice_refetch_requested
from tests.unit.ingester.test_ingester_domain import CSV

UUID = "inv-1"
T0 = datetime(2026, 5, 1, 8, 0, tzinfo=UTC)
ON_TOPIC = {"topic": "p.billing.invoice-discovered.v1", "key": UUID}
DISCOVERED = {
    "invoice_uuid": UUID,
    "amount_minor": 1210,
    "listed_amount_minor": 1210,
    "date": datetime(2026, 5, 1, 8, 44, tzinfo=UTC),
}


class MemoryLedger:
    def __init__(self) -> None:
        self.rows: dict[str, list[LedgerEntry]] = {}
        self.fail: Exception | None = None
        self.discoveries: dict[str, tuple[str, InvoiceDiscovered]] = {}
        self.holds: dict[str, Hold] = {}

    def reserve(
        self,
        invoice_uuid: str,
        account: str,
        parsed: ParsedInvoice,
        evidence: str | None = None,
        status: str = "",
        *,
        reemit_unverified: int | None = None,
    ) -> tuple[Decision, datetime | None]:
        if self.fail:
            raise self.fail
        revs = self.rows.setdefault(invoice_uuid, [])
        d = decide(
            revs[-1] if revs else None,
            parsed.csv_sha256,
            parsed.parser_version,
            evidence,
            reemit_unverified=reemit_unverified,
        )
        if d.action == "skip":
            return d, None
        if d.action == "reemit":
            return d, revs[-1].reserved_at
        revs.append(
            LedgerEntry(invoice_uuid, d.revision, parsed.csv_sha256, parsed.parser_version, "pending", T0, evidence)
        )
        return d, T0

    def remember(self, account: str, discovered: InvoiceDiscovered) -> None:
        self.discoveries[discovered.invoice_uuid] = (account, discovered)

    def last_discovery(self, invoice_uuid: str) -> tuple[str, InvoiceDiscovered] | None:
        return self.discoveries.get(invoice_uuid)

    def settle(self, invoice_uuid: str, outcome, *, revision, reason, policy) -> Hold | None:
        new = next_hold(self.holds.get(invoice_uuid), outcome, revision=revision, reason=reason, now=T0, policy=policy)
        if new is None:
            self.holds.pop(invoice_uuid, None)
        else:
            self.holds[invoice_uuid] = new
        return new

    def revisions(self, invoice_uuid: str) -> list[dict]:
        return [
            {
                "csv_sha256": e.csv_sha256,
                "parser_version": e.parser_version,
                "state": e.state,
                "evidence_sha256": e.evidence_sha256,
                "revision": e.revision,
            }
            for e in self.rows.get(invoice_uuid, [])
        ]

    def mark_committed(self, invoice_uuid: str, revision: int) -> bool:
        revs = self.rows[invoice_uuid]
        for i, e in enumerate(revs):
            if e.revision == revision and e.state == "pending":
                revs[i] = replace(e, state="committed")
                return True
        return False


class Source:
    """A DigitalOcean account: the CSV (text, served as its UTF-8 bytes, or raw bytes), summary, invoice list."""

    def __init__(self, text: str | bytes = CSV) -> None:
        self.text = text
        self.error: Exception | None = None
        self.calls = 0
        self.summary: dict | None = None
        self.listing: list[dict] = [{"invoice_uuid": UUID, "amount": "12.10", "invoice_period": "2026-04"}]
        self.listing_calls = 0
        self.items: list[dict] | None = None  # None: DigitalOcean answers 404
        self.items_error: Exception | None = None

    def invoice_items(self, invoice_uuid: str) -> Iterator[dict]:
        if self.items_error:
            raise self.items_error
        if self.items is None:
            raise DigitalOceanNotFound("GET /v2/customers/my/invoices/x", "not_found", status=404)
        return iter(self.items)

    def invoice_csv(self, invoice_uuid: str) -> bytes:
        self.calls += 1
        if self.error:
            raise self.error
        return self.text.encode() if isinstance(self.text, str) else self.text

    def invoice_summary(self, invoice_uuid: str) -> dict:
        if self.summary is None:
            raise DigitalOceanNotFound("GET /summary", "not_found", status=404)
        return self.summary

    def invoices(self) -> Iterator[dict]:
        self.listing_calls += 1
        return iter(self.listing)


@pytest.fixture
def parts() -> tuple[IngestHandler, MemoryLedger, Source]:
    ledger, source = MemoryLedger(), Source()
    s = Settings(_env_file=None, kafka_topic_prefix="p.")
    h = IngestHandler(s, ledger, {"acct": source}.get, known_accounts=["acct"], auth_retry_s=123.0)  # type: ignore[arg-type]
    return h, ledger, source


def test_emits_lines_then_marker_keyed_by_invoice(parts) -> None:
    h, ledger, _ = parts
    outs = h.transform(event_record(invoice_discovered(**DISCOVERED), **ON_TOPIC))
    assert {o.topic for o in outs} == {"p.billing.cost-lines.v1"}
    assert {o.key for o in outs} == {UUID}
    events = [decode(o.value)[1] for o in outs]
    assert [type(e) for e in events] == [CostLine, CostLine, CostLine, InvoiceEnd]
    end = events[-1]
    assert isinstance(end, InvoiceEnd)
    assert (end.revision, end.line_count, end.amount_gross_minor, end.reconciliation.status) == (1, 3, 1210, "matched")
    assert ledger.rows[UUID][-1].state == "pending"
    h.after_commit(event_record(invoice_discovered(**DISCOVERED), **ON_TOPIC))
    assert ledger.rows[UUID][-1].state == "committed"


def test_same_event_twice_after_commit_is_skipped(parts) -> None:
    h, ledger, _ = parts
    h.transform(event_record(invoice_discovered(**DISCOVERED), **ON_TOPIC))
    h.after_commit(event_record(invoice_discovered(**DISCOVERED), **ON_TOPIC))
    assert h.transform(event_record(invoice_discovered(**DISCOVERED), offset=1, **ON_TOPIC)) == []
    h.after_commit(event_record(invoice_discovered(**DISCOVERED), offset=1, **ON_TOPIC))
    assert [e.revision for e in ledger.rows[UUID]] == [1]


def test_uncommitted_revision_is_re_emitted_byte_for_byte(parts) -> None:
    h, _, _ = parts
    first = h.transform(
        event_record(invoice_discovered(**DISCOVERED), **ON_TOPIC)
    )  # the transaction never committed (crash)
    again = h.transform(event_record(invoice_discovered(**DISCOVERED), **ON_TOPIC))
    assert [o.value for o in first] == [o.value for o in again]


def test_the_verifiers_request_re_emits_a_committed_unreadable_revision_byte_for_byte(parts) -> None:
    """The broker aborted revision 1 after acknowledging its commit: asked again, it is the same records."""
    h, ledger, source = parts
    first = h.transform(event_record(invoice_discovered(**DISCOVERED), **ON_TOPIC))
    h.after_commit(event_record(invoice_discovered(**DISCOVERED), **ON_TOPIC))
    ledger.rows[UUID][-1] = replace(ledger.rows[UUID][-1], verified=False)
    request = invoice_refetch_requested(invoice_uuid=UUID, requested_at=T0, reemit_revision=1)
    again = h.transform(event_record(request, account="acct", offset=1, **ON_TOPIC))
    assert [o.value for o in again] == [o.value for o in first]
    assert [o.key for o in again] == [o.key for o in first]
    # Once verified, the same request (say a second replica's) emits nothing.
    ledger.rows[UUID][-1] = replace(ledger.rows[UUID][-1], verified=True)
    assert h.transform(event_record(request, account="acct", offset=2, **ON_TOPIC)) == []
    assert [e.revision for e in ledger.rows[UUID]] == [1] and source.calls == 3


def test_changed_csv_is_a_new_revision(parts) -> None:
    h, _, source = parts
    h.transform(event_record(invoice_discovered(**DISCOVERED), **ON_TOPIC))
    h.after_commit(event_record(invoice_discovered(**DISCOVERED), **ON_TOPIC))
    source.text = CSV.replace("$6.00", "$6.50")
    outs = h.transform(event_record(invoice_discovered(**DISCOVERED), offset=1, **ON_TOPIC))
    end = decode(outs[-1].value)[1]
    assert isinstance(end, InvoiceEnd)
    assert end.revision == 2 and end.amount_gross_minor == 1260
    assert end.reconciliation.status == "mismatch" and end.reconciliation.difference_minor == 50


def test_parse_error_is_one_dead_letter_with_row_column_value(parts) -> None:
    h, ledger, source = parts
    source.text = CSV.replace("$5.00", "$5.0.0")
    rec = event_record(invoice_discovered(**DISCOVERED), offset=7, **ON_TOPIC)
    outs = h.transform(rec)
    assert len(outs) == 1
    dlq = outs[0]
    assert dlq.topic == "p.billing.invoice-discovered.v1.dlq"
    assert dlq.value == rec.value and dlq.key == UUID
    assert dlq.headers[H_CSV_ROW] == "2" and dlq.headers[H_CSV_COLUMN] == "USD" and dlq.headers[H_CSV_VALUE] == "$5.0.0"
    assert dlq.headers[H_ERROR_CLASS].endswith("CsvParseError")
    assert "row 2" in dlq.headers[H_ERROR_MESSAGE] and "$5.0.0" in dlq.headers[H_ERROR_MESSAGE]
    assert UUID not in ledger.rows  # nothing reserved for a rejected CSV


def test_unknown_account_is_dead_lettered_with_a_clear_reason(parts) -> None:
    h, _, source = parts
    with pytest.raises(UnknownAccount, match=r"'other'.*known: acct"):
        h.transform(event_record(invoice_discovered(**DISCOVERED), account="other", **ON_TOPIC))
    assert source.calls == 0


def test_other_event_types_are_rejected(parts) -> None:
    h, _, _ = parts
    e = BillingHistoryEntry(entry_type="Payment", description="p", amount_minor=-1, date=T0)
    with pytest.raises(UnexpectedEvent):
        h.transform(Record("t", 0, 0, "acct", encode(e, "acct")))


def test_unavailable_digitalocean_is_retryable(parts) -> None:
    h, _, source = parts
    source.error = DigitalOceanUnavailable("GET /x", "gave up")
    with pytest.raises(Retryable) as ei:
        h.transform(event_record(invoice_discovered(**DISCOVERED), **ON_TOPIC))
    assert ei.value.delay_s is None


def test_auth_error_retries_slowly_and_loudly(parts, caplog: pytest.LogCaptureFixture) -> None:
    h, _, source = parts
    source.error = DigitalOceanAuthError("GET /x", "unauthorized", status=401)
    with pytest.raises(Retryable) as ei:
        h.transform(event_record(invoice_discovered(**DISCOVERED), **ON_TOPIC))
    assert ei.value.delay_s == 123.0
    assert any(r.levelname == "ERROR" and "TOKEN REJECTED" in r.getMessage() for r in caplog.records)


def test_not_found_propagates_for_the_dead_letter_topic(parts) -> None:
    h, _, source = parts
    source.error = DigitalOceanNotFound("GET /x", "not_found", status=404)
    with pytest.raises(DigitalOceanNotFound):
        h.transform(event_record(invoice_discovered(**DISCOVERED), **ON_TOPIC))


def test_ledger_outage_is_retryable(parts) -> None:
    h, ledger, _ = parts
    ledger.fail = psycopg.OperationalError("connection refused")
    with pytest.raises(Retryable, match="ledger unavailable"):
        h.transform(event_record(invoice_discovered(**DISCOVERED), **ON_TOPIC))


def test_after_commit_without_a_revision_is_a_no_op(parts) -> None:
    h, ledger, _ = parts
    h.after_commit(event_record(invoice_discovered(**DISCOVERED), offset=99, **ON_TOPIC))
    assert ledger.rows == {}


# ------------------------------------------------------------------------------------------- money gates
def _end(outs) -> InvoiceEnd:
    end = decode(outs[-1].value)[1]
    assert isinstance(end, InvoiceEnd)
    return end


def test_a_short_csv_is_emitted_held_and_refetched_until_a_whole_one_releases_it(parts) -> None:
    h, ledger, source = parts
    whole = source.text
    source.text = CSV.split("Taxes")[0]  # cut after a whole row: it parses, only the amounts can tell
    end = _end(h.transform(event_record(invoice_discovered(**DISCOVERED), **ON_TOPIC)))
    h.after_commit(event_record(invoice_discovered(**DISCOVERED), **ON_TOPIC))
    assert (end.line_count, end.amount_gross_minor, end.reconciliation.status) == (2, 1100, "mismatch")
    assert {c.source: c.ok for c in end.reconciliation.checks} == {"billing_history": False, "invoice_list": False}
    assert ledger.holds[UUID].attempts == 0 and ledger.holds[UUID].next_at is not None

    assert (
        h.transform(
            event_record(
                invoice_refetch_requested(invoice_uuid=UUID, requested_at=T0, attempt=1),
                account="whatever",
                offset=1,
                **ON_TOPIC,
            )
        )
        == []
    )  # the same short body again: still held, one attempt counted
    assert ledger.holds[UUID].attempts == 1
    source.text = whole
    end = _end(
        h.transform(
            event_record(
                invoice_refetch_requested(invoice_uuid=UUID, requested_at=T0, attempt=2),
                account="whatever",
                offset=2,
                **ON_TOPIC,
            )
        )
    )
    assert (end.revision, end.amount_gross_minor, end.reconciliation.status) == (2, 1210, "matched")
    assert UUID not in ledger.holds


def test_a_refetch_of_an_invoice_never_discovered_is_dead_lettered(parts) -> None:
    h, _, source = parts
    with pytest.raises(UnknownInvoice):
        h.transform(
            event_record(
                invoice_refetch_requested(invoice_uuid=UUID, requested_at=T0, attempt=1), account="whatever", **ON_TOPIC
            )
        )
    assert source.calls == 0


def test_a_refetch_uses_the_account_of_the_discovery_not_of_the_request(parts) -> None:
    h, _, source = parts
    h.transform(event_record(invoice_discovered(**(DISCOVERED | {"amount_minor": 999})), **ON_TOPIC))
    h.after_commit(event_record(invoice_discovered(**DISCOVERED), **ON_TOPIC))
    assert (
        h.transform(
            event_record(
                invoice_refetch_requested(invoice_uuid=UUID, requested_at=T0, attempt=1),
                account="whatever",
                offset=1,
                **ON_TOPIC,
            )
        )
        == []
    )  # same content: skipped, fetched from account "acct"
    assert source.calls == 2


def test_the_invoice_list_is_fetched_when_the_discovery_lacks_its_amount(parts) -> None:
    h, _, source = parts
    end = _end(
        h.transform(event_record(invoice_discovered(**(DISCOVERED | {"listed_amount_minor": None})), **ON_TOPIC))
    )
    assert end.reconciliation.status == "matched" and source.listing_calls == 1
    h.transform(event_record(invoice_discovered(**(DISCOVERED | {"listed_amount_minor": None})), offset=1, **ON_TOPIC))
    assert source.listing_calls == 1  # cached for a while: one listing per account, not per invoice
    source.listing = []
    h._listings.clear()
    end = _end(
        h.transform(
            event_record(invoice_discovered(**(DISCOVERED | {"listed_amount_minor": None})), offset=2, **ON_TOPIC)
        )
    )
    assert end.reconciliation.status == "unknown" and "not in DigitalOcean's invoice list" in end.reconciliation.reason


def test_the_summary_cross_checks_amount_and_taxes(parts) -> None:
    h, _, source = parts
    source.summary = {"amount": "12.10", "taxes": {"name": "Taxes", "amount": "1.10"}}
    end = _end(h.transform(event_record(invoice_discovered(**DISCOVERED), **ON_TOPIC)))
    assert end.reconciliation.status == "matched"
    assert [c.source for c in end.reconciliation.checks] == [
        "billing_history",
        "invoice_list",
        "summary_amount",
        "summary_taxes",
    ]


@pytest.mark.parametrize(
    ("old", "new", "line", "what"),
    [
        (b"web-01", b"caf\xe9-01", 2, "not UTF-8: byte 0xE9"),
        (b"vol (syd1)", b"vol\x00(syd1)", 3, "NUL (byte 0x00)"),
        (b"vol (syd1)", b"vol\x1b(syd1)", 3, "control character U+001B"),
    ],
)
def test_bad_bytes_dead_letter_the_invoice_naming_the_byte_and_line(parts, old, new, line, what) -> None:
    h, ledger, source = parts
    source.text = body = CSV.encode().replace(old, new)
    byte = body.index(new) + 3  # the bad byte is the 4th of the replacement
    (dlq,) = h.transform(event_record(invoice_discovered(**DISCOVERED), offset=3, **ON_TOPIC))
    assert dlq.topic.endswith(".dlq")
    assert dlq.headers[H_CSV_BYTE] == str(byte) and dlq.headers[H_CSV_LINE] == str(line)
    assert what in dlq.headers[H_ERROR_MESSAGE] and f"line {line}" in dlq.headers[H_ERROR_MESSAGE]
    assert UUID not in ledger.rows


def test_the_tax_traps_are_split_by_the_one_rule(parts) -> None:
    h, _, source = parts
    header = CSV.splitlines()[0]
    rows = [
        "Droplets,,syntax-highlighter (s-1vcpu-1gb),720,,,$6.00,,iaas",
        "Spaces,,taxonomy-data,720,,,$5.00,,iaas",
        "Taxes,,Regional levy,,,,$0.50,,iaas",
        "Other,,VAT (20%),,,,$0.30,,iaas",
        "Other,,HST,,,,$0.20,,iaas",
        "Credits,,Promotional credit,,,,-$1.00,,iaas",
    ]
    source.text = header + "\n" + "\n".join(rows) + "\n"
    outs = h.transform(
        event_record(
            invoice_discovered(**(DISCOVERED | {"amount_minor": 1100, "listed_amount_minor": 1100})), **ON_TOPIC
        )
    )
    lines = [decode(o.value)[1] for o in outs[:-1]]
    assert [ln.is_tax for ln in lines] == [False, False, True, True, True, False]
    end = _end(outs)
    assert (end.amount_net_minor, end.amount_tax_minor, end.amount_gross_minor) == (1000, 100, 1100)


# ------------------------------------------------------------------------------------------ invoice items
WEB_ITEM = {
    "product": "Droplets",
    "description": "web-01 (s-1vcpu-1gb)",
    "amount": "6.00",
    "start_time": "2026-04-01T00:00:00Z",
    "end_time": "2026-05-01T00:00:00Z",
    "resource_id": "401112201",
    "resource_uuid": "f0e1d2c3-0000-4000-8000-000000000001",
    "duration": "720",
    "duration_unit": "Hours",
}


def _lines(outs) -> list[CostLine]:
    return [e for e in (decode(o.value)[1] for o in outs) if isinstance(e, CostLine)]


def test_items_give_the_lines_their_ids(parts) -> None:
    h, _, source = parts
    source.items = [WEB_ITEM]
    lines = _lines(h.transform(event_record(invoice_discovered(**DISCOVERED), **ON_TOPIC)))
    assert (lines[0].resource_id, lines[0].resource_uuid, lines[0].duration, lines[0].item_join) == (
        "401112201",
        "f0e1d2c3-0000-4000-8000-000000000001",
        "720",
        "exact",
    )
    assert [ln.item_join for ln in lines[1:]] == ["no_item", "no_item"]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _handler_with_clock(ledger: MemoryLedger, source: Source, items_wait_s: float) -> tuple[IngestHandler, Clock]:
    clock = Clock()
    s = Settings(_env_file=None, kafka_topic_prefix="p.", ingester_items_wait_s=items_wait_s)
    h = IngestHandler(s, ledger, {"acct": source}.get, known_accounts=["acct"], clock=clock)  # type: ignore[arg-type]
    return h, clock


def test_an_items_outage_makes_the_invoice_wait_then_the_items_arrive_in_its_one_revision() -> None:
    """A 5xx burst on the items must not give a revision without ids and then a second one with them."""
    ledger, source = MemoryLedger(), Source()
    h, clock = _handler_with_clock(ledger, source, items_wait_s=600.0)
    source.items_error = DigitalOceanUnavailable("GET /v2/customers/my/invoices/x", "gave up after 6 attempts")
    for waited in (0.0, 300.0, 599.0):
        clock.now = 1000.0 + waited
        with pytest.raises(Retryable, match="items unavailable for") as e:
            h.transform(event_record(invoice_discovered(**DISCOVERED), **ON_TOPIC))
        assert e.value.parkable  # specific to this invoice: parked after the budget, never blocking others
    assert UUID not in ledger.rows  # nothing reserved while it waits
    source.items_error, source.items = None, [WEB_ITEM]
    outs = h.transform(event_record(invoice_discovered(**DISCOVERED), **ON_TOPIC))
    assert _lines(outs)[0].resource_id == "401112201" and [e.revision for e in ledger.rows[UUID]] == [1]


def test_an_items_outage_longer_than_the_wait_is_the_csv_alone_never_a_blocked_invoice() -> None:
    ledger, source = MemoryLedger(), Source()
    h, clock = _handler_with_clock(ledger, source, items_wait_s=600.0)
    source.items_error = DigitalOceanUnavailable("GET /x", "down")
    with pytest.raises(Retryable):
        h.transform(event_record(invoice_discovered(**DISCOVERED), **ON_TOPIC))
    clock.now += 600.0
    lines = _lines(h.transform(event_record(invoice_discovered(**DISCOVERED), **ON_TOPIC)))
    h.after_commit(event_record(invoice_discovered(**DISCOVERED), **ON_TOPIC))
    assert len(lines) == 3 and all(ln.item_join == "items_unavailable" for ln in lines)
    assert "items unavailable for 600s" in lines[0].item_note
    # Discovered again during the outage: the committed CSV-alone revision is kept, no wait, no new revision.
    clock.now += 5.0
    assert h.transform(event_record(invoice_discovered(**DISCOVERED), offset=1, **ON_TOPIC)) == [] and [
        e.revision for e in ledger.rows[UUID]
    ] == [1]


def test_an_items_outage_does_not_hold_back_an_invoice_already_committed_with_the_same_csv(parts) -> None:
    h, ledger, source = parts
    source.items = [WEB_ITEM]
    h.transform(event_record(invoice_discovered(**DISCOVERED), **ON_TOPIC))
    h.after_commit(event_record(invoice_discovered(**DISCOVERED), **ON_TOPIC))
    source.items_error = DigitalOceanUnavailable("GET /x", "down")
    assert (
        h.transform(event_record(invoice_discovered(**DISCOVERED), offset=1, **ON_TOPIC)) == []
    )  # kept at once: nothing to wait for
    assert [e.revision for e in ledger.rows[UUID]] == [1]


def test_items_failing_is_the_csv_alone_with_a_note_never_a_blocked_invoice() -> None:
    ledger, source = MemoryLedger(), Source()
    h, _ = _handler_with_clock(ledger, source, items_wait_s=0.0)
    source.items_error = DigitalOceanUnavailable("GET /v2/customers/my/invoices/x", "gave up after 6 attempts")
    outs = h.transform(event_record(invoice_discovered(**DISCOVERED), **ON_TOPIC))
    lines = _lines(outs)
    assert len(lines) == 3 and all(ln.item_join == "items_unavailable" and ln.resource_id is None for ln in lines)
    assert "items unavailable" in lines[0].item_note
    end = decode(outs[-1].value)[1]
    assert isinstance(end, InvoiceEnd) and end.reconciliation.status == "matched"  # the money gates: unchanged


def test_items_arriving_later_re_emit_with_ids_and_an_outage_later_keeps_them() -> None:
    ledger, source = MemoryLedger(), Source()
    h, _ = _handler_with_clock(ledger, source, items_wait_s=0.0)
    source.items_error = DigitalOceanUnavailable("GET /x", "down")
    h.transform(event_record(invoice_discovered(**DISCOVERED), **ON_TOPIC))
    h.after_commit(event_record(invoice_discovered(**DISCOVERED), **ON_TOPIC))
    source.items_error, source.items = None, [WEB_ITEM]
    outs = h.transform(event_record(invoice_discovered(**DISCOVERED), offset=1, **ON_TOPIC))
    h.after_commit(event_record(invoice_discovered(**DISCOVERED), offset=1, **ON_TOPIC))
    assert _lines(outs)[0].resource_id == "401112201" and [e.revision for e in ledger.rows[UUID]] == [1, 2]
    source.items_error = DigitalOceanUnavailable("GET /x", "down again")
    assert (
        h.transform(event_record(invoice_discovered(**DISCOVERED), offset=2, **ON_TOPIC)) == []
    )  # no revision 3 without ids
    assert [e.revision for e in ledger.rows[UUID]] == [1, 2]
