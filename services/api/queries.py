"""Read side of the read models: the queries behind the HTTP routes (keyset pagination, never OFFSET)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from services.projector.domain import HELD, RANK
from shared.db import DictPool

S = "readmodel"
NO_PERIOD = date(1, 1, 1)  # sorts invoices without a known period last (newest first)

INVOICE_COLUMNS = """
    invoice_uuid, account, invoice_id, period, invoice_date, description, currency, amount_minor, status_rank,
    status_revision, revision, ingested_revision, lines_count, matched_count, amount_net_minor, amount_tax_minor,
    (SELECT count(*) FROM readmodel.cost_lines l WHERE l.invoice_uuid = invoices.invoice_uuid
       AND l.revision = invoices.revision AND l.current AND l.resource_id IS NOT NULL) AS attributed_count,
    amount_gross_minor, reconciliation_status, reconciliation_expected_minor, reconciliation_difference_minor,
    pushed_revision, pushed_to_finance_at, finance_invoice_id, finance_action, held, hold_reason,
    reconciliation_actual_minor, reconciliation_tolerance_minor, reconciliation_reason, reconciliation_checks
"""

LINE_COLUMNS = """
    c.invoice_uuid, c.revision, c.line_index, c.period, c.product, c.group_description, c.description, c.hours,
    c.start_at, c.end_at, c.amount_minor, c.currency, c.project_name, c.category, c.is_tax, c.kind, c.name,
    c.resource_id, c.resource_key, c.rule, c.unmatched_reason, c.attributed_by, c.item_resource_id,
    c.item_resource_uuid, c.duration, c.duration_unit, c.item_join, c.item_note,
    CASE WHEN c.resource_id IS NULL THEN NULL ELSE COALESCE(r.exists_now, c.still_exists) END AS still_exists
"""
# Whether the attributed resource exists *now*: the inventory's latest word (history records included), else what
# the matcher knew (an id the inventory never listed: not current; a kind not inventoried: unknown).
LINE_FROM = f"""{S}.cost_lines c
LEFT JOIN {S}.resources r ON r.account = c.account AND r.kind = c.kind AND r.resource_id = c.resource_id"""

DEAD_LETTER_COLUMNS = """
    dedup_key, dlq_topic, dlq_partition, dlq_offset, source_topic, source_partition, source_offset, error_class,
    error_message, service, failed_at, record_key, octet_length(record_value) AS value_bytes
"""

# Must stay in the shape of the partial indexes cost_lines_period_kind_cursor / cost_lines_period_cursor.
SQL_COST_LINES = f"""
SELECT {LINE_COLUMNS} FROM {LINE_FROM}
WHERE c.current AND c.period = %(period)s {{kind}}
  AND (c.invoice_uuid, c.line_index) > (%(after_uuid)s, %(after_index)s)
ORDER BY c.invoice_uuid, c.line_index
LIMIT %(limit)s
"""

# Rollups of a period's served lines. `attributed`: lines with a resource; `current`: of a resource that exists now.
ROLLUP_KEYS: dict[str, str] = {
    "product": "c.product",
    "kind": "COALESCE(c.kind, '')",
    "project": "c.project_name",
    "resource": "COALESCE(c.kind || ':' || c.resource_id, '')",
    "rule": "COALESCE(c.attributed_by, 'unattributed:' || COALESCE(c.unmatched_reason, 'unknown'))",
}
SQL_ROLLUP = f"""
SELECT {{key}} AS key, min(c.name) AS name, c.currency, count(*) AS lines_count,
       sum(c.amount_minor)::bigint AS amount_minor,
       count(c.resource_id) AS attributed_count,
       count(*) FILTER (WHERE c.resource_id IS NOT NULL AND COALESCE(r.exists_now, c.still_exists)) AS current_count
FROM {LINE_FROM}
WHERE c.current AND c.period = %(period)s AND (%(account)s::text IS NULL OR c.account = %(account)s)
GROUP BY 1, c.currency ORDER BY amount_minor DESC, 1, c.currency
"""
SQL_RESOURCE_COSTS = f"""
SELECT c.period, c.currency, count(*) AS lines_count, sum(c.amount_minor)::bigint AS amount_minor,
       array_agg(DISTINCT c.attributed_by) FILTER (WHERE c.attributed_by IS NOT NULL) AS rules
FROM {S}.cost_lines c
WHERE c.current AND c.resource_id = %(resource_id)s
  AND (%(kind)s::text IS NULL OR c.kind = %(kind)s) AND (%(account)s::text IS NULL OR c.account = %(account)s)
GROUP BY c.period, c.currency ORDER BY c.period, c.currency
"""


@dataclass(frozen=True)
class Page:
    rows: list[dict[str, Any]]
    has_more: bool


def cost_lines_sql(kind: str | None) -> str:
    return SQL_COST_LINES.format(kind="AND c.kind = %(kind)s" if kind is not None else "")


class ReadModelRepository:
    """Queries on a pool of autocommit connections (each statement sees committed batches only)."""

    def __init__(self, pool: DictPool) -> None:
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

    def rollup(self, period: date, by: str, account: str | None) -> list[dict[str, Any]]:
        return self._all(SQL_ROLLUP.format(key=ROLLUP_KEYS[by]), {"period": period, "account": account})

    def resource_costs(
        self, resource_id: str, kind: str | None, account: str | None
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
        """A resource's cost per month, what the inventory knows of it, and how its lines name it."""
        params = {"resource_id": resource_id, "kind": kind, "account": account}
        months = self._all(SQL_RESOURCE_COSTS, params)
        known = self._all(
            f"SELECT account, kind, resource_id, name, region, exists_now, first_seen, last_seen FROM {S}.resources"
            " WHERE resource_id = %(resource_id)s AND (%(kind)s::text IS NULL OR kind = %(kind)s)"
            "   AND (%(account)s::text IS NULL OR account = %(account)s) ORDER BY account, kind",
            params,
        )
        named = self._all(
            f"SELECT DISTINCT c.account, c.kind, c.name FROM {S}.cost_lines c"
            " WHERE c.current AND c.resource_id = %(resource_id)s AND (%(kind)s::text IS NULL OR c.kind = %(kind)s)"
            "   AND (%(account)s::text IS NULL OR c.account = %(account)s) ORDER BY 1, 2, 3",
            params,
        )
        return months, known, named

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
        completed = status in (HELD, "completed")
        rows = self._all(
            f"SELECT {INVOICE_COLUMNS}, COALESCE(period, %(no_period)s::date) AS sort_period FROM {S}.invoices"
            " WHERE (%(rank)s::smallint IS NULL OR status_rank = %(rank)s)"
            "   AND (%(held)s::boolean IS NULL OR held = %(held)s)"
            "   AND (%(period)s::date IS NULL OR period = %(period)s)"
            "   AND (COALESCE(period, %(no_period)s::date) < %(after_period)s"
            "        OR (COALESCE(period, %(no_period)s::date) = %(after_period)s AND invoice_uuid > %(after_uuid)s))"
            " ORDER BY sort_period DESC, invoice_uuid LIMIT %(limit)s",
            {
                "rank": RANK["completed"] if completed else (RANK[status] if status else None),
                "held": (status == HELD) if completed else None,
                "period": period,
                "no_period": NO_PERIOD,
                "after_period": after_period,
                "after_uuid": after_uuid,
                "limit": limit + 1,
            },
        )
        return Page(rows[:limit], len(rows) > limit)

    # ----------------------------------------------------------------------------------------- dead letters
    def dead_letters(
        self,
        topic: str | None,
        since: datetime | None,
        invoice: str | None,
        after: tuple[datetime, str] | None,
        limit: int,
    ) -> Page:
        """Newest first; `topic` matches the source topic or the dead-letter topic."""
        after_at, after_key = after or (datetime.max.replace(tzinfo=UTC), "")
        rows = self._all(
            f"SELECT {DEAD_LETTER_COLUMNS}, COALESCE(failed_at, 'epoch'::timestamptz) AS sort_at FROM {S}.dead_letters"
            " WHERE (%(topic)s::text IS NULL OR source_topic = %(topic)s OR dlq_topic = %(topic)s)"
            "   AND (%(since)s::timestamptz IS NULL OR failed_at >= %(since)s)"
            "   AND (%(invoice)s::text IS NULL OR record_key = %(invoice)s)"
            "   AND (COALESCE(failed_at, 'epoch'::timestamptz) < %(after_at)s"
            "        OR (COALESCE(failed_at, 'epoch'::timestamptz) = %(after_at)s AND dedup_key > %(after_key)s))"
            " ORDER BY sort_at DESC, dedup_key LIMIT %(limit)s",
            {
                "topic": topic,
                "since": since,
                "invoice": invoice,
                "after_at": after_at,
                "after_key": after_key,
                "limit": limit + 1,
            },
        )
        return Page(rows[:limit], len(rows) > limit)

    def invoice(self, invoice_uuid: str) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]] | None:
        """The header, its served lines and its admin actions, from one snapshot (a batch may replace the line
        set meanwhile)."""
        with self.pool.connection() as conn, conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            head = conn.execute(f"SELECT {INVOICE_COLUMNS} FROM {S}.invoices WHERE invoice_uuid = %s", (invoice_uuid,))
            row = head.fetchone()
            if row is None:
                return None
            lines: list[dict[str, Any]] = []
            if row["revision"] is not None:
                lines = conn.execute(
                    f"SELECT {LINE_COLUMNS} FROM {LINE_FROM} WHERE c.invoice_uuid = %s AND c.revision = %s AND c.current"
                    " ORDER BY c.line_index",
                    (invoice_uuid, row["revision"]),
                ).fetchall()
            actions = conn.execute(
                f"SELECT action, revision, actor, reason, at FROM {S}.invoice_actions WHERE invoice_uuid = %s"
                " ORDER BY at, event_id",
                (invoice_uuid,),
            ).fetchall()
            return row, lines, actions

    # ---------------------------------------------------------------------------------------------- holds
    def held(self) -> list[dict[str, Any]]:
        """Every held invoice with its variance (status, metrics)."""
        return self._all(
            f"SELECT invoice_uuid, account, period, currency, revision, reconciliation_expected_minor,"
            f" reconciliation_actual_minor, reconciliation_difference_minor, hold_reason FROM {S}.invoices"
            f" WHERE held AND status_rank = {RANK['completed']} ORDER BY period DESC, invoice_uuid"
        )

    # ---------------------------------------------------------------------------------------------- history
    def history(
        self,
        entry_type: str | None,
        start: datetime | None,
        end: datetime | None,
        account: str | None,
        after: tuple[datetime, str] | None,
        limit: int,
    ) -> Page:
        """Billing-history entries (payments, credits, adjustments, invoices...), newest first."""
        after_date, after_id = after or (datetime.max.replace(tzinfo=UTC), "")
        rows = self._all(
            f"SELECT event_id, account, entry_type, description, amount_minor, currency, date, invoice_id,"
            f" invoice_uuid FROM {S}.history_entries"
            " WHERE (%(type)s::text IS NULL OR entry_type = %(type)s)"
            "   AND (%(account)s::text IS NULL OR account = %(account)s)"
            "   AND (%(start)s::timestamptz IS NULL OR date >= %(start)s)"
            "   AND (%(end)s::timestamptz IS NULL OR date <= %(end)s)"
            "   AND (date < %(after_date)s OR (date = %(after_date)s AND event_id > %(after_id)s))"
            " ORDER BY date DESC, event_id LIMIT %(limit)s",
            {
                "type": entry_type,
                "account": account,
                "start": start,
                "end": end,
                "after_date": after_date,
                "after_id": after_id,
                "limit": limit + 1,
            },
        )
        return Page(rows[:limit], len(rows) > limit)
