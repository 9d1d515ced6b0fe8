"""Ingester decisions as pure functions: which revision to emit (or skip), reconciliation, the events.

The crash-safety argument lives in `services/ingester/ledger.py`'s docstring; this module holds the rules
it relies on so they can be tested without a database or a broker. The money gates' side of it (what
DigitalOcean's sources say, when a held invoice is fetched again) is here too; the design is in
docs/architecture.md, "Money gates".
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from services.ingester.csv_parser import ParsedInvoice, ParsedLine
from services.ingester.items import RowItem
from shared.events import CostLine, InvoiceDiscovered, InvoiceEnd, Reconciliation, canonical_json
from shared.money import MoneyError, money_from_json
from shared.reconciliation import Expected, reconcile

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
    evidence_sha256: str | None = None
    # A read_committed reader saw the revision's end marker on the topic (services/ingester/verify.py).
    verified: bool = True


@dataclass(frozen=True)
class Decision:
    """What to do with a fetched CSV.

    - `skip`: this content was ingested and committed as the latest revision: emit nothing.
    - `reemit`: this content is the latest revision but its commit was never confirmed, or it was committed
      and the verifier proved its records never became readable: emit that same revision again (same event
      ids, same `occurred_at`), downstream dedupes.
    - `new`: a new revision (`revision`); `supersede` names a pending revision that had other content
      and is abandoned (never reused: it may have reached the topic).
    """

    action: Literal["skip", "reemit", "new"]
    revision: int
    supersede: int | None = None


def decide(
    latest: LedgerEntry | None,
    csv_sha256: str,
    parser_version: str,
    evidence_sha256: str | None = None,
    *,
    reemit_unverified: int | None = None,
) -> Decision:
    """Compare a fetched CSV (and the reconciliation evidence it gave) with the invoice's latest revision.

    Only the *latest* revision counts: if the content went A → B → A, the third A is a new revision,
    because downstream currently holds B's line set and must be told to replace it.
    The evidence is part of the content: the same CSV that now agrees with a corrected DigitalOcean amount
    is a new revision, so a held invoice is released by any change that makes it reconcile.
    A revision number is bound to one content forever: a pending revision is reused only for exactly
    its content, otherwise the next number is taken (revisions may therefore have gaps).
    `reemit_unverified` is the revision the commit verifier asks to re-emit: a committed revision is emitted
    again only when it is that revision and still unverified (a verified one reached the topic: skip it).
    """
    if latest is None:
        return Decision("new", 1)
    same = (
        latest.csv_sha256 == csv_sha256
        and latest.parser_version == parser_version
        and latest.evidence_sha256 == evidence_sha256
    )
    if same and latest.state == "committed":
        if reemit_unverified == latest.revision and not latest.verified:
            return Decision("reemit", latest.revision)
        return Decision("skip", latest.revision)
    if same and latest.state == "pending":
        return Decision("reemit", latest.revision)
    supersede = latest.revision if latest.state == "pending" else None
    return Decision("new", latest.revision + 1, supersede)


# ---------------------------------------------------------------------------------- commit verification
@dataclass(frozen=True)
class Checkpoint:
    """A point the commit verifier proves (services/ingester/verify.py).

    `at` is read first (the database's clock), then `ends`: each cost-lines partition's high watermark. A
    revision marked committed at or before `at` had its Kafka commit return before the watermarks were read, so
    every record of it sits below them. Once a read_committed reader has read each partition to its end here,
    that revision's end marker was either seen, or it is not readable as committed at all (its records were
    aborted after the commit was acknowledged) and must be emitted again.
    """

    at: datetime
    ends: Mapping[int, int]

    def reached(self, read_to: Mapping[int, int]) -> bool:
        """Whether a reader that read each partition up to `read_to` (next offset; absent: 0) got past it."""
        return all(read_to.get(p, 0) >= end for p, end in self.ends.items())


# ------------------------------------------------------------------------------------------ money gates
def summary_amounts(summary: Mapping[str, Any] | None, currency: str) -> tuple[int | None, int | None, str]:
    """`/summary` → (amount, taxes, error) in minor units; money read exactly, an unreadable value is an error."""
    if summary is None:
        return None, None, ""
    try:
        amount = money_from_json(summary.get("amount"), currency, what="summary amount")
        taxes_obj = summary.get("taxes")
        taxes = None
        if isinstance(taxes_obj, Mapping) and taxes_obj.get("amount") is not None:
            taxes = money_from_json(taxes_obj.get("amount"), currency, what="summary taxes")
    except MoneyError as e:
        return None, None, f"the summary is unreadable: {e}"
    return amount, taxes, ""


def expected_of(
    discovered: InvoiceDiscovered, listed_minor: int | None, summary: Mapping[str, Any] | None, fetched: bool
) -> Expected:
    """What DigitalOcean's sources say about this invoice (the billing history's amount comes with the event)."""
    amount, taxes, error = summary_amounts(summary, discovered.currency)
    return Expected(
        currency=discovered.currency,
        history_minor=discovered.amount_minor,
        listed_minor=discovered.listed_amount_minor if discovered.listed_amount_minor is not None else listed_minor,
        summary_amount_minor=amount,
        summary_taxes_minor=taxes,
        summary_fetched=fetched and summary is not None,
        summary_error=error,
    )


def reconciliation_of(parsed: ParsedInvoice, expected: Expected, tolerance_minor: int) -> Reconciliation:
    """The CSV's totals against DigitalOcean's amounts (shared/reconciliation.py)."""
    return reconcile(
        gross_minor=parsed.totals.gross_minor,
        tax_minor=parsed.totals.tax_minor,
        csv_currency=parsed.currency,
        expected=expected,
        tolerance_minor=tolerance_minor,
        ends_with_line_break=parsed.ends_with_line_break,
    )


def evidence_sha256(reconciliation: Reconciliation) -> str:
    """The ledger's record of the evidence a revision was emitted with (see `decide`)."""
    return hashlib.sha256(canonical_json(reconciliation.model_dump(mode="json")).encode()).hexdigest()


def refetch_delay(attempt: int, initial_s: float, max_s: float) -> float:
    """Wait before the `attempt`-th (1-based) re-fetch of a held invoice: doubling from `initial_s`, capped."""
    factor: int = 2 ** max(0, attempt - 1)  # typeshed types int ** int as Any (a negative power is a float)
    return min(max_s, initial_s * factor)


@dataclass(frozen=True)
class RefetchPolicy:
    initial_s: float = 60.0
    max_s: float = 21600.0
    max_attempts: int = 20

    def delay(self, attempt: int) -> float:
        return refetch_delay(attempt, self.initial_s, self.max_s)


@dataclass(frozen=True)
class Hold:
    """A held invoice as the ingester schedules it: which revision, why, and when its CSV is fetched again."""

    revision: int
    since: datetime
    reason: str
    attempts: int
    next_at: datetime | None  # None: no more automatic re-fetches (an admin refetches or releases)


Outcome = Literal["reconciled", "held", "unchanged", "rejected"]


def next_hold(
    current: Hold | None, outcome: Outcome, *, revision: int | None, reason: str, now: datetime, policy: RefetchPolicy
) -> Hold | None:
    """A fetch's effect on the invoice's hold.

    - reconciled: a revision that reconciles was emitted, the hold (if any) is over;
    - held: the revision emitted does not reconcile: held, fetched again after a doubling backoff;
    - unchanged / rejected: the same content again, or an unreadable body; a held invoice counts an attempt
      (a truncated body is often transient), anything else is left alone.
    After `max_attempts` automatic re-fetches the invoice stays held until an admin refetches or releases it.
    """
    if outcome == "reconciled":
        return None
    if current is None:
        if outcome != "held" or revision is None:
            return None
        first = now + timedelta(seconds=policy.delay(1)) if policy.max_attempts > 0 else None
        return Hold(revision, now, reason, 0, first)
    attempts = current.attempts + 1
    next_at = now + timedelta(seconds=policy.delay(attempts + 1)) if attempts < policy.max_attempts else None
    if outcome == "held" and revision is not None:
        return Hold(revision, current.since, reason, attempts, next_at)
    return Hold(current.revision, current.since, current.reason, attempts, next_at)


def _item_fields(row: RowItem | None) -> dict[str, Any]:
    if row is None:
        return {}
    it = row.item
    return {
        "item_join": row.join,
        "item_note": row.note,
        "resource_uuid": it.resource_uuid if it else None,
        "resource_id": it.resource_id if it else None,
        "duration": it.duration if it else None,
        "duration_unit": it.duration_unit if it else None,
    }


def _cost_line(invoice_uuid: str, revision: int, ln: ParsedLine, joined: RowItem | None) -> CostLine:
    """A CSV row as a cost line, with its item's ids; the item's category where the CSV has none (8 columns)."""
    item = joined.item if joined is not None else None
    return CostLine(
        invoice_uuid=invoice_uuid,
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
        category=item.category if not ln.category and item is not None and item.category else ln.category,
        is_tax=ln.is_tax,
        extra=dict(ln.extra),
        **_item_fields(joined),
    )


def build_events(
    discovered: InvoiceDiscovered,
    parsed: ParsedInvoice,
    revision: int,
    reconciliation: Reconciliation | None = None,
    joined: Sequence[RowItem] | None = None,
) -> tuple[list[CostLine], InvoiceEnd]:
    """One CostLine per CSV row (in CSV order), then the end marker that makes the revision actionable.

    Without a reconciliation, the one the discovery alone supports (billing history and, when it carries it,
    the invoice list; no tolerance) is recorded. `joined` (one per row, services/ingester/items.py) adds the
    items' ids to the rows; the amounts are the CSV's whatever the items say.
    """
    if reconciliation is None:
        reconciliation = reconciliation_of(parsed, expected_of(discovered, None, None, False), 0)
    if joined is not None and len(joined) != parsed.line_count:
        raise ValueError(f"{len(joined)} joined items for {parsed.line_count} CSV rows")
    lines = [
        _cost_line(discovered.invoice_uuid, revision, ln, joined[i] if joined is not None else None)
        for i, ln in enumerate(parsed.lines)
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
        reconciliation=reconciliation,
    )
    return lines, end
