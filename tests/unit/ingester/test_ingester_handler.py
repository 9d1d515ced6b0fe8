"""IngestHandler with an in-memory ledger and CSV source: outputs, skips, re-emission, error mapping."""

from __future__ import annotations

from datetime import UTC, datetime

import psycopg
import pytest

from services.ingester.csv_parser import ParsedInvoice
from services.ingester.domain import Decision, LedgerEntry, decide
from services.ingester.handlers import (
    H_CSV_COLUMN,
    H_CSV_ROW,
    H_CSV_VALUE,
    IngestHandler,
    UnexpectedEvent,
    UnknownAccount,
)
from shared.digitalocean import DigitalOceanAuthError, DigitalOceanNotFound, DigitalOceanUnavailable
from shared.events import BillingHistoryEntry, CostLine, InvoiceDiscovered, InvoiceEnd, decode, encode
from shared.kafka import Record, Retryable
from shared.kafka.deadletter import H_ERROR_CLASS, H_ERROR_MESSAGE
from shared.settings import Settings
from tests.unit.ingester.test_ingester_domain import CSV

UUID = "inv-1"
T0 = datetime(2026, 5, 1, 8, 0, tzinfo=UTC)


class MemoryLedger:
    def __init__(self) -> None:
        self.rows: dict[str, list[LedgerEntry]] = {}
        self.fail: Exception | None = None

    def reserve(self, invoice_uuid: str, account: str, parsed: ParsedInvoice) -> tuple[Decision, datetime | None]:
        if self.fail:
            raise self.fail
        revs = self.rows.setdefault(invoice_uuid, [])
        d = decide(revs[-1] if revs else None, parsed.csv_sha256, parsed.parser_version)
        if d.action == "skip":
            return d, None
        if d.action == "reemit":
            return d, revs[-1].reserved_at
        revs.append(LedgerEntry(invoice_uuid, d.revision, parsed.csv_sha256, parsed.parser_version, "pending", T0))
        return d, T0

    def mark_committed(self, invoice_uuid: str, revision: int) -> bool:
        revs = self.rows[invoice_uuid]
        for i, e in enumerate(revs):
            if e.revision == revision and e.state == "pending":
                revs[i] = LedgerEntry(e.invoice_uuid, e.revision, e.csv_sha256, e.parser_version, "committed", T0)
                return True
        return False


class Source:
    def __init__(self, text: str = CSV) -> None:
        self.text = text
        self.error: Exception | None = None
        self.calls = 0

    def invoice_csv(self, invoice_uuid: str) -> str:
        self.calls += 1
        if self.error:
            raise self.error
        return self.text


def discovered_record(offset: int = 0, account: str = "acct", amount_minor: int = 1210) -> Record:
    data = InvoiceDiscovered(
        invoice_uuid=UUID,
        invoice_id="123",
        period="2026-04-01",
        amount_minor=amount_minor,
        date=datetime(2026, 5, 1, 8, 44, tzinfo=UTC),
    )
    return Record("p.billing.invoice-discovered.v1", 0, offset, UUID, encode(data, account))


@pytest.fixture
def parts() -> tuple[IngestHandler, MemoryLedger, Source]:
    ledger, source = MemoryLedger(), Source()
    s = Settings(_env_file=None, kafka_topic_prefix="p.")
    h = IngestHandler(s, ledger, {"acct": source}.get, known_accounts=["acct"], auth_retry_s=123.0)  # type: ignore[arg-type]
    return h, ledger, source


def test_emits_lines_then_marker_keyed_by_invoice(parts) -> None:
    h, ledger, _ = parts
    outs = h.transform(discovered_record())
    assert {o.topic for o in outs} == {"p.billing.cost-lines.v1"}
    assert {o.key for o in outs} == {UUID}
    events = [decode(o.value)[1] for o in outs]
    assert [type(e) for e in events] == [CostLine, CostLine, CostLine, InvoiceEnd]
    end = events[-1]
    assert isinstance(end, InvoiceEnd)
    assert (end.revision, end.line_count, end.amount_gross_minor, end.reconciliation.status) == (1, 3, 1210, "matched")
    assert ledger.rows[UUID][-1].state == "pending"
    h.after_commit(discovered_record())
    assert ledger.rows[UUID][-1].state == "committed"


def test_same_event_twice_after_commit_is_skipped(parts) -> None:
    h, ledger, _ = parts
    h.transform(discovered_record(0))
    h.after_commit(discovered_record(0))
    assert h.transform(discovered_record(1)) == []
    h.after_commit(discovered_record(1))
    assert [e.revision for e in ledger.rows[UUID]] == [1]


def test_uncommitted_revision_is_re_emitted_byte_for_byte(parts) -> None:
    h, _, _ = parts
    first = h.transform(discovered_record(0))  # the transaction never committed (crash)
    again = h.transform(discovered_record(0))
    assert [o.value for o in first] == [o.value for o in again]


def test_changed_csv_is_a_new_revision(parts) -> None:
    h, _, source = parts
    h.transform(discovered_record(0))
    h.after_commit(discovered_record(0))
    source.text = CSV.replace("$6.00", "$6.50")
    outs = h.transform(discovered_record(1))
    end = decode(outs[-1].value)[1]
    assert isinstance(end, InvoiceEnd)
    assert end.revision == 2 and end.amount_gross_minor == 1260
    assert end.reconciliation.status == "mismatch" and end.reconciliation.difference_minor == 50


def test_parse_error_is_one_dead_letter_with_row_column_value(parts) -> None:
    h, ledger, source = parts
    source.text = CSV.replace("$5.00", "$5.0.0")
    rec = discovered_record(7)
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
        h.transform(discovered_record(account="other"))
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
        h.transform(discovered_record())
    assert ei.value.delay_s is None


def test_auth_error_retries_slowly_and_loudly(parts, caplog: pytest.LogCaptureFixture) -> None:
    h, _, source = parts
    source.error = DigitalOceanAuthError("GET /x", "unauthorized", status=401)
    with pytest.raises(Retryable) as ei:
        h.transform(discovered_record())
    assert ei.value.delay_s == 123.0
    assert any(r.levelname == "ERROR" and "TOKEN REJECTED" in r.getMessage() for r in caplog.records)


def test_not_found_propagates_for_the_dead_letter_topic(parts) -> None:
    h, _, source = parts
    source.error = DigitalOceanNotFound("GET /x", "not_found", status=404)
    with pytest.raises(DigitalOceanNotFound):
        h.transform(discovered_record())


def test_ledger_outage_is_retryable(parts) -> None:
    h, ledger, _ = parts
    ledger.fail = psycopg.OperationalError("connection refused")
    with pytest.raises(Retryable, match="ledger unavailable"):
        h.transform(discovered_record())


def test_after_commit_without_a_revision_is_a_no_op(parts) -> None:
    h, ledger, _ = parts
    h.after_commit(discovered_record(99))
    assert ledger.rows == {}
