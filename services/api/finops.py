"""FinOps reads of the read model, shared by the API routes and the CLI: FOCUS rows, forecasts, alerts.

The FOCUS rows are streamed from a server-side cursor (a period of a million lines never sits in memory);
the forecast is shared/forecast.py over the projected balance snapshots, with each past month's invoice net
amount as the truth it is measured against.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from services.api.focus import ExportLine, focus_record
from services.projector.domain import status_name
from shared.db import DictPool
from shared.forecast import Forecast, MonthAccuracy, Snapshot, backtest, forecast, month_start, month_totals

S = "readmodel"
BACKTEST_MONTHS = 6

SQL_FOCUS_LINES = f"""
SELECT c.account, c.invoice_uuid, i.invoice_id, c.revision, i.status_rank, i.held, c.period, c.line_index, c.product,
       c.group_description, c.description, c.hours, c.start_at, c.end_at, c.amount_minor, c.currency,
       c.project_name, c.category, c.is_tax, c.kind, c.name, c.resource_id, c.rule, c.unmatched_reason
FROM {S}.cost_lines c JOIN {S}.invoices i ON i.invoice_uuid = c.invoice_uuid
WHERE c.current AND c.period = %(period)s AND (%(account)s::text IS NULL OR c.account = %(account)s)
ORDER BY c.invoice_uuid, c.line_index
"""


@dataclass
class AccountForecast:
    account: str
    currency: str
    forecast: Forecast | None
    budget_minor: int | None
    accuracy: list[MonthAccuracy] = field(default_factory=list)


class FinOpsRepository:
    def __init__(self, pool: DictPool) -> None:
        self.pool = pool

    # ------------------------------------------------------------------------------------------------ FOCUS
    def focus_lines(self, period: date, account: str | None, *, fetch: int = 2000) -> Iterator[ExportLine]:
        """The period's served lines, in (invoice, line) order, from a server-side cursor in one snapshot."""
        with self.pool.connection() as conn, conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            with conn.cursor(name="focus_export") as cur:
                cur.itersize = fetch
                cur.execute(SQL_FOCUS_LINES, {"period": period, "account": account})
                for row in cur:
                    yield ExportLine.from_row(
                        {**row, "invoice_status": status_name(row["status_rank"], bool(row["held"]))}
                    )

    def focus_records(self, period: date, account: str | None) -> Iterator[dict[str, Any]]:
        return (focus_record(line) for line in self.focus_lines(period, account))

    def held_in_period(self, period: date, account: str | None) -> list[str]:
        with self.pool.connection() as conn:
            rows = conn.execute(
                f"SELECT invoice_uuid FROM {S}.invoices WHERE held AND period = %s"
                " AND (%s::text IS NULL OR account = %s) ORDER BY invoice_uuid",
                (period, account, account),
            ).fetchall()
        return [r["invoice_uuid"] for r in rows]

    # --------------------------------------------------------------------------------------------- forecast
    def accounts(self) -> list[tuple[str, str]]:
        with self.pool.connection() as conn:
            rows = conn.execute(
                f"SELECT DISTINCT ON (account) account, currency FROM {S}.balance_snapshots"
                " ORDER BY account, generated_at DESC"
            ).fetchall()
        return [(r["account"], r["currency"]) for r in rows]

    def snapshots(self, account: str, since: datetime) -> list[Snapshot]:
        with self.pool.connection() as conn:
            rows = conn.execute(
                f"SELECT generated_at, month_to_date_usage_minor FROM {S}.balance_snapshots"
                " WHERE account = %s AND generated_at >= %s ORDER BY generated_at",
                (account, since),
            ).fetchall()
        return [Snapshot(r["generated_at"], r["month_to_date_usage_minor"]) for r in rows]

    def invoice_nets(self, account: str, since: date) -> dict[date, int]:
        """Each period's usage as DigitalOcean invoiced it (net: every non-tax line), for the served revisions."""
        with self.pool.connection() as conn:
            rows = conn.execute(
                f"SELECT period, sum(amount_net_minor)::bigint AS net FROM {S}.invoices WHERE account = %s"
                " AND revision IS NOT NULL AND period >= %s GROUP BY period",
                (account, since),
            ).fetchall()
        return {r["period"]: r["net"] for r in rows if r["net"] is not None}

    def account_forecast(
        self, account: str, currency: str, budget_minor: int | None, window_days: int
    ) -> AccountForecast:
        with self.pool.connection() as conn:
            row = conn.execute(
                f"SELECT max(generated_at) AS at FROM {S}.balance_snapshots WHERE account = %s", (account,)
            ).fetchone()
        if row is None or row["at"] is None:
            return AccountForecast(account, currency, None, budget_minor)
        since_month = month_start(row["at"].astimezone(UTC))
        for _ in range(BACKTEST_MONTHS + 1):
            since_month = month_start(since_month - timedelta(days=1))
        snaps = self.snapshots(account, datetime.combine(since_month, datetime.min.time(), tzinfo=UTC))
        nets = self.invoice_nets(account, since_month)
        current = month_start(snaps[-1].at.astimezone(UTC))
        previous = month_start(current - timedelta(days=1))
        prev_total = nets.get(previous, month_totals(snaps).get(previous))
        fc = forecast(snaps, previous_month_total_minor=prev_total, window_days=window_days)
        accuracy = backtest(snaps, nets, window_days=window_days)
        return AccountForecast(account, currency, fc, budget_minor, accuracy)

    # ----------------------------------------------------------------------------------------------- alerts
    def alerts(
        self,
        account: str | None,
        kind: str | None,
        period: date | None,
        after: tuple[datetime, str] | None,
        limit: int,
    ) -> tuple[list[dict[str, Any]], bool]:
        after_at, after_id = after or (datetime.max.replace(tzinfo=UTC), "")
        with self.pool.connection() as conn:
            rows = conn.execute(
                f"SELECT alert_id, account, kind, period, subject, threshold_pct, currency, budget_minor,"
                f" observed_minor, reference_minor, detected_at, message FROM {S}.alerts"
                " WHERE (%(account)s::text IS NULL OR account = %(account)s)"
                "   AND (%(kind)s::text IS NULL OR kind = %(kind)s)"
                "   AND (%(period)s::date IS NULL OR period = %(period)s)"
                "   AND (detected_at < %(after_at)s OR (detected_at = %(after_at)s AND alert_id > %(after_id)s))"
                " ORDER BY detected_at DESC, alert_id LIMIT %(limit)s",
                {
                    "account": account,
                    "kind": kind,
                    "period": period,
                    "after_at": after_at,
                    "after_id": after_id,
                    "limit": limit + 1,
                },
            ).fetchall()
        return rows[:limit], len(rows) > limit
