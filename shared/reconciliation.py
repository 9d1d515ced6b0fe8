"""Complete or held: is an invoice revision proven to be the whole invoice, to the cent? Pure, no I/O.

The ingester gathers the evidence when it reads a CSV (`reconcile`): the lines' gross against the
billing-history amount and the amount in DigitalOcean's invoice list (both required), and, when the
summary was fetched, its amount and its taxes (the tax split's cross-check); plus whether the body ends
with a line break (a body cut at a byte mostly does not). The evidence travels in the end marker and the
completion event. The finance pusher and the read models then ask the same question of the same event
(`unproven_reason`), re-doing the arithmetic rather than trusting a status, so a revision is pushed only
when every required source agrees within the recorded tolerance, and is *held* otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from shared.events import Reconciliation, ReconciliationCheck

HISTORY = "billing_history"
INVOICE_LIST = "invoice_list"
SUMMARY_AMOUNT = "summary_amount"
SUMMARY_TAXES = "summary_taxes"
CSV_BODY = "csv_body"
REQUIRED_SOURCES: tuple[str, ...] = (HISTORY, INVOICE_LIST)


@dataclass(frozen=True)
class Expected:
    """What DigitalOcean says about one invoice, in minor units (None: that source said nothing)."""

    currency: str
    history_minor: int | None
    listed_minor: int | None = None
    summary_amount_minor: int | None = None
    summary_taxes_minor: int | None = None
    summary_fetched: bool = False
    summary_error: str = ""


def _check(source: str, expected: int | None, actual: int, tolerance: int, missing: str) -> ReconciliationCheck:
    if expected is None:
        return ReconciliationCheck(source=source, actual_minor=actual, ok=False, note=missing)
    diff = actual - expected
    ok = abs(diff) <= tolerance
    note = "" if ok else f"{source.replace('_', ' ')} says {expected}, the lines give {actual} (variance {diff:+d})"
    return ReconciliationCheck(
        source=source, expected_minor=expected, actual_minor=actual, difference_minor=diff, ok=ok, note=note
    )


def _history_check(
    gross_minor: int, csv_currency: str, expected: Expected, tolerance_minor: int
) -> ReconciliationCheck:
    """The billing history's amount against the lines' gross (a CSV in another currency never matches)."""
    if csv_currency.upper() != expected.currency.upper():
        return ReconciliationCheck(
            source=HISTORY,
            expected_minor=expected.history_minor,
            actual_minor=gross_minor,
            ok=False,
            note=f"the CSV is in {csv_currency.upper()}, the billing history in {expected.currency.upper()}",
        )
    return _check(HISTORY, expected.history_minor, gross_minor, tolerance_minor, "no billing-history amount")


def _summary_checks(
    gross_minor: int, tax_minor: int, expected: Expected, tolerance_minor: int
) -> list[ReconciliationCheck]:
    """The summary's amount and taxes, when it was fetched (an error fetching it is a failed check)."""
    if not expected.summary_fetched:
        return []
    if expected.summary_error:
        return [ReconciliationCheck(source=SUMMARY_AMOUNT, ok=False, note=expected.summary_error)]
    checks = [_check(SUMMARY_AMOUNT, expected.summary_amount_minor, gross_minor, tolerance_minor, "no summary amount")]
    if expected.summary_taxes_minor is not None:
        checks.append(
            _check(SUMMARY_TAXES, expected.summary_taxes_minor, tax_minor, tolerance_minor, "no summary taxes")
        )
    return checks


def reconcile(
    *,
    gross_minor: int,
    tax_minor: int,
    csv_currency: str,
    expected: Expected,
    tolerance_minor: int = 0,
    ends_with_line_break: bool = True,
) -> Reconciliation:
    """The evidence for one parsed CSV. `matched` only when every required source agrees within tolerance."""
    if tolerance_minor < 0:
        raise ValueError("the reconciliation tolerance cannot be negative")
    checks = [_history_check(gross_minor, csv_currency, expected, tolerance_minor)]
    checks.append(
        _check(
            INVOICE_LIST,
            expected.listed_minor,
            gross_minor,
            tolerance_minor,
            "the invoice is not in DigitalOcean's invoice list",
        )
    )
    checks += _summary_checks(gross_minor, tax_minor, expected, tolerance_minor)
    if not ends_with_line_break:
        checks.append(
            ReconciliationCheck(
                source=CSV_BODY, ok=False, note="the CSV does not end with a line break: its last row may be cut"
            )
        )
    failed = [c for c in checks if not c.ok]
    status: Literal["matched", "mismatch", "unknown"]
    first_amount = next((c for c in failed if c.difference_minor is not None), None)
    if not failed:
        status = "matched"
    elif any(c.expected_minor is not None or c.source in (CSV_BODY, SUMMARY_AMOUNT) for c in failed):
        status = "mismatch"
    else:
        status = "unknown"  # nothing disagrees, but a required source said nothing
    history = checks[0]
    return Reconciliation(
        status=status,
        expected_minor=(first_amount or history).expected_minor,
        actual_minor=gross_minor,
        difference_minor=(first_amount or history).difference_minor,
        tolerance_minor=tolerance_minor,
        checks=tuple(checks),
        reason="; ".join(c.note for c in failed),
    )


def unproven_reason(rec: Reconciliation, gross_minor: int, tax_minor: int) -> str | None:
    """None when the evidence proves this revision complete and right; else why it must be held.

    The arithmetic is done again from the checks (never the status alone), against the totals actually
    being pushed: a completion whose totals moved since the ingester's check is not proven either.
    """
    if rec.status != "matched":
        return rec.reason or f"reconciliation {rec.status}"
    by_source = {c.source: c for c in rec.checks}
    for source in REQUIRED_SOURCES:
        if source not in by_source:
            return f"no {source.replace('_', ' ')} check"
    for c in rec.checks:
        if not c.ok:
            return c.note or f"{c.source} check failed"
        if c.expected_minor is None or c.actual_minor is None:
            continue
        actual = tax_minor if c.source == SUMMARY_TAXES else gross_minor
        if c.actual_minor != actual:
            return f"{c.source} was checked against {c.actual_minor}, the revision now totals {actual}"
        if abs(actual - c.expected_minor) > rec.tolerance_minor:
            return f"{c.source} says {c.expected_minor}, the revision totals {actual}"
    return None
