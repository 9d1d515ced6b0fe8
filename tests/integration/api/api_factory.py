"""Builders of every event the projector reads, and a full dump of the read models (for equality checks)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

import psycopg
from psycopg.rows import tuple_row

from shared.events import (
    Balance,
    BillingHistoryEntry,
    CostLine,
    CostLineMatched,
    InvoiceCompleted,
    InvoiceDiscovered,
    InvoiceEnd,
    InvoicePushed,
    Reconciliation,
    Resource,
)
from shared.money import format_minor

ACCOUNT = "default"
T0 = datetime(2026, 5, 1, 8, 0, tzinfo=UTC)
PERIOD = "2026-04-01"


def balance(hour: int, usage_minor: int) -> Balance:
    return Balance(
        month_to_date_balance_minor=1000 + usage_minor,
        account_balance_minor=1000,
        month_to_date_usage_minor=usage_minor,
        generated_at=T0 + timedelta(hours=hour),
        raw={"month_to_date_usage": format_minor(usage_minor)},
    )


def history(i: int, uuid: str | None = None, amount: int = 1000) -> BillingHistoryEntry:
    return BillingHistoryEntry(
        entry_type="Invoice" if uuid else "Payment",
        description=f"entry {i}",
        amount_minor=amount if uuid else -amount,
        date=T0 - timedelta(days=30 * i),
        invoice_id=str(1000 + i) if uuid else None,
        invoice_uuid=uuid,
    )


def discovered(uuid: str, period: str = PERIOD, amount: int = 1000) -> InvoiceDiscovered:
    return InvoiceDiscovered(
        invoice_uuid=uuid, invoice_id="42", period=period, description="Invoice", amount_minor=amount, date=T0
    )


def cost_line(uuid: str, revision: int, i: int, amount: int = 100, *, tax: bool = False) -> CostLine:
    return CostLine(
        invoice_uuid=uuid,
        revision=revision,
        line_index=i,
        product="Taxes" if tax else "Droplets",
        description="GST (10%)" if tax else f"web-{i} (s-1vcpu-1gb)",
        hours=None if tax else 720,
        start=datetime(2026, 4, 1, tzinfo=UTC),
        end=datetime(2026, 5, 1, tzinfo=UTC),
        amount_minor=amount,
        project_name="Default",
        category="iaas",
        is_tax=tax,
    )


def matched(line: CostLine, resource_id: str | None) -> CostLineMatched:
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
        resource_key=f"{ACCOUNT}:droplet:{resource_id}",
        rule="kind_name",
    )


def totals(lines: list[CostLine]) -> dict[str, int]:
    tax = sum(x.amount_minor for x in lines if x.is_tax)
    gross = sum(x.amount_minor for x in lines)
    return {"amount_net_minor": gross - tax, "amount_tax_minor": tax, "amount_gross_minor": gross}


def end(uuid: str, revision: int, lines: list[CostLine], period: str = PERIOD) -> InvoiceEnd:
    return InvoiceEnd(
        invoice_uuid=uuid,
        invoice_id="42",
        revision=revision,
        period=period,
        invoice_date=date(2026, 5, 1),
        line_count=len(lines),
        csv_sha256=f"sha-{revision}",
        parser_version="1",
        reconciliation=Reconciliation(status="unknown"),
        **totals(lines),
    )


def completed(uuid: str, revision: int, lines: list[CostLine], matched_count: int, period: str = PERIOD):
    return InvoiceCompleted(
        invoice_uuid=uuid,
        invoice_id="42",
        revision=revision,
        period=period,
        invoice_date=date(2026, 5, 1),
        line_count=len(lines),
        matched_count=matched_count,
        reconciliation=Reconciliation(status="unknown"),
        **totals(lines),
    )


def pushed(uuid: str, revision: int, action: str = "created", minute: int = 0) -> InvoicePushed:
    return InvoicePushed(
        invoice_uuid=uuid,
        revision=revision,
        finance_invoice_id=f"fin-{uuid}",
        action=action,
        payload_sha256=f"p{revision}",
        pushed_at=T0 + timedelta(minutes=minute),
    )


def resource(rid: str, name: str) -> Resource:
    return Resource(kind="droplet", resource_id=rid, name=name, region="fra1", attributes={"size": "s-1vcpu-1gb"})


def dump(conn: psycopg.Connection) -> dict[str, list[Any]]:
    """Every read-model table, every row, in a total order: equal dumps mean identical read models."""
    cur = conn.cursor(row_factory=tuple_row)
    tables = [
        r[0]
        for r in cur.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'readmodel'"
            " AND table_name <> 'schema_migrations' ORDER BY table_name"
        ).fetchall()
    ]
    out: dict[str, list[Any]] = {}
    for t in tables:
        cur.execute(f"SELECT * FROM readmodel.{t} LIMIT 0")
        ncols = len(cur.description or [])
        order = ", ".join(str(i + 1) for i in range(ncols))
        out[t] = cur.execute(f"SELECT * FROM readmodel.{t} ORDER BY {order}").fetchall()
    return out
