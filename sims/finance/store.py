"""Postgres storage of the finance simulator (schema finance_sim): vendors, invoices, import calls, idempotency keys."""

from __future__ import annotations

import threading
import uuid
from dataclasses import dataclass
from typing import Any

from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from shared.db import DictPool, migrate
from sims.finance.validation import ImportInvoice


@dataclass(frozen=True)
class ImportResult:
    action: str  # "created" | "updated"
    invoice_id: str
    vendor_id: str
    replayed: bool = False  # the stored answer to an earlier request with the same key and body


class IdempotencyConflict(ValueError):
    """The Idempotency-Key was used before with another request body."""


class FinanceStore:
    """Dedup on (tenant_id, source, external_id) is the database's unique constraint: safe under concurrency."""

    def __init__(self, database_url: str, *, pool_max: int = 4) -> None:
        self.database_url = database_url
        self._pool: DictPool | None = None
        self._lock = threading.Lock()
        self._pool_max = pool_max

    def migrate(self) -> None:
        migrate(self.database_url, ["finance_sim"])

    def pool(self) -> DictPool:
        with self._lock:
            if self._pool is None:
                self._pool = ConnectionPool(
                    self.database_url,
                    min_size=1,
                    max_size=self._pool_max,
                    kwargs={"row_factory": dict_row},
                    name="finance-sim",
                    open=False,
                )
                self._pool.open(wait=True, timeout=30)
            return self._pool

    def close(self) -> None:
        with self._lock:
            if self._pool is not None:
                self._pool.close()
                self._pool = None

    def import_invoice(
        self, inv: ImportInvoice, idempotency_key: str | None, body_sha256: str | None = None
    ) -> ImportResult:
        """Upsert one invoice. With a key and a body hash, honour the key first (replay or conflict)."""
        with self.pool().connection() as conn, conn.transaction():
            if idempotency_key and body_sha256:
                conn.execute(
                    "SELECT pg_advisory_xact_lock(hashtext(%s))",
                    (f"finance_sim.idem.{inv.tenant_id}.{idempotency_key}",),
                )
                seen = conn.execute(
                    "SELECT body_sha256, response FROM finance_sim.idempotency_keys"
                    " WHERE tenant_id = %s AND idempotency_key = %s",
                    (inv.tenant_id, idempotency_key),
                ).fetchone()
                if seen is not None:
                    if seen["body_sha256"] != body_sha256:
                        raise IdempotencyConflict(
                            f"Idempotency-Key {idempotency_key} was used with another request body"
                        )
                    r = seen["response"]
                    return ImportResult(r["action"], r["invoice_id"], r["vendor_id"], replayed=True)
            result = self._upsert(conn, inv, idempotency_key)
            if idempotency_key and body_sha256:
                conn.execute(
                    "INSERT INTO finance_sim.idempotency_keys (tenant_id, idempotency_key, body_sha256, response)"
                    " VALUES (%s, %s, %s, %s)",
                    (
                        inv.tenant_id,
                        idempotency_key,
                        body_sha256,
                        Jsonb(
                            {"action": result.action, "invoice_id": result.invoice_id, "vendor_id": result.vendor_id}
                        ),
                    ),
                )
            return result

    def _upsert(self, conn: Any, inv: ImportInvoice, idempotency_key: str | None) -> ImportResult:
        row = conn.execute(
            "INSERT INTO finance_sim.vendors (id, tenant_id, name, category) VALUES (%s, %s, %s, %s)"
            " ON CONFLICT (tenant_id, lower(name)) DO NOTHING RETURNING id",
            (f"ven_{uuid.uuid4().hex[:16]}", inv.tenant_id, inv.vendor_name, inv.vendor_category),
        ).fetchone()
        if row is None:
            row = conn.execute(
                "SELECT id FROM finance_sim.vendors WHERE tenant_id = %s AND lower(name) = lower(%s)",
                (inv.tenant_id, inv.vendor_name),
            ).fetchone()
        assert row is not None
        vendor_id = row["id"]
        res = conn.execute(
            """
            INSERT INTO finance_sim.invoices (id, tenant_id, source, external_id, invoice_number, invoice_date,
                period_start, period_end, currency, vendor_id, amount_net_minor, amount_tax_minor,
                amount_gross_minor, lines_count, last_idempotency_key)
            VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
            ON CONFLICT (tenant_id, source, external_id) DO UPDATE SET
                invoice_number = EXCLUDED.invoice_number, invoice_date = EXCLUDED.invoice_date,
                period_start = EXCLUDED.period_start, period_end = EXCLUDED.period_end,
                currency = EXCLUDED.currency, vendor_id = EXCLUDED.vendor_id,
                amount_net_minor = EXCLUDED.amount_net_minor, amount_tax_minor = EXCLUDED.amount_tax_minor,
                amount_gross_minor = EXCLUDED.amount_gross_minor, lines_count = EXCLUDED.lines_count,
                last_idempotency_key = EXCLUDED.last_idempotency_key,
                updated_at = now(), update_count = finance_sim.invoices.update_count + 1
            RETURNING id, (xmax = 0) AS inserted
            """,
            (
                f"inv_{uuid.uuid4().hex[:16]}",
                inv.tenant_id,
                inv.source,
                inv.external_id,
                inv.invoice_number,
                inv.invoice_date,
                inv.period_start,
                inv.period_end,
                inv.currency,
                vendor_id,
                inv.amount_net_minor,
                inv.amount_tax_minor,
                inv.amount_gross_minor,
                inv.lines_count,
                idempotency_key,
            ),
        ).fetchone()
        assert res is not None
        action = "created" if res["inserted"] else "updated"
        conn.execute(
            "INSERT INTO finance_sim.import_calls (tenant_id, source, external_id, action, invoice_id,"
            " idempotency_key) VALUES (%s, %s, %s, %s, %s, %s)",
            (inv.tenant_id, inv.source, inv.external_id, action, res["id"], idempotency_key),
        )
        return ImportResult(action, res["id"], vendor_id)

    def invoices(self, filters: dict[str, str]) -> list[dict[str, Any]]:
        where, args = [], []
        for col in ("tenant_id", "source", "external_id"):
            if filters.get(col):
                where.append(f"i.{col} = %s")
                args.append(filters[col])
        sql = (
            "SELECT i.*, v.name AS vendor_name, v.category AS vendor_category FROM finance_sim.invoices i"
            " JOIN finance_sim.vendors v ON v.id = i.vendor_id"
            + (" WHERE " + " AND ".join(where) if where else "")
            + " ORDER BY i.created_at, i.id"
        )
        with self.pool().connection() as conn:
            rows = conn.execute(sql, args).fetchall()
        return [
            {
                "id": r["id"],
                "tenant_id": r["tenant_id"],
                "source": r["source"],
                "external_id": r["external_id"],
                "invoice_number": r["invoice_number"],
                "invoice_date": r["invoice_date"].isoformat(),
                "billing_period": {"start": r["period_start"].isoformat(), "end": r["period_end"].isoformat()},
                "currency": r["currency"],
                "vendor": {"id": r["vendor_id"], "name": r["vendor_name"], "category": r["vendor_category"]},
                "amount_net_minor": r["amount_net_minor"],
                "amount_tax_minor": r["amount_tax_minor"],
                "amount_gross_minor": r["amount_gross_minor"],
                "lines_count": r["lines_count"],
                "created_at": r["created_at"].isoformat(),
                "updated_at": r["updated_at"].isoformat(),
                "update_count": r["update_count"],
                "last_idempotency_key": r["last_idempotency_key"],
            }
            for r in rows
        ]

    def vendors(self, tenant_id: str | None = None) -> list[dict[str, Any]]:
        sql = (
            "SELECT * FROM finance_sim.vendors"
            + (" WHERE tenant_id = %s" if tenant_id else "")
            + " ORDER BY created_at, id"
        )
        with self.pool().connection() as conn:
            rows = conn.execute(sql, [tenant_id] if tenant_id else []).fetchall()
        return [
            {
                "id": r["id"],
                "tenant_id": r["tenant_id"],
                "name": r["name"],
                "category": r["category"],
                "created_at": r["created_at"].isoformat(),
            }
            for r in rows
        ]

    def import_calls(self) -> list[dict[str, Any]]:
        with self.pool().connection() as conn:
            rows = conn.execute("SELECT * FROM finance_sim.import_calls ORDER BY id").fetchall()
        return [{**r, "at": r["at"].isoformat()} for r in rows]
