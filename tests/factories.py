"""Builders of the pipeline's events and of consumed records, shared by every test module.

Each builder takes the model's fields as keywords over defaults that describe one April 2026 invoice
(`u1`, period 2026-04-01, invoiced 2026-05-01); a test passes the values it depends on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any

from shared.events import (
    Balance,
    BillingHistoryEntry,
    CostLine,
    CostLineMatched,
    EventData,
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
from shared.kafka.records import Record
from shared.money import format_minor
from shared.reconciliation import Expected, reconcile
from tests.helpers import proven

ACCOUNT = "default"
INVOICE_UUID = "u1"
PERIOD = "2026-04-01"
INVOICE_DATE = date(2026, 5, 1)
T0 = datetime(2026, 5, 1, 8, 0, tzinfo=UTC)  # when the poller saw the April invoice
APRIL_START = datetime(2026, 4, 1, tzinfo=UTC)
MAY_START = datetime(2026, 5, 1, tzinfo=UTC)

# The evidence of a revision: a Reconciliation, or a function of (gross, tax) that makes it from the totals.
Evidence = Reconciliation | Callable[[int, int], Reconciliation]


def bare_match(gross_minor: int, tax_minor: int = 0) -> Reconciliation:
    """`matched` with only the expected amount (no per-source checks): the marker of a hand-written invoice."""
    return Reconciliation(status="matched", expected_minor=gross_minor, difference_minor=0)


def short_of(expected_gross_minor: int) -> Callable[[int, int], Reconciliation]:
    """The evidence of a revision whose lines fall short of (or exceed) what DigitalOcean billed (history and
    invoice list both say `expected_gross_minor`): the truncated-CSV case, held by the money gates."""

    def evidence(gross_minor: int, tax_minor: int) -> Reconciliation:
        return reconcile(
            gross_minor=gross_minor,
            tax_minor=tax_minor,
            csv_currency="USD",
            expected=Expected("USD", history_minor=expected_gross_minor, listed_minor=expected_gross_minor),
        )

    return evidence


def _with_evidence(merged: dict[str, Any], fields: dict[str, Any], reconciliation: Evidence) -> dict[str, Any]:
    """The gross is net + tax unless given; the evidence is made from the totals when it is a function."""
    if "amount_gross_minor" not in fields:
        merged["amount_gross_minor"] = merged["amount_net_minor"] + merged["amount_tax_minor"]
    if callable(reconciliation):
        reconciliation = reconciliation(merged["amount_gross_minor"], merged["amount_tax_minor"])
    return merged | {"reconciliation": reconciliation}


def _totals(lines: Sequence[CostLine]) -> dict[str, Any]:
    tax = sum(x.amount_minor for x in lines if x.is_tax)
    gross = sum(x.amount_minor for x in lines)
    out: dict[str, Any] = {
        "line_count": len(lines),
        "amount_net_minor": gross - tax,
        "amount_tax_minor": tax,
        "amount_gross_minor": gross,
    }
    if lines:
        out |= {"invoice_uuid": lines[0].invoice_uuid, "revision": lines[0].revision}
    return out


def balance(hour: int = 0, usage_minor: int = 0) -> Balance:
    """The balance `hour` hours after T0, with `usage_minor` used this month (and 10.00 of credit)."""
    return Balance(
        month_to_date_balance_minor=1000 + usage_minor,
        account_balance_minor=1000,
        month_to_date_usage_minor=usage_minor,
        generated_at=T0 + timedelta(hours=hour),
        raw={"month_to_date_usage": format_minor(usage_minor)},
    )


def billing_history_entry(i: int = 0, uuid: str | None = None, amount: int = 1000) -> BillingHistoryEntry:
    """The i-th entry back from T0 (30 days apart): the invoice `uuid`, or without one a payment."""
    return BillingHistoryEntry(
        entry_type="Invoice" if uuid else "Payment",
        description=f"entry {i}",
        amount_minor=amount if uuid else -amount,
        date=T0 - timedelta(days=30 * i),
        invoice_id=str(1000 + i) if uuid else None,
        invoice_uuid=uuid,
    )


def invoice_discovered(**fields: Any) -> InvoiceDiscovered:
    base: dict[str, Any] = {
        "invoice_uuid": INVOICE_UUID,
        "invoice_id": "123",
        "period": PERIOD,
        "amount_minor": 8692,
        "date": T0,
    }
    return InvoiceDiscovered(**(base | fields))


def invoice_refetch_requested(**fields: Any) -> InvoiceRefetchRequested:
    base: dict[str, Any] = {
        "invoice_uuid": INVOICE_UUID,
        "requested_by": "ingester",
        "reason": "held",
        "requested_at": T0,
        "attempt": 1,
    }
    return InvoiceRefetchRequested(**(base | fields))


def cost_line(
    line_index: int = 0,
    amount_minor: int = 100,
    *,
    is_tax: bool = False,
    droplet: str | None = None,
    billed: bool = False,
    **fields: Any,
) -> CostLine:
    """The line of droplet `droplet` (default `web-<index>`), or with is_tax the GST line; billed: also the
    CSV's hours, period, project and category (as the ingester parses a real line)."""
    base: dict[str, Any] = {
        "invoice_uuid": INVOICE_UUID,
        "revision": 1,
        "line_index": line_index,
        "product": "Taxes" if is_tax else "Droplets",
        "description": "GST (10%)" if is_tax else f"{droplet or f'web-{line_index}'} (s-1vcpu-1gb)",
        "amount_minor": amount_minor,
        "is_tax": is_tax,
    }
    if billed:
        base |= {
            "hours": None if is_tax else 720,
            "start": APRIL_START,
            "end": MAY_START,
            "project_name": "Default",
            "category": "iaas",
        }
    return CostLine(**(base | fields))


def invoice_end(lines: Sequence[CostLine] = (), *, reconciliation: Evidence = proven, **fields: Any) -> InvoiceEnd:
    """The end marker of `lines` (their count, totals, invoice and revision), unless `fields` say otherwise;
    the gross is net + tax unless given."""
    base: dict[str, Any] = {
        "invoice_uuid": INVOICE_UUID,
        "invoice_id": "123",
        "revision": 1,
        "period": PERIOD,
        "invoice_date": INVOICE_DATE,
        "csv_sha256": "ab",
        "parser_version": "1",
    }
    return InvoiceEnd(**_with_evidence(base | _totals(lines) | fields, fields, reconciliation))


def invoice_completed(
    lines: Sequence[CostLine] | None = None, *, reconciliation: Evidence = proven, **fields: Any
) -> InvoiceCompleted:
    """The April 2026 invoice's completion (33 lines, 6 matched, 86.92 gross), or that of `lines`; the gross
    is net + tax unless given."""
    base: dict[str, Any] = {
        "invoice_uuid": INVOICE_UUID,
        "invoice_id": "123",
        "revision": 1,
        "period": PERIOD,
        "invoice_date": INVOICE_DATE,
        "line_count": 33,
        "matched_count": 6,
        "amount_net_minor": 7902,
        "amount_tax_minor": 790,
        "amount_gross_minor": 8692,
    }
    merged = base | (_totals(lines) if lines is not None else {}) | fields
    return InvoiceCompleted(**_with_evidence(merged, fields, reconciliation))


def invoice_released(**fields: Any) -> InvoiceReleased:
    base: dict[str, Any] = {
        "invoice_uuid": INVOICE_UUID,
        "revision": 1,
        "released_by": "ops@example.test",
        "reason": "credit note",
        "released_at": T0,
    }
    return InvoiceReleased(**(base | fields))


def invoice_pushed(*, minute: int = 0, **fields: Any) -> InvoicePushed:
    """Pushed `minute` minutes after T0, as finance invoice `fin-<uuid>`."""
    merged: dict[str, Any] = {"invoice_uuid": INVOICE_UUID, "revision": 1, "action": "created"} | fields
    base: dict[str, Any] = {
        "finance_invoice_id": f"fin-{merged['invoice_uuid']}",
        "payload_sha256": f"p{merged['revision']}",
        "pushed_at": T0 + timedelta(minutes=minute),
    }
    return InvoicePushed(**(base | merged))


def resource(**fields: Any) -> Resource:
    base: dict[str, Any] = {"kind": "droplet", "resource_id": "1", "name": "web-01"}
    return Resource(**(base | fields))


def cost_line_matched(line: CostLine, resource_id: str | None, *, account: str = ACCOUNT) -> CostLineMatched:
    """The matcher's verdict on `line` (a `web-<index>` droplet line): tax, gone droplet, or matched by name."""
    if line.is_tax:
        return CostLineMatched(line=line, unmatched_reason="tax_line")
    name = f"web-{line.line_index}"
    if resource_id is None:
        return CostLineMatched(line=line, kind="droplet", name=name, unmatched_reason="no_such_resource")
    return CostLineMatched(
        line=line,
        kind="droplet",
        name=name,
        resource_id=resource_id,
        resource_key=f"{account}:droplet:{resource_id}",
        rule="kind_name",
    )


def record(
    value: bytes | None,
    *,
    topic: str = "t",
    key: str | None = "k",
    offset: int = 0,
    partition: int = 0,
    headers: dict[str, bytes] | None = None,
) -> Record:
    """A consumed record (what a handler receives)."""
    return Record(topic, partition, offset, key, value, headers or {})


def event_record(data: EventData, *, account: str = "acct", **where: Any) -> Record:
    """A consumed record carrying `data` in an envelope of `account`; `where`: record()'s topic, key, offset..."""
    return record(encode(data, account), **where)
