import json
from datetime import UTC, date, datetime
from typing import get_args

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.events import (
    EVENT_TYPES,
    AlertKind,
    BillingAlert,
    CostLine,
    EventData,
    EventDecodeError,
    InvoiceEnd,
    Reconciliation,
    decode,
    encode,
    make_envelope,
)
from tests.factories import (
    balance,
    billing_history_entry,
    cost_line,
    cost_line_matched,
    invoice_completed,
    invoice_discovered,
    invoice_end,
    invoice_pushed,
    invoice_refetch_requested,
    invoice_released,
    resource,
)

WEB01 = {"invoice_uuid": "u-1", "description": "web-01 (s-1vcpu-1gb)"}


def test_event_id_is_deterministic_and_ignores_occurred_at() -> None:
    a = make_envelope(invoice_discovered(invoice_uuid="u-1"), "main", datetime(2026, 1, 1, tzinfo=UTC))
    b = make_envelope(invoice_discovered(invoice_uuid="u-1"), "main", datetime(2026, 6, 1, tzinfo=UTC))
    assert a.event_id == b.event_id
    assert a.occurred_at != b.occurred_at


def test_event_id_changes_with_content_account_and_type() -> None:
    base = make_envelope(invoice_discovered(invoice_uuid="u-1"), "main").event_id
    assert make_envelope(invoice_discovered(invoice_uuid="u-1", amount_minor=1), "main").event_id != base
    assert make_envelope(invoice_discovered(invoice_uuid="u-1"), "other").event_id != base


def test_identity_narrows_what_makes_an_event_the_same() -> None:
    # A cost line is identified by (invoice, revision, line index): a re-sent line has the same id.
    assert (
        make_envelope(cost_line(0, 600, **WEB01), "a").event_id == make_envelope(cost_line(0, 1, **WEB01), "a").event_id
    )
    assert (
        make_envelope(cost_line(0, 600, **WEB01), "a").event_id
        != make_envelope(cost_line(1, 600, **WEB01), "a").event_id
    )
    assert (
        make_envelope(cost_line(0, 600, **WEB01, revision=2), "a").event_id
        != make_envelope(cost_line(0, 600, **WEB01), "a").event_id
    )


def test_round_trip_through_bytes() -> None:
    end = InvoiceEnd(
        invoice_uuid="u-1",
        revision=1,
        period="2026-04-01",
        invoice_date=date(2026, 5, 1),
        line_count=33,
        amount_net_minor=7902,
        amount_tax_minor=790,
        amount_gross_minor=8692,
        csv_sha256="ab",
        parser_version="1",
        reconciliation=Reconciliation(status="matched"),
    )
    env, data = decode(encode(end, "main"))
    assert data == end
    assert env.type == "billing.invoice-end" and env.schema_version == 1 and env.account == "main"
    wire = json.loads(encode(end, "main"))
    assert set(wire) == {"event_id", "type", "schema_version", "occurred_at", "account", "data"}


def test_every_type_is_registered_once() -> None:
    assert len({m.TYPE for m in EVENT_TYPES.values()}) == len(EVENT_TYPES)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"not json", "not an event envelope"),
        (b"{}", "not an event envelope"),
        (None, "tombstone"),
        (
            b'{"event_id":"x","type":"nope","schema_version":1,"occurred_at":"2024-01-01T00:00:00Z","account":"a",'
            b'"data":{}}',
            "unknown event type 'nope'",
        ),
        (
            b'{"event_id":"x","type":"billing.balance","schema_version":9,"occurred_at":"2024-01-01T00:00:00Z",'
            b'"account":"a","data":{}}',
            "unsupported schema_version 9",
        ),
        (
            b'{"event_id":"x","type":"billing.balance","schema_version":1,"occurred_at":"2024-01-01T00:00:00Z",'
            b'"account":"a","data":{"foo":1}}',
            "invalid billing.balance v1 data",
        ),
    ],
)
def test_unknown_or_invalid_events_are_decode_errors(raw: bytes | None, message: str) -> None:
    with pytest.raises(EventDecodeError, match=message):
        decode(raw)


def test_extra_fields_are_refused_rather_than_silently_dropped() -> None:
    with pytest.raises(ValueError):
        CostLine(**(cost_line(0, 600, **WEB01).model_dump() | {"surprise": 1}))


def _one_of_each_type() -> list[EventData]:
    """A realistic event of every registered type (non-ASCII, escapes, optional fields, nested models)."""
    line = cost_line(7, -1250, billed=True, description='db-01 "primary" (Zürich ✓)\tline', extra={"note": "x\ny"})
    tax = cost_line(8, 125, is_tax=True)
    return [
        balance(3, 123456),
        billing_history_entry(2, "u-1", 8692),
        invoice_discovered(invoice_uuid="u-1"),
        invoice_refetch_requested(invoice_uuid="u-1"),
        line,
        invoice_end([line, tax]),
        resource(),
        cost_line_matched(line, "123456"),
        cost_line_matched(tax, None),
        invoice_completed([line, tax]),
        invoice_released(),
        invoice_pushed(),
        BillingAlert(
            alert_id="a-1",
            kind=get_args(AlertKind)[0],
            period="2026-04-01",
            subject="Droplets",
            threshold_pct=80,
            budget_minor=10_000,
            observed_minor=8_001,
            detected_at=datetime(2026, 4, 20, 12, 30, 15, 123456, tzinfo=UTC),
            message="80% of the April budget — €80.01",
        ),
    ]


def test_encode_writes_exactly_the_envelope_model_s_bytes_for_every_type() -> None:
    """`encode` skips the envelope model for speed; its bytes must stay the model's (event ids and the
    byte-identical re-sends downstream rely on them)."""
    events = _one_of_each_type()
    assert {type(e) for e in events} == set(EVENT_TYPES.values())
    for when in (datetime(2026, 5, 1, tzinfo=UTC), datetime(2026, 5, 1, 9, 30, 1, 5, tzinfo=UTC)):
        for e in events:
            assert encode(e, "main", when) == make_envelope(e, "main", when).to_bytes(), type(e).__name__
            assert decode(encode(e, "main", when))[1] == e


@settings(max_examples=300, deadline=None)
@given(
    description=st.text(max_size=60),
    extra=st.dictionaries(st.text(max_size=8), st.text(max_size=12), max_size=3),
    amount=st.integers(-(10**12), 10**12),
    account=st.text(min_size=1, max_size=12),
    when=st.datetimes(timezones=st.just(UTC)),
)
def test_encode_equals_the_envelope_model_on_any_text(
    description: str, extra: dict[str, str], amount: int, account: str, when: datetime
) -> None:
    line = cost_line(3, amount, description=description, extra=extra, resource_id=description[:5] or None)
    for e in (line, cost_line_matched(line, "1")):
        assert encode(e, account, when) == make_envelope(e, account, when).to_bytes()
