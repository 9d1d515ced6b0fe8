"""The import payload, billing periods, hashes and the push/skip decision (pure)."""

from __future__ import annotations

from datetime import date

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.finance_pusher.domain import (
    InvalidInvoice,
    PushedState,
    billing_period,
    build_payload,
    decide,
    idempotency_key,
    payload_sha256,
)
from tests.factories import bare_match, invoice_completed

APRIL_UUID = "4a1c5f7e-0000-4000-8000-000000000426"
APRIL = {"invoice_uuid": APRIL_UUID, "invoice_id": "123456789", "reconciliation": bare_match(8692)}


def test_april_2026_payload_is_exactly_the_contract() -> None:
    assert build_payload(invoice_completed(**APRIL), tenant_id="platform-admin") == {
        "tenant_id": "platform-admin",
        "source": "digitalocean",
        "external_id": APRIL_UUID,
        "invoice_number": "123456789",
        "invoice_date": "2026-05-01",
        "billing_period": {"start": "2026-04-01", "end": "2026-04-30"},
        "currency": "USD",
        "vendor": {"name": "DigitalOcean", "category": "cloud"},
        "amount_net_minor": 7902,
        "amount_tax_minor": 790,
        "amount_gross_minor": 8692,
        "lines_count": 33,
    }


def test_missing_invoice_number_is_null() -> None:
    assert build_payload(invoice_completed(**(APRIL | {"invoice_id": None})), tenant_id="t")["invoice_number"] is None


@pytest.mark.parametrize(
    ("period", "end"),
    [
        ("2026-02-01", "2026-02-28"),
        ("2024-02-01", "2024-02-29"),  # leap year
        ("2000-02-01", "2000-02-29"),  # divisible by 400: leap
        ("1900-02-01", "1900-02-28"),  # divisible by 100: not leap
        ("2025-12-01", "2025-12-31"),  # December does not roll into next year
        ("2026-01-01", "2026-01-31"),
        ("2026-06-01", "2026-06-30"),
    ],
)
def test_billing_period_end_is_the_last_day_of_the_month(period: str, end: str) -> None:
    start, last = billing_period(period)
    assert start.isoformat() == period
    assert last.isoformat() == end


@pytest.mark.parametrize("period", ["2026-04-15", "2026-13-01", "April 2026", "", "2026-02-30"])
def test_bad_periods_are_invalid_invoices(period: str) -> None:
    with pytest.raises(InvalidInvoice):
        billing_period(period)


@given(st.dates(min_value=date(1970, 1, 1), max_value=date(2200, 12, 1)))
def test_billing_period_covers_the_whole_month(d: date) -> None:
    start, end = billing_period(d.replace(day=1).isoformat())
    assert start.month == end.month and start.year == end.year
    assert date.fromordinal(end.toordinal() + 1).day == 1


def test_net_plus_tax_must_equal_gross() -> None:
    with pytest.raises(InvalidInvoice, match=r"net 7902 \+ tax 790 != gross 8693"):
        build_payload(invoice_completed(**APRIL, amount_gross_minor=8693), tenant_id="t")


def test_negative_line_count_is_invalid() -> None:
    with pytest.raises(InvalidInvoice, match="negative line count"):
        build_payload(invoice_completed(**APRIL, line_count=-1), tenant_id="t")


def test_payload_hash_ignores_key_order_but_not_content() -> None:
    p = build_payload(invoice_completed(**APRIL), tenant_id="platform-admin")
    reordered = dict(reversed(list(p.items())))
    assert payload_sha256(p) == payload_sha256(reordered)
    assert payload_sha256(p) != payload_sha256(p | {"amount_tax_minor": 791})
    # revision and matched_count are not finance's business: the same content hashes the same
    same = build_payload(invoice_completed(**APRIL, revision=2, matched_count=7), tenant_id="platform-admin")
    assert payload_sha256(same) == payload_sha256(p)


def test_idempotency_key_is_deterministic_and_distinct_per_part() -> None:
    k = idempotency_key("platform-admin", "digitalocean", APRIL_UUID, 1, "ab" * 32)
    assert k == idempotency_key("platform-admin", "digitalocean", APRIL_UUID, 1, "ab" * 32)
    assert len(k) == 64 and int(k, 16) >= 0
    assert k != idempotency_key("other", "digitalocean", APRIL_UUID, 1, "ab" * 32)
    assert k != idempotency_key("platform-admin", "digitalocean", APRIL_UUID, 1, "cd" * 32)
    # no ambiguity from separators inside the parts
    assert idempotency_key("a/b", "c", "d", 1, "e") != idempotency_key("a", "b/c", "d", 1, "e")


def test_a_content_revert_gets_a_new_key() -> None:
    """A → B → A: revision 3 has A's body but must not reuse revision 1's key (finance would replay B's
    predecessor's answer and keep B)."""
    a, b = "aa" * 32, "bb" * 32
    keys = [idempotency_key("t", "digitalocean", APRIL_UUID, rev, h) for rev, h in ((1, a), (2, b), (3, a))]
    assert len(set(keys)) == 3
    # Another deployment (another ledger) re-pushing revision 1 is a new request, not a replay.
    assert idempotency_key("t", "digitalocean", APRIL_UUID, 1, a, "ledger-2") != keys[0]


# ------------------------------------------------------------------------------------------ decisions
def test_never_pushed_is_pushed() -> None:
    assert decide(None, 1, "h1").verdict == "push"


def test_same_payload_is_not_pushed_again_even_in_a_new_revision() -> None:
    assert decide(PushedState(1, "h1"), 1, "h1").verdict == "unchanged"
    assert decide(PushedState(1, "h1"), 2, "h1").verdict == "unchanged"


def test_changed_payload_in_a_newer_or_same_revision_is_pushed() -> None:
    assert decide(PushedState(1, "h1"), 2, "h2").verdict == "push"
    assert decide(PushedState(2, "h1"), 2, "h2").verdict == "push"  # e.g. identity reconfigured


def test_older_revision_never_overwrites_a_newer_one() -> None:
    d = decide(PushedState(3, "h3"), 2, "h2")
    assert d.verdict == "stale"
    assert "older" in d.reason
    assert decide(PushedState(3, "h3"), 1, "h3").verdict == "stale"


def test_reverting_to_earlier_content_in_a_newer_revision_is_pushed() -> None:
    assert decide(PushedState(2, "h2"), 3, "h1").verdict == "push"
