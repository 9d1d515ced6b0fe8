"""`cloudbill status`: lag per stage (fetch-side watermarks, right on the embedded broker too), dead
letters, invoice revisions the matcher cannot complete (lines missing) with their age, the last poll per
account, invoices by status, and the held invoices with their variance."""

from __future__ import annotations

import time
from datetime import timedelta
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


def held_invoices(conn: Any) -> list[dict[str, Any]]:
    """Invoices held by the money gates (completed, not proven complete, not pushed) with their variance."""
    import psycopg

    try:
        rows: list[dict[str, Any]] = conn.execute(
            "SELECT invoice_uuid, period, revision, currency, reconciliation_expected_minor AS expected_minor,"
            " reconciliation_actual_minor AS actual_minor, reconciliation_difference_minor AS variance_minor,"
            " hold_reason FROM readmodel.invoices WHERE held AND status_rank = 3 ORDER BY period DESC, invoice_uuid"
        ).fetchall()
        return rows
    except psycopg.errors.UndefinedTable:
        conn.rollback()
        return []


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


OUTCOMES = ("pushed", "held", "dead_lettered", "pending")


def invoice_outcomes(database_url: str) -> dict[str, list[str]]:
    """Every invoice of the read model by where it ended: pushed to finance, held by the money gates,
    dead-lettered (a record of it went to a dead-letter topic), or still pending. The demo waits until
    nothing is pending.

    Held is a completed revision with `held` set (as `held_invoices` reads it)."""
    import psycopg

    from shared.db import connect

    out: dict[str, list[str]] = {k: [] for k in OUTCOMES}
    with connect(database_url) as conn:
        try:
            rows = conn.execute(
                """
                SELECT i.invoice_uuid,
                       CASE WHEN i.status_rank >= 4 THEN 'pushed'
                            WHEN i.status_rank = 3 AND i.held THEN 'held'
                            WHEN EXISTS (SELECT 1 FROM readmodel.dead_letters d WHERE d.record_key = i.invoice_uuid)
                                THEN 'dead_lettered'
                            ELSE 'pending' END AS outcome
                FROM readmodel.invoices i ORDER BY i.invoice_uuid
                """
            ).fetchall()
        except psycopg.errors.UndefinedTable:
            conn.rollback()
            return out
    for r in rows:
        out[r["outcome"]].append(r["invoice_uuid"])
    return out


def collect(settings: Settings) -> dict[str, Any]:
    from shared.kafka.admin import group_lag, high_watermarks

    p = settings.kafka_topic_prefix
    dlq_counts = {t.dlq(p): sum(high_watermarks(settings, t.dlq(p)).values()) for t in ALL if t.has_dlq}
    stages = []
    for st in STAGES.values():
        lags = group_lag(settings, st.group(settings), [t.name(p) for t in st.inputs])
        # Parked: records of its own retry topic the stage has not settled yet (shared/kafka/retry.py).
        parked = (
            sum(x.lag for x in group_lag(settings, st.group(settings), [st.retry_topic(settings)])) if st.parks else 0
        )
        stages.append(
            {
                "stage": st.name,
                "group": st.group(settings),
                "lag": sum(x.lag for x in lags),
                "records": sum(x.high for x in lags),
                "dead_letters": sum(dlq_counts[t.dlq(p)] for t in st.inputs if t.has_dlq),
                "parked": parked,
            }
        )
    report: dict[str, Any] = {"stages": stages, "dead_letter_topics": dlq_counts, "polls": [], "invoices": {}}
    report["waiting"] = waiting_for_lines(settings)
    if settings.database_url:
        report |= _from_database(settings)
    else:
        report["database"] = "DATABASE_URL not set: polls and invoice statuses unavailable"
    return report


def waiting_for_lines(settings: Settings) -> list[dict[str, Any]]:
    """Invoice revisions whose end marker the matcher read while lines were missing, oldest first, with their age."""
    from services.matcher.options import waiting_revisions

    now_ms = int(time.time() * 1000)
    return [
        {
            "invoice_uuid": w.invoice_uuid,
            "revision": w.revision,
            "line_count": w.line_count,
            "missing": w.missing,
            "age_s": None if (age := w.age_s(now_ms)) is None else round(age),
        }
        for w in waiting_revisions(settings)
    ]


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
        out["unverified"] = unverified_revisions(conn)
        by_rank = invoices_by_rank(conn)
        out["held"] = held_invoices(conn)
        out["invoices"] = {STATUS_NAMES.get(rank, str(rank)): n for rank, n in by_rank.items()}
        if out["held"]:
            out["invoices"]["completed"] = out["invoices"].get("completed", 0) - len(out["held"])
            out["invoices"]["held"] = len(out["held"])
    return out


UNVERIFIED_AFTER_S = 60  # the commit verifier reads a revision's marker within seconds of its commit


def unverified_revisions(conn: Any) -> list[dict[str, Any]]:
    """Latest revisions the ingester committed whose end marker its commit verifier has not read on cost-lines
    for a minute or more, oldest first: aborted after the commit was acknowledged (re-emitted), or held up by an
    open transaction (services/ingester/verify.py)."""
    import psycopg

    from services.ingester.ledger import unverified_revisions as committed_not_read

    try:
        return committed_not_read(conn, min_age=timedelta(seconds=UNVERIFIED_AFTER_S))
    except (psycopg.errors.UndefinedTable, psycopg.errors.UndefinedColumn):
        conn.rollback()
        return []


def _age(seconds: int) -> str:
    """`3d 4h`, `2h 5m`, `7m 12s`, `40s`."""
    d, rem = divmod(seconds, 86400)
    h, rem = divmod(rem, 3600)
    m, sec = divmod(rem, 60)
    if d:
        return f"{d}d {h}h"
    if h:
        return f"{h}h {m}m"
    return f"{m}m {sec}s" if m else f"{sec}s"


def render(report: dict[str, Any], console: Console) -> None:
    t = Table("stage", "consumer group", "records", "lag", "parked", "dead letters", title="Stages")
    for s in report["stages"]:
        lag = f"[yellow]{s['lag']}[/yellow]" if s["lag"] else "0"
        parked = f"[yellow]{s.get('parked', 0)}[/yellow]" if s.get("parked") else "0"
        dl = f"[red]{s['dead_letters']}[/red]" if s["dead_letters"] else "0"
        t.add_row(s["stage"], s["group"], str(s["records"]), lag, parked, dl)
    console.print(t)
    if report.get("waiting"):
        t = Table("invoice", "revision", "lines missing", "waiting for", title="[red]Waiting for lines[/red]")
        for w in report["waiting"]:
            age = "-" if w["age_s"] is None else _age(w["age_s"])
            t.add_row(w["invoice_uuid"], str(w["revision"]), f"{w['missing']} of {w['line_count']}", age)
        console.print(t)
        console.print("the matcher read these end markers before all their lines: see its dead letters")
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
    if report.get("unverified"):
        t = Table(
            "invoice", "revision", "lines", "committed for", "re-emissions", title="[red]Committed, not readable[/red]"
        )
        for u in report["unverified"]:
            t.add_row(u["invoice_uuid"], str(u["revision"]), str(u["line_count"]), _age(u["age_s"]), str(u["reemits"]))
        console.print(t)
        console.print(
            "the ingester's commit verifier has not read these revisions on cost-lines: an open transaction holds"
            " the topic, or the broker aborted them after their commit (they are re-emitted; see the ingester log)"
        )
    t = Table("status", "invoices", title="Invoices by status")
    for name, n in report["invoices"].items():
        t.add_row(f"[red]{name}[/red]" if name == "held" else name, str(n))
    console.print(t)
    if report.get("held"):
        from shared.money import format_minor

        t = Table(
            "invoice", "period", "revision", "expected", "actual", "variance", "why", title="[red]Held invoices[/red]"
        )
        for h in report["held"]:
            cur = h["currency"] or "USD"

            def amount(v: int | None, cur: str = cur) -> str:
                return "-" if v is None else format_minor(v, cur)

            t.add_row(
                h["invoice_uuid"],
                str(h["period"] or "-"),
                str(h["revision"]),
                amount(h["expected_minor"]),
                amount(h["actual_minor"]),
                amount(h["variance_minor"]),
                (h["hold_reason"] or "")[:80],
            )
        console.print(t)
        console.print(
            "release one with `cloudbill invoices release UUID --reason TEXT`, or `cloudbill invoices refetch UUID`"
        )
