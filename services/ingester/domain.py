"""Ingester decisions as pure functions: which revision to emit (or skip), reconciliation, the events.

The crash-safety argument lives in `services/ingester/ledger.py`'s docstring; this module holds the rules
it relies on so they can be tested without a database or a broker.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from services.ingester.csv_parser import ParsedInvoice
from shared.events import CostLine, InvoiceDiscovered, InvoiceEnd, Reconciliation

State = Literal["pending", "committed", "superseded"]


@dataclass(frozen=True)
class LedgerEntry:
    """One revision of one invoice as the ledger knows it."""

    invoice_uuid: str
    revision: int
    csv_sha256: str
    parser_version: str
    state: State
    reserved_at: datetime


@dataclass(frozen=True)
class Decision:
    """What to do with a fetched CSV.

    - `skip`: this content was ingested and committed as the latest revision: emit nothing.
    - `reemit`: this content is the latest revision but its commit was never confirmed: emit that
      same revision again (same event ids, same `occurred_at`), downstream dedupes.
    - `new`: a new revision (`revision`); `supersede` names a pending revision that had other content
      and is abandoned (never reused: it may have reached the topic).
    """

    action: Literal["skip", "reemit", "new"]
    revision: int
    supersede: int | None = None


def decide(latest: LedgerEntry | None, csv_sha256: str, parser_version: str) -> Decision:
    """Compare a fetched CSV with the invoice's latest revision.

    Only the *latest* revision counts: if the content went A → B → A, the third A is a new revision,
    because downstream currently holds B's line set and must be told to replace it.
    A revision number is bound to one content forever: a pending revision is reused only for exactly
    its content, otherwise the next number is taken (revisions may therefore have gaps).
    """
    if latest is None:
        return Decision("new", 1)
    same = latest.csv_sha256 == csv_sha256 and latest.parser_version == parser_version
    if same and latest.state == "committed":
        return Decision("skip", latest.revision)
    if same and latest.state == "pending":
        return Decision("reemit", latest.revision)
    supersede = latest.revision if latest.state == "pending" else None
    return Decision("new", latest.revision + 1, supersede)


def reconcile(
    gross_minor: int, csv_currency: str, expected_minor: int | None, expected_currency: str
) -> Reconciliation:
    """CSV gross vs the billing-history amount. A mismatch is recorded, never blocking."""
    if expected_minor is None or csv_currency.upper() != expected_currency.upper():
        return Reconciliation(status="unknown", expected_minor=expected_minor)
    diff = gross_minor - expected_minor
    return Reconciliation(
        status="matched" if diff == 0 else "mismatch", expected_minor=expected_minor, difference_minor=diff
    )


def build_events(
    discovered: InvoiceDiscovered, parsed: ParsedInvoice, revision: int
) -> tuple[list[CostLine], InvoiceEnd]:
    """One CostLine per CSV row (in CSV order), then the end marker that makes the revision actionable."""
    lines = [
        CostLine(
            invoice_uuid=discovered.invoice_uuid,
            revision=revision,
            line_index=ln.line_index,
            product=ln.product,
            group_description=ln.group_description,
            description=ln.description,
            hours=ln.hours,
            start=ln.start,
            end=ln.end,
            amount_minor=ln.amount_minor,
            currency=ln.currency,
            project_name=ln.project_name,
            category=ln.category,
            is_tax=ln.is_tax,
            extra=dict(ln.extra),
        )
        for ln in parsed.lines
    ]
    t = parsed.totals
    end = InvoiceEnd(
        invoice_uuid=discovered.invoice_uuid,
        invoice_id=discovered.invoice_id,
        revision=revision,
        period=discovered.period,
        invoice_date=discovered.date.date(),
        currency=parsed.currency,
        line_count=parsed.line_count,
        amount_net_minor=t.net_minor,
        amount_tax_minor=t.tax_minor,
        amount_gross_minor=t.gross_minor,
        csv_sha256=parsed.csv_sha256,
        parser_version=parsed.parser_version,
        reconciliation=reconcile(t.gross_minor, parsed.currency, discovered.amount_minor, discovered.currency),
    )
    return lines, end
