"""`cloudbill status`: lag per stage (fetch-side watermarks, right on the embedded broker too), dead
letters, the last poll per account and invoices by status."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from shared.settings import Settings
from shared.topics import ALL, STAGES

STATUS_NAMES = {0: "discovered", 1: "ingested", 2: "matched", 3: "completed", 4: "pushed"}


def invoices_by_rank(conn: Any) -> dict[int, int]:
    """Invoices per status rank in the read model (0 discovered … 4 pushed); empty before it is migrated."""
    import psycopg

    try:
        rows = conn.execute(
            "SELECT status_rank, count(*) AS n FROM readmodel.invoices GROUP BY 1 ORDER BY 1"
        ).fetchall()
    except psycopg.errors.UndefinedTable:
        conn.rollback()
        return {}
    return {r["status_rank"]: r["n"] for r in rows}


def invoice_progress(database_url: str) -> dict[str, int]:
    """Cumulative counts (an invoice pushed was also discovered, ingested and completed): demo and bench."""
    from shared.db import connect

    with connect(database_url) as conn:
        by_rank = invoices_by_rank(conn)
    return {
        "discovered": sum(by_rank.values()),
        "ingested": sum(n for k, n in by_rank.items() if k >= 1),
        "completed": sum(n for k, n in by_rank.items() if k >= 3),
        "pushed": sum(n for k, n in by_rank.items() if k >= 4),
    }


def collect(settings: Settings) -> dict[str, Any]:
    from shared.kafka.admin import group_lag, high_watermarks

    p = settings.kafka_topic_prefix
    dlq_counts = {t.dlq(p): sum(high_watermarks(settings, t.dlq(p)).values()) for t in ALL if t.has_dlq}
    stages = []
    for st in STAGES.values():
        lags = group_lag(settings, st.group(settings), [t.name(p) for t in st.inputs])
        stages.append(
            {
                "stage": st.name,
                "group": st.group(settings),
                "lag": sum(x.lag for x in lags),
                "records": sum(x.high for x in lags),
                "dead_letters": sum(dlq_counts[t.dlq(p)] for t in st.inputs if t.has_dlq),
            }
        )
    report: dict[str, Any] = {"stages": stages, "dead_letter_topics": dlq_counts, "polls": [], "invoices": {}}
    if settings.database_url:
        report |= _from_database(settings)
    else:
        report["database"] = "DATABASE_URL not set: polls and invoice statuses unavailable"
    return report


def _from_database(settings: Settings) -> dict[str, Any]:
    import psycopg

    from shared.db import connect

    out: dict[str, Any] = {"polls": [], "invoices": {}}
    with connect(settings) as conn:
        try:
            out["polls"] = conn.execute(
                "SELECT account, job, status, finished_at, last_success_at, events, error "
                "FROM poller.poll_status ORDER BY account, job"
            ).fetchall()
        except psycopg.errors.UndefinedTable:
            conn.rollback()
        by_rank = invoices_by_rank(conn)
        out["invoices"] = {STATUS_NAMES.get(rank, str(rank)): n for rank, n in by_rank.items()}
    return out


def render(report: dict[str, Any], console: Console) -> None:
    t = Table("stage", "consumer group", "records", "lag", "dead letters", title="Stages")
    for s in report["stages"]:
        lag = f"[yellow]{s['lag']}[/yellow]" if s["lag"] else "0"
        dl = f"[red]{s['dead_letters']}[/red]" if s["dead_letters"] else "0"
        t.add_row(s["stage"], s["group"], str(s["records"]), lag, dl)
    console.print(t)
    if report.get("database"):
        console.print(f"[dim]{report['database']}[/dim]")
        return
    t = Table("account", "job", "status", "finished", "last success", "events", "error", title="Last polls")
    for r in report["polls"]:
        t.add_row(
            r["account"],
            r["job"],
            r["status"],
            str(r["finished_at"] or "-"),
            str(r["last_success_at"] or "-"),
            str(r["events"]),
            (r["error"] or "")[:80],
        )
    console.print(t)
    t = Table("status", "invoices", title="Invoices by status")
    for name, n in report["invoices"].items():
        t.add_row(name, str(n))
    console.print(t)
