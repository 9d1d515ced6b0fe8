"""The finance import body validator (pure): every field error reported at once."""

from __future__ import annotations

from datetime import date
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from sims.finance.validation import validate_import

GOOD: dict[str, Any] = {
    "tenant_id": "platform-admin",
    "source": "digitalocean",
    "external_id": "u1",
    "invoice_number": None,
    "invoice_date": "2026-05-01",
    "billing_period": {"start": "2026-04-01", "end": "2026-04-30"},
    "currency": "USD",
    "vendor": {"name": "DigitalOcean", "category": "cloud"},
    "amount_net_minor": 7902,
    "amount_tax_minor": 790,
    "amount_gross_minor": 8692,
    "lines_count": 33,
}


def test_good_body() -> None:
    inv, errors = validate_import(GOOD, "platform-admin")
    assert errors == [] and inv is not None
    assert inv.period_end == date(2026, 4, 30) and inv.amount_gross_minor == 8692 and inv.invoice_number is None


def test_every_error_at_once() -> None:
    inv, errors = validate_import({"amount_net_minor": 1}, "platform-admin")
    assert inv is None
    fields = {e["field"] for e in errors}
    assert fields >= {
        "tenant_id",
        "source",
        "external_id",
        "invoice_date",
        "billing_period",
        "currency",
        "vendor",
        "amount_tax_minor",
        "amount_gross_minor",
        "lines_count",
    }
    assert "invoice_number" not in fields  # optional


def test_extra_fields_ignored() -> None:
    assert validate_import(GOOD | {"extra": 1}, "platform-admin")[1] == []


@given(net=st.integers(-(10**12), 10**12), tax=st.integers(-(10**9), 10**9), delta=st.integers(-5, 5))
def test_net_plus_tax_must_equal_gross(net: int, tax: int, delta: int) -> None:
    body = GOOD | {"amount_net_minor": net, "amount_tax_minor": tax, "amount_gross_minor": net + tax + delta}
    _, errors = validate_import(body, "platform-admin")
    assert (errors == []) == (delta == 0)


@given(st.one_of(st.none(), st.integers(), st.floats(allow_nan=False), st.text(), st.lists(st.integers())))
def test_non_object_bodies(value: Any) -> None:
    inv, errors = validate_import(value, "t")
    assert inv is None and errors == [{"field": "body", "message": "a JSON object is required"}]


@given(st.text(max_size=12))
def test_dates_are_strict(text: str) -> None:
    _, errors = validate_import(GOOD | {"invoice_date": text}, "platform-admin")
    try:
        ok = len(text) == 10 and text[4] == "-" and text[7] == "-" and bool(date.fromisoformat(text)) and text.isascii()
    except ValueError:
        ok = False
    assert (errors == []) == ok
