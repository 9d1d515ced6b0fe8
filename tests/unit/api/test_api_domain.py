"""The projector's pure mapping (record → change), cursors, statuses and reconciliation."""

from __future__ import annotations

import contextlib
from datetime import UTC, date, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.api import domain
from services.api.domain import (
    Completed,
    CursorError,
    DeadLettered,
    Discovered,
    Ingested,
    LineMatched,
    Pushed,
    ResourceGone,
    ResourceSeen,
    UnexpectedEvent,
    decode_cursor,
    encode_cursor,
    reconciled,
    to_change,
)
from shared.events import (
    Balance,
    BillingHistoryEntry,
    CostLine,
    CostLineMatched,
    EventDecodeError,
    InvoiceCompleted,
    InvoiceDiscovered,
    InvoiceEnd,
    InvoicePushed,
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

P = "t."
T0 = datetime(2026, 5, 1, tzinfo=UTC)
REC = Reconciliation(status="matched", expected_minor=100, difference_minor=0)


def rec(topic: str, value: bytes | None, key: str | None = "k", headers: dict[str, bytes] | None = None) -> Record:
    return Record(topic=topic, partition=0, offset=7, key=key, value=value, headers=headers or {})


def line(idx: int = 0) -> CostLine:
    return CostLine(
        invoice_uuid="u1",
        revision=1,
        line_index=idx,
        product="Droplets",
        description="web-01 (s-1)",
        amount_minor=100,
        is_tax=False,
    )


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
        (COST_LINES_MATCHED, CostLineMatched(line=line(), kind="droplet", name="web-01", resource_id="1"), LineMatched),
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
        ch = to_change(rec(topic.name(P), encode(data, "acct")), P)
        assert isinstance(ch, kind), topic
        assert ch.account == "acct" and ch.event_id


def test_raw_cost_lines_are_ignored_only_the_end_marker_counts() -> None:
    assert to_change(rec(COST_LINES.name(P), encode(line(), "acct")), P) is None


def test_event_on_the_wrong_topic_is_poison() -> None:
    with pytest.raises(UnexpectedEvent):
        to_change(rec(BALANCE.name(P), encode(line(), "acct")), P)


def test_garbage_and_tombstones_outside_resources_are_poison() -> None:
    with pytest.raises(EventDecodeError):
        to_change(rec(HISTORY.name(P), b"{not json"), P)
    with pytest.raises(EventDecodeError):
        to_change(rec(HISTORY.name(P), None), P)


def test_bad_period_is_poison() -> None:
    bad = InvoiceDiscovered(invoice_uuid="u1", period="April", amount_minor=9, date=T0)
    with pytest.raises(ValueError, match="YYYY-MM-DD"):
        to_change(rec(INVOICE_DISCOVERED.name(P), encode(bad, "acct")), P)


def test_unknown_topic_is_refused() -> None:
    with pytest.raises(UnexpectedEvent):
        to_change(rec("other.topic", b"{}"), P)


def test_resource_tombstone_deletes_by_key() -> None:
    ch = to_change(rec(RESOURCES.name(P), None, key="acct:droplet:123"), P)
    assert ch == ResourceGone("acct", "", "droplet", "123")
    with pytest.raises(ValueError):
        to_change(rec(RESOURCES.name(P), None, key="acct:droplet"), P)


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
    ch = to_change(rec(HISTORY.dlq(P), b"\x00raw", key="acct", headers=headers), P)
    assert isinstance(ch, DeadLettered)
    assert (ch.source_topic, ch.source_partition, ch.source_offset) == (HISTORY.name(P), 2, 41)
    assert ch.error_message == "bad thing" and ch.service == "matcher" and ch.failed_at == T0
    assert ch.record_value == b"\x00raw"
    # No headers at all, or nonsense in them: still a row, never an exception.
    odd = to_change(rec(HISTORY.dlq(P), None, key=None, headers={dl.H_OFFSET: b"x", dl.H_FAILED_AT: b"y"}), P)
    assert isinstance(odd, DeadLettered) and odd.source_offset is None and odd.failed_at is None


def test_status_order_never_goes_backwards() -> None:
    assert domain.later_status((1, domain.RANK["pushed"]), (1, domain.RANK["completed"])) == (1, 4)
    assert domain.later_status((1, domain.RANK["pushed"]), (2, domain.RANK["ingested"])) == (2, 1)
    assert [domain.status_name(i) for i in range(5)] == ["discovered", "ingested", "matched", "completed", "pushed"]


@pytest.mark.parametrize(
    ("status", "amount", "gross", "expected"),
    [
        ("matched", None, None, True),
        ("mismatch", 1, 1, False),
        ("unknown", 5, 5, True),
        ("unknown", 5, 6, False),
        (None, None, 5, None),
        ("unknown", 5, None, None),
    ],
)
def test_reconciled(status: str | None, amount: int | None, gross: int | None, expected: bool | None) -> None:
    assert reconciled(status, amount, gross) is expected


@given(st.text(max_size=60), st.integers(min_value=-(2**40), max_value=2**40))
def test_cursor_round_trip(uuid: str, index: int) -> None:
    assert decode_cursor(encode_cursor([uuid, index]), (str, int)) == [uuid, index]


@given(st.dates(), st.text(max_size=40))
def test_date_cursor_round_trip(d: date, uuid: str) -> None:
    assert decode_cursor(encode_cursor([d.isoformat(), uuid]), (date, str)) == [d, uuid]


@given(st.text(max_size=80))
def test_any_text_is_a_valid_cursor_or_a_cursor_error(text: str) -> None:
    with contextlib.suppress(CursorError):
        decode_cursor(text, (str, int))


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "!!!",
        encode_cursor(["a"]),
        encode_cursor([1, 2]),
        encode_cursor(["a", True]),
        encode_cursor({"a": 1}),
        encode_cursor(["a", 1.5]),
    ],
)
def test_malformed_cursors(bad: str) -> None:
    with pytest.raises(CursorError):
        decode_cursor(bad, (str, int))
    with pytest.raises(CursorError):
        decode_cursor(encode_cursor(["2026-13-01", "u"]), (date, str))


def test_dead_letter_dedup_key_is_the_source_record_and_service() -> None:
    headers = {dl.H_TOPIC: b"t.x", dl.H_PARTITION: b"1", dl.H_OFFSET: b"5", dl.H_SERVICE: b"matcher"}
    a = to_change(Record(HISTORY.dlq(P), 0, 3, None, b"v", headers), P)
    b = to_change(Record(HISTORY.dlq(P), 0, 9, None, b"v", headers), P)
    assert a.dedup_key == b.dedup_key == "t.x[1]@5/matcher"
    bare = to_change(Record(HISTORY.dlq(P), 0, 9, None, b"v", {}), P)
    assert bare.dedup_key == f"dlq:{HISTORY.dlq(P)}[0]@9"
