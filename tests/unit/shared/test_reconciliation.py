"""Complete or held: the evidence (reconcile) and the gate every pusher and read model applies (unproven_reason)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.events import Reconciliation, ReconciliationCheck
from shared.reconciliation import Expected, reconcile, unproven_reason


def rec(gross: int = 8692, tax: int = 790, **expected) -> Reconciliation:
    e = {"currency": "USD", "history_minor": 8692, "listed_minor": 8692} | expected
    return reconcile(gross_minor=gross, tax_minor=tax, csv_currency="USD", expected=Expected(**e))


def test_history_and_list_agreeing_prove_the_invoice() -> None:
    r = rec()
    assert (r.status, r.expected_minor, r.actual_minor, r.difference_minor, r.reason) == ("matched", 8692, 8692, 0, "")
    assert unproven_reason(r, 8692, 790) is None


def test_a_short_invoice_is_a_mismatch_with_its_variance() -> None:
    r = rec(gross=2733, tax=0)
    assert (r.status, r.expected_minor, r.actual_minor, r.difference_minor) == ("mismatch", 8692, 2733, -5959)
    assert "billing history says 8692, the lines give 2733 (variance -5959)" in r.reason
    assert unproven_reason(r, 2733, 0) == r.reason


def test_sources_disagreeing_with_each_other_hold_the_invoice() -> None:
    r = rec(listed_minor=8600)
    assert r.status == "mismatch" and r.difference_minor == 92 and r.expected_minor == 8600
    assert [c.ok for c in r.checks] == [True, False]


def test_a_missing_invoice_list_amount_is_unknown_and_held() -> None:
    r = rec(listed_minor=None)
    assert r.status == "unknown" and "not in DigitalOcean's invoice list" in r.reason
    assert unproven_reason(r, 8692, 790) is not None


def test_other_currency_is_a_mismatch() -> None:
    r = reconcile(gross_minor=8692, tax_minor=0, csv_currency="EUR", expected=Expected("USD", 8692, 8692))
    assert r.status == "mismatch" and "EUR" in r.reason


def test_summary_amount_and_taxes_cross_check() -> None:
    ok = rec(summary_amount_minor=8692, summary_taxes_minor=790, summary_fetched=True)
    assert ok.status == "matched" and len(ok.checks) == 4
    bad_tax = rec(summary_amount_minor=8692, summary_taxes_minor=0, summary_fetched=True)
    assert bad_tax.status == "mismatch" and "summary taxes says 0, the lines give 790" in bad_tax.reason
    unreadable = rec(summary_fetched=True, summary_error="the summary is unreadable: x")
    assert unreadable.status == "mismatch" and unreadable.reason == "the summary is unreadable: x"
    no_taxes = rec(summary_amount_minor=8692, summary_fetched=True)
    assert no_taxes.status == "matched" and [c.source for c in no_taxes.checks][-1] == "summary_amount"


def test_a_body_without_a_final_line_break_is_held() -> None:
    r = reconcile(
        gross_minor=8692,
        tax_minor=790,
        csv_currency="USD",
        expected=Expected("USD", 8692, 8692),
        ends_with_line_break=False,
    )
    assert r.status == "mismatch" and "last row may be cut" in r.reason


def test_tolerance_is_recorded_and_applied() -> None:
    r = reconcile(
        gross_minor=8690, tax_minor=0, csv_currency="USD", expected=Expected("USD", 8692, 8692), tolerance_minor=2
    )
    assert r.status == "matched" and r.tolerance_minor == 2 and r.difference_minor == -2
    assert unproven_reason(r, 8690, 0) is None
    assert unproven_reason(r, 8689, 0) is not None  # totals moved since the check
    with pytest.raises(ValueError):
        reconcile(gross_minor=1, tax_minor=0, csv_currency="USD", expected=Expected("USD", 1, 1), tolerance_minor=-1)


def test_the_gate_redoes_the_arithmetic_instead_of_trusting_the_status() -> None:
    assert unproven_reason(Reconciliation(status="matched"), 100, 0) == "no billing history check"
    forged = Reconciliation(
        status="matched",
        checks=(
            ReconciliationCheck(source="billing_history", expected_minor=100, actual_minor=90, ok=True),
            ReconciliationCheck(source="invoice_list", expected_minor=100, actual_minor=90, ok=True),
        ),
    )
    assert unproven_reason(forged, 90, 0) == "billing_history says 100, the revision totals 90"
    assert "checked against 90" in (unproven_reason(forged, 100, 0) or "")


@given(
    st.integers(-(10**12), 10**12),
    st.integers(-(10**12), 10**12),
    st.integers(-(10**12), 10**12),
    st.integers(0, 5),
)
def test_proven_exactly_when_both_required_amounts_agree_within_tolerance(
    gross: int, history: int, listed: int, tol: int
) -> None:
    r = reconcile(
        gross_minor=gross,
        tax_minor=0,
        csv_currency="USD",
        expected=Expected("USD", history, listed),
        tolerance_minor=tol,
    )
    agrees = abs(gross - history) <= tol and abs(gross - listed) <= tol
    assert (unproven_reason(r, gross, 0) is None) == agrees == (r.status == "matched")
