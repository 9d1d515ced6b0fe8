import json
from datetime import UTC, date, datetime

import pytest

from shared.events import (
    EVENT_TYPES,
    CostLine,
    EventDecodeError,
    InvoiceEnd,
    Reconciliation,
    decode,
    encode,
    make_envelope,
)
from tests.factories import cost_line, invoice_discovered

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
