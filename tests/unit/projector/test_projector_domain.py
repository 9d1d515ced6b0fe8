"""The projector's pure mapping (record → change) and the invoice status names."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from services.projector import domain
from services.projector.domain import (
    Completed,
    DeadLettered,
    Discovered,
    Ingested,
    LineMatched,
    Pushed,
    ResourceGone,
    ResourceSeen,
    UnexpectedEvent,
    to_change,
)
from shared.events import (
    Balance,
    BillingHistoryEntry,
    CostLineMatched,
    EventDecodeError,
    InvoiceCompleted,
    InvoiceDiscovered,
    InvoiceEnd,
    InvoicePushed,
    InvoiceRefetchRequested,
    InvoiceReleased,
    Reconciliation,
    Resource,
    encode,
)
from shared.kafka import deadletter as dl
from shared.kafka.records import Record
from shared.topics import (
    BALANCE,
    COST_LINES,
    COST_LINES_MATCHED,
    HISTORY,
    INVOICE_COMPLETED,
    INVOICE_DISCOVERED,
    INVOICE_PUSHED,
    RESOURCES,
)
from tests.factories import cost_line, event_record, invoice_completed, record
from tests.helpers import proven

P = "t."
T0 = datetime(2026, 5, 1, tzinfo=UTC)
REC = Reconciliation(status="matched", expected_minor=100, difference_minor=0)


def test_every_topic_maps_to_its_change() -> None:
    cases = [
        (
            BALANCE,
            Balance(
                month_to_date_balance_minor=1, account_balance_minor=2, month_to_date_usage_minor=3, generated_at=T0
            ),
            domain.BalanceSnapshot,
        ),
        (
            HISTORY,
            BillingHistoryEntry(entry_type="Payment", description="p", amount_minor=-5, date=T0),
            domain.HistoryEntry,
        ),
        (
            INVOICE_DISCOVERED,
            InvoiceDiscovered(invoice_uuid="u1", period="2026-04-01", amount_minor=9, date=T0),
            Discovered,
        ),
        (
            COST_LINES,
            InvoiceEnd(
                invoice_uuid="u1",
                revision=1,
                period="2026-04-01",
                invoice_date=date(2026, 5, 1),
                line_count=1,
                amount_net_minor=1,
                amount_tax_minor=0,
                amount_gross_minor=1,
                csv_sha256="x",
                parser_version="1",
                reconciliation=REC,
            ),
            Ingested,
        ),
        (
            COST_LINES_MATCHED,
            CostLineMatched(line=cost_line(description="web-01 (s-1)"), kind="droplet", name="web-01", resource_id="1"),
            LineMatched,
        ),
        (
            INVOICE_COMPLETED,
            InvoiceCompleted(
                invoice_uuid="u1",
                revision=1,
                period="2026-04-01",
                invoice_date=date(2026, 5, 1),
                line_count=1,
                matched_count=1,
                amount_net_minor=1,
                amount_tax_minor=0,
                amount_gross_minor=1,
                reconciliation=REC,
            ),
            Completed,
        ),
        (
            INVOICE_PUSHED,
            InvoicePushed(
                invoice_uuid="u1",
                revision=1,
                finance_invoice_id="f1",
                action="created",
                payload_sha256="s",
                pushed_at=T0,
            ),
            Pushed,
        ),
        (RESOURCES, Resource(kind="droplet", resource_id="1", name="web-01"), ResourceSeen),
    ]
    for topic, data, kind in cases:
        ch = to_change(event_record(data, topic=topic.name(P), offset=7), P)
        assert isinstance(ch, kind), topic
        assert ch.account == "acct" and ch.event_id


def test_raw_cost_lines_are_ignored_only_the_end_marker_counts() -> None:
    assert to_change(event_record(cost_line(description="web-01 (s-1)"), topic=COST_LINES.name(P), offset=7), P) is None
    # Recognised without decoding only in the exact shape encode() writes; any other shape is decoded and judged.
    raw = encode(cost_line(description="web-01 (s-1)"), "acct")
    assert to_change(record(b" " + raw, topic=COST_LINES.name(P), offset=7), P) is None
    with pytest.raises(EventDecodeError, match="unsupported schema_version"):
        to_change(
            record(raw.replace(b'"schema_version":1', b'"schema_version":9'), topic=COST_LINES.name(P), offset=7), P
        )
    with pytest.raises(EventDecodeError):
        to_change(record(raw[:60], topic=COST_LINES.name(P), offset=7), P)


def test_event_on_the_wrong_topic_is_poison() -> None:
    with pytest.raises(UnexpectedEvent):
        to_change(event_record(cost_line(description="web-01 (s-1)"), topic=BALANCE.name(P), offset=7), P)


def test_garbage_and_tombstones_outside_resources_are_poison() -> None:
    with pytest.raises(EventDecodeError):
        to_change(record(b"{not json", topic=HISTORY.name(P), offset=7), P)
    with pytest.raises(EventDecodeError):
        to_change(record(None, topic=HISTORY.name(P), offset=7), P)


def test_bad_period_is_poison() -> None:
    bad = InvoiceDiscovered(invoice_uuid="u1", period="April", amount_minor=9, date=T0)
    with pytest.raises(ValueError, match="YYYY-MM-DD"):
        to_change(event_record(bad, topic=INVOICE_DISCOVERED.name(P), offset=7), P)


def test_unknown_topic_is_refused() -> None:
    with pytest.raises(UnexpectedEvent):
        to_change(record(b"{}", topic="other.topic", offset=7), P)


def test_resource_tombstone_deletes_by_key() -> None:
    ch = to_change(record(None, topic=RESOURCES.name(P), offset=7, key="acct:droplet:123"), P)
    assert ch == ResourceGone("acct", "", "droplet", "123")
    with pytest.raises(ValueError):
        to_change(record(None, topic=RESOURCES.name(P), offset=7, key="acct:droplet"), P)


def test_dead_letter_headers_are_read_leniently() -> None:
    headers = {
        dl.H_TOPIC: HISTORY.name(P).encode(),
        dl.H_PARTITION: b"2",
        dl.H_OFFSET: b"41",
        dl.H_ERROR_CLASS: b"shared.events.EventDecodeError",
        dl.H_ERROR_MESSAGE: b"bad\x00 thing",
        dl.H_SERVICE: b"matcher",
        dl.H_FAILED_AT: T0.isoformat().encode(),
    }
    ch = to_change(record(b"\x00raw", topic=HISTORY.dlq(P), offset=7, key="acct", headers=headers), P)
    assert isinstance(ch, DeadLettered)
    assert (ch.source_topic, ch.source_partition, ch.source_offset) == (HISTORY.name(P), 2, 41)
    assert ch.error_message == "bad thing" and ch.service == "matcher" and ch.failed_at == T0
    assert ch.record_value == b"\x00raw"
    # No headers at all, or nonsense in them: still a row, never an exception.
    odd = to_change(
        record(None, topic=HISTORY.dlq(P), offset=7, key=None, headers={dl.H_OFFSET: b"x", dl.H_FAILED_AT: b"y"}), P
    )
    assert isinstance(odd, DeadLettered) and odd.source_offset is None and odd.failed_at is None


def test_status_names_follow_the_rank_order() -> None:
    # That the order never goes backwards is the store's SQL: tests/integration/projector/test_projector_store.py.
    assert [domain.status_name(i) for i in range(5)] == ["discovered", "ingested", "matched", "completed", "pushed"]


def test_dead_letter_dedup_key_is_the_source_record_and_service() -> None:
    headers = {dl.H_TOPIC: b"t.x", dl.H_PARTITION: b"1", dl.H_OFFSET: b"5", dl.H_SERVICE: b"matcher"}
    a = to_change(Record(HISTORY.dlq(P), 0, 3, None, b"v", headers), P)
    b = to_change(Record(HISTORY.dlq(P), 0, 9, None, b"v", headers), P)
    assert a.dedup_key == b.dedup_key == "t.x[1]@5/matcher"
    bare = to_change(Record(HISTORY.dlq(P), 0, 9, None, b"v", {}), P)
    assert bare.dedup_key == f"dlq:{HISTORY.dlq(P)}[0]@9"


# ------------------------------------------------------------------------------------------- money gates
def test_a_completion_is_held_exactly_when_the_pusher_would_refuse_it() -> None:
    ok = to_change(
        event_record(
            invoice_completed(invoice_id=None, reconciliation=proven(8692, 790)),
            topic=INVOICE_COMPLETED.name(P),
            offset=7,
        ),
        P,
    )
    assert isinstance(ok, Completed) and ok.hold_reason is None
    short = invoice_completed(
        invoice_id=None, reconciliation=proven(8692, 790), amount_gross_minor=2733, amount_net_minor=2733 - 790
    )  # the evidence does not cover these totals
    held = to_change(event_record(short, topic=INVOICE_COMPLETED.name(P), offset=7), P)
    assert isinstance(held, Completed) and "the revision now totals 2733" in (held.hold_reason or "")
    assert domain.status_name(3, held=True) == "held" and domain.status_name(4, held=True) == "pushed"
    assert domain.status_name(3) == "completed"


def test_release_and_refetch_are_recorded_with_who_and_why() -> None:
    released = InvoiceReleased(invoice_uuid="u1", revision=2, released_by="ops", reason="credit note", released_at=T0)
    ch = to_change(event_record(released, topic=INVOICE_COMPLETED.name(P), offset=7), P)
    assert isinstance(ch, domain.AdminAction)
    assert (ch.invoice_uuid, ch.action, ch.revision, ch.actor, ch.reason, ch.at) == (
        "u1",
        "release",
        2,
        "ops",
        "credit note",
        T0,
    )
    req = InvoiceRefetchRequested(invoice_uuid="u1", requested_by="ingester", reason="held", requested_at=T0, attempt=3)
    ch = to_change(event_record(req, topic=INVOICE_DISCOVERED.name(P), offset=7), P)
    assert isinstance(ch, domain.AdminAction) and (ch.action, ch.actor, ch.revision) == ("refetch", "ingester", None)
