"""`cloudbill export focus` and `cloudbill forecast`: the API's FinOps reads, from the command line."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from cloudbill import context
from shared.settings import Settings

export_app = typer.Typer(help="Export billing data in standard formats.", no_args_is_help=True)
console = Console(stderr=True)


class Format(StrEnum):
    csv = "csv"
    parquet = "parquet"


def _settings() -> Settings:
    s = context.settings()
    if not s.database_url:
        console.print("error: DATABASE_URL is not set")
        raise typer.Exit(2)
    return s


@export_app.command("focus")
def export_focus(
    period: Annotated[str, typer.Option("--period", help="Billing month, YYYY-MM.")],
    out: Annotated[str, typer.Option("--out", help="Output file (`-`: standard output, CSV only).")],
    account: Annotated[str | None, typer.Option("--account", help="One account (default: all).")] = None,
    fmt: Annotated[Format, typer.Option("--format", help="csv or parquet.")] = Format.csv,
) -> None:
    """Write a billing period as a FOCUS 1.2 dataset (one row per cost line; exact decimal costs)."""
    from services.api.finops import FinOpsRepository
    from services.api.focus import csv_chunks, parse_month, write_parquet
    from shared.db import make_pool
    from shared.money import minor_digits

    try:
        month = parse_month(period)
    except ValueError as e:
        console.print(f"error: {e}")
        raise typer.Exit(2) from None
    if out == "-" and fmt is Format.parquet:
        console.print("error: parquet needs a file (--out FILE)")
        raise typer.Exit(2)
    s = _settings()
    pool = make_pool(s, name="cloudbill-export")
    try:
        repo = FinOpsRepository(pool)
        rows = 0

        def counted() -> Iterator[dict[str, Any]]:
            nonlocal rows
            for rec in repo.focus_records(month, account):
                rows += 1
                yield rec

        if fmt is Format.csv:
            sink = sys.stdout.buffer if out == "-" else Path(out).open("wb")  # noqa: SIM115
            try:
                for chunk in csv_chunks(counted()):
                    sink.write(chunk)
            finally:
                if out != "-":
                    sink.close()
        else:
            write_parquet(counted(), out, currency_digits=minor_digits(s.currency))
        held = repo.held_in_period(month, account)
    finally:
        pool.close()
    console.print(f"{rows} FOCUS row(s) for {month:%Y-%m} written to {out if out != '-' else 'standard output'}")
    if held:
        console.print(f"warning: {len(held)} held invoice(s) in this period (x_InvoiceStatus=held): {', '.join(held)}")


def register(app: typer.Typer) -> None:
    app.add_typer(export_app, name="export")

    @app.command()
    def forecast(
        account: Annotated[str | None, typer.Option("--account", help="One account (default: all).")] = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print JSON (the API's /forecast answer).")] = False,
    ) -> None:
        """Month-to-date usage, the month-end forecast, the budget, and the forecast's error on past months."""
        from services.api.finops import FinOpsRepository
        from services.api.finops_schemas import AccountForecastOut
        from services.api.schemas import money
        from shared.db import make_pool

        s = _settings()
        pool = make_pool(s, name="cloudbill-forecast")
        try:
            repo = FinOpsRepository(pool)
            budgets = s.budgets_minor()
            found = [
                AccountForecastOut.build(repo.account_forecast(acc, cur, budgets.get(acc), s.forecast_window_days))
                for acc, cur in repo.accounts()
                if account is None or acc == account
            ]
        finally:
            pool.close()
        if as_json:
            typer.echo(json.dumps({"accounts": [f.model_dump(mode="json") for f in found]}, indent=2))
            return
        if not found:
            typer.echo("no balance snapshot yet (poll the balance: `cloudbill poll balance`)")
            return
        out = Console()
        for f in found:
            out.print(
                f"[bold]{f.account}[/bold] {f.period:%B %Y} as of {f.as_of:%Y-%m-%d %H:%M} UTC: month to date "
                f"{f.month_to_date} {f.currency}, forecast {f.forecast} {f.currency} ({f.basis})"
                + (f", budget {f.budget} ({f.forecast_budget_ratio:.0%} forecast)" if f.budget else "")
            )
            out.print(f"  method: {f.method}")
            if f.accuracy:
                days = sorted({c.day for m in f.accuracy for c in m.checkpoints})
                t = Table("month", "actual", *(f"forecast at day {d}" for d in days), "mean |error|")
                for m in f.accuracy:
                    at = {c.day: c for c in m.checkpoints}
                    t.add_row(
                        f"{m.period:%Y-%m}",
                        money(m.actual_minor, f.currency),
                        *(
                            f"{money(at[d].forecast_minor, f.currency)} ({at[d].error_pct:+}%)" if d in at else "-"
                            for d in days
                        ),
                        f"{m.mean_abs_error_pct}%",
                    )
                out.print(t)
                out.print(f"  mean absolute error over past months: {f.mean_abs_error_pct}%")
