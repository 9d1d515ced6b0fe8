"""Read side of the read models: the queries behind the HTTP routes (keyset pagination, never OFFSET)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from psycopg_pool import ConnectionPool

from services.api.domain import RANK

S = "readmodel"
NO_PERIOD = date(1, 1, 1)  # sorts invoices without a known period last (newest first)

INVOICE_COLUMNS = """
    invoice_uuid, account, invoice_id, period, invoice_date, description, currency, amount_minor, status_rank,
    status_revision, revision, ingested_revision, lines_count, matched_count, amount_net_minor, amount_tax_minor,
    amount_gross_minor, reconciliation_status, reconciliation_expected_minor, reconciliation_difference_minor,
    pushed_revision, pushed_to_finance_at, finance_invoice_id, finance_action
"""

LINE_COLUMNS = """
    invoice_uuid, revision, line_index, period, product, group_description, description, hours, start_at, end_at,
    amount_minor, currency, project_name, category, is_tax, kind, name, resource_id, resource_key, rule,
    unmatched_reason
"""

# Must stay in the shape of the partial indexes cost_lines_period_kind_cursor / cost_lines_period_cursor.
SQL_COST_LINES = f"""
SELECT {LINE_COLUMNS} FROM {S}.cost_lines
WHERE current AND period = %(period)s {{kind}}
  AND (invoice_uuid, line_index) > (%(after_uuid)s, %(after_index)s)
ORDER BY invoice_uuid, line_index
LIMIT %(limit)s
"""


@dataclass(frozen=True)
class Page:
    rows: list[dict[str, Any]]
    has_more: bool


def cost_lines_sql(kind: str | None) -> str:
    return SQL_COST_LINES.format(kind="AND kind = %(kind)s" if kind is not None else "")


class ReadModelRepository:
    """Queries on a pool of autocommit connections (each statement sees committed batches only)."""

    def __init__(self, pool: ConnectionPool) -> None:
        self.pool = pool

    def _all(self, sql: str, params: Any = None) -> list[dict[str, Any]]:
        with self.pool.connection() as conn:
            return conn.execute(sql, params).fetchall()

    def ping(self, timeout: float = 2.0) -> None:
        with self.pool.connection(timeout=timeout) as conn:
            conn.execute("SELECT 1 FROM readmodel.invoices LIMIT 1").fetchall()

    # ---------------------------------------------------------------------------------------------- balance
    def latest_balance(self, account: str | None) -> dict[str, Any] | None:
        rows = self._all(
            f"SELECT * FROM {S}.balance_snapshots WHERE %(account)s::text IS NULL OR account = %(account)s"
            " ORDER BY generated_at DESC, account LIMIT 1",
            {"account": account},
        )
        return rows[0] if rows else None

    def balance_history(
        self, start: datetime | None, end: datetime | None, account: str | None, limit: int
    ) -> list[dict[str, Any]]:
        return self._all(
            f"SELECT * FROM {S}.balance_snapshots"
            " WHERE (%(account)s::text IS NULL OR account = %(account)s)"
            "   AND (%(start)s::timestamptz IS NULL OR generated_at >= %(start)s)"
            "   AND (%(end)s::timestamptz IS NULL OR generated_at <= %(end)s)"
            " ORDER BY generated_at, account LIMIT %(limit)s",
            {"account": account, "start": start, "end": end, "limit": limit},
        )

    # ------------------------------------------------------------------------------------------- cost lines
    def cost_lines(self, period: date, kind: str | None, after: tuple[str, int] | None, limit: int) -> Page:
        after_uuid, after_index = after or ("", -1)
        rows = self._all(
            cost_lines_sql(kind),
            {"period": period, "kind": kind, "after_uuid": after_uuid, "after_index": after_index, "limit": limit + 1},
        )
        return Page(rows[:limit], len(rows) > limit)

    def unmatched(self, period: date | None) -> list[dict[str, Any]]:
        return self._all(
            f"SELECT COALESCE(unmatched_reason, 'unknown') AS reason, kind, currency, count(*) AS lines_count,"
            f" sum(amount_minor)::bigint AS amount_minor FROM {S}.cost_lines"
            " WHERE current AND resource_id IS NULL AND (%(period)s::date IS NULL OR period = %(period)s)"
            " GROUP BY 1, 2, 3 ORDER BY 1, 2 NULLS FIRST, 3",
            {"period": period},
        )

    # --------------------------------------------------------------------------------------------- invoices
    def invoices(self, status: str | None, period: date | None, after: tuple[date, str] | None, limit: int) -> Page:
        after_period, after_uuid = after or (date.max, "")
        rows = self._all(
            f"SELECT {INVOICE_COLUMNS}, COALESCE(period, %(no_period)s::date) AS sort_period FROM {S}.invoices"
            " WHERE (%(rank)s::smallint IS NULL OR status_rank = %(rank)s)"
            "   AND (%(period)s::date IS NULL OR period = %(period)s)"
            "   AND (COALESCE(period, %(no_period)s::date) < %(after_period)s"
            "        OR (COALESCE(period, %(no_period)s::date) = %(after_period)s AND invoice_uuid > %(after_uuid)s))"
            " ORDER BY sort_period DESC, invoice_uuid LIMIT %(limit)s",
            {
                "rank": RANK[status] if status else None,
                "period": period,
                "no_period": NO_PERIOD,
                "after_period": after_period,
                "after_uuid": after_uuid,
                "limit": limit + 1,
            },
        )
        return Page(rows[:limit], len(rows) > limit)

    def invoice(self, invoice_uuid: str) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
        """The header and its served lines, from one snapshot (a batch may replace the line set meanwhile)."""
        with self.pool.connection() as conn, conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            head = conn.execute(f"SELECT {INVOICE_COLUMNS} FROM {S}.invoices WHERE invoice_uuid = %s", (invoice_uuid,))
            row = head.fetchone()
            if row is None:
                return None
            lines: list[dict[str, Any]] = []
            if row["revision"] is not None:
                lines = conn.execute(
                    f"SELECT {LINE_COLUMNS} FROM {S}.cost_lines WHERE invoice_uuid = %s AND revision = %s AND current"
                    " ORDER BY line_index",
                    (invoice_uuid, row["revision"]),
                ).fetchall()
            return row, lines
