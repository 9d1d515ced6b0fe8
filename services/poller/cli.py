"""`cloudbill poll balance|history|resources|all [--account A]`: one poll now, then exit.

For backfills, tests and the demo. Exits non-zero with a clear message when any account's poll failed.
If a replica of the poller service is polling the same (job, account) right now, this waits for it
(up to `--wait`) and then polls anyway: it was asked for a fresh poll.
"""

from __future__ import annotations

from typing import Annotated

import typer

from shared import logging as cblog
from shared.logging import scrub
from shared.settings import Settings, get_settings

app = typer.Typer(help="Run one poll now and exit.", no_args_is_help=True)

AccountOpt = Annotated[str | None, typer.Option("--account", "-a", help="Only this account (default: all).")]
WaitOpt = Annotated[float, typer.Option("--wait", help="Seconds to wait for a poll running elsewhere.")]


def _settings() -> Settings:
    s = get_settings()
    cblog.setup("poller", s.log_format, s.log_level)
    return s


def _poll(job: str, account: str | None, wait: float) -> None:
    from .main import build
    from .poller import UnknownAccount

    settings = _settings()
    if not settings.accounts():
        typer.echo(
            "error: no DigitalOcean account configured: set DIGITALOCEAN_TOKEN or DIGITALOCEAN_ACCOUNTS", err=True
        )
        raise typer.Exit(2)
    if not settings.database_url:
        typer.echo("error: DATABASE_URL is not set (the poller keeps its state in Postgres)", err=True)
        raise typer.Exit(2)
    try:
        poller, close = build(settings)
    except Exception as e:  # broker or database unreachable, bad schedule...: one clear line, no traceback
        typer.echo(f"error: cannot start the poll: {scrub(f'{type(e).__name__}: {e}')}", err=True)
        raise typer.Exit(1) from None
    try:
        try:
            results = poller.poll(job, account=account, wait_lock_s=wait)
        except UnknownAccount as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2) from None
    finally:
        close()
    failed = 0
    for r in results:
        if r.failed:
            failed += 1
            typer.echo(f"{r.job} poll of account {r.account} FAILED: {r.error}", err=True)
        elif r.status == "skipped":
            failed += 1
            typer.echo(
                f"{r.job} poll of account {r.account} DID NOT RUN: another poller kept it locked for {wait:g}s",
                err=True,
            )
        else:
            typer.echo(f"{r.job} poll of account {r.account}: {r.status}, {r.events} records {r.detail}")
    if failed:
        raise typer.Exit(1)


@app.command()
def balance(account: AccountOpt = None, wait: WaitOpt = 60.0) -> None:
    """Poll the balance now (one balance event per account)."""
    _poll("balance", account, wait)


@app.command()
def history(account: AccountOpt = None, wait: WaitOpt = 60.0) -> None:
    """Poll the billing history now (every page; invoice-discovered per Invoice entry)."""
    _poll("history", account, wait)


@app.command()
def resources(account: AccountOpt = None, wait: WaitOpt = 60.0) -> None:
    """Sync the resource inventory now (records, and tombstones for resources gone)."""
    _poll("resources", account, wait)


@app.command("all")
def all_jobs(account: AccountOpt = None, wait: WaitOpt = 60.0) -> None:
    """Balance, history and resources, now."""
    _poll("all", account, wait)
