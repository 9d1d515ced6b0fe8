"""Operations commands: `dev up`, `demo`, `replay`, `status`. Thin: the work is in stack.py,
shared.kafka.admin (rewinding groups, fetch-side lag) and the read models."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

console = Console()


class ReplayStage(StrEnum):
    ingester = "ingester"
    matcher = "matcher"
    finance_pusher = "finance-pusher"
    projector = "projector"


def _parse_when(text: str) -> datetime:
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as e:
        raise typer.BadParameter(f"not an ISO-8601 date/time: {text!r}") from e
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def replay(
    stage: Annotated[ReplayStage, typer.Argument(help="The stage whose consumer group is rewound.")],
    from_beginning: Annotated[bool, typer.Option("--from-beginning", help="Rewind to the first offset.")] = False,
    from_datetime: Annotated[
        str | None, typer.Option("--from-datetime", help="Rewind to the first record at/after this ISO time.")
    ] = None,
) -> None:
    """Rewind a stopped stage so it reprocesses history (see the README's replay recipes)."""
    from cloudbill.cli import _settings
    from shared.kafka.admin import GroupActiveError, rewind_group
    from shared.topics import STAGES

    if from_beginning == (from_datetime is not None):
        raise typer.BadParameter("give exactly one of --from-beginning or --from-datetime")
    settings = _settings()
    st = STAGES[stage.value]
    to_ms = None if from_beginning else int(_parse_when(from_datetime or "").timestamp() * 1000)
    try:
        plan = rewind_group(settings, st.group(settings), st.topics(settings), to_ms=to_ms)
    except GroupActiveError as e:
        console.print(f"[red]refused:[/red] {e}")
        if stage is ReplayStage.matcher:
            console.print(
                "The embedded broker never releases a stopped faust worker's group. To re-match everything there, "
                "start the matcher with MATCHER_GROUP_SUFFIX set to a new value (a fresh group reads from the start)."
            )
        raise typer.Exit(2) from e
    total = 0
    for topic, offsets in plan.items():
        console.print(f"{topic}: " + ", ".join(f"[{p}]→{o}" for p, o in sorted(offsets.items())))
    from shared.kafka.admin import group_lag

    total = sum(p.lag for p in group_lag(settings, st.group(settings), st.topics(settings)))
    console.print(f"[green]{stage.value}[/green] rewound: {total} record(s) to reprocess when it starts.")


def status(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Per stage: consumer lag and dead letters; last poll per account; invoices by status."""
    import json

    from cloudbill.cli import _settings
    from cloudbill.status import collect, render

    report = collect(_settings())
    if as_json:
        typer.echo(json.dumps(report, indent=2, default=str))
    else:
        render(report, console)


def dev_up(
    scenario: Annotated[str, typer.Option(help="Built-in scenario name or a scenario folder.")] = "april-2026",
    do_port: Annotated[int, typer.Option(help="DigitalOcean simulator port.")] = 4020,
    finance_port: Annotated[int, typer.Option(help="Finance simulator port.")] = 4010,
    api_port: Annotated[int, typer.Option(help="HTTP API port.")] = 8000,
    kafka_port: Annotated[int, typer.Option(help="Embedded broker port (0: a free one).")] = 0,
    workdir: Annotated[Path, typer.Option(help="Logs and data.")] = Path(".cloudbill"),
) -> None:
    """Start the whole stack (embedded broker + Postgres, both simulators, six services) until Ctrl-C."""
    from cloudbill.stack import Stack, StackConfig

    cfg = StackConfig(
        scenario=scenario,
        workdir=workdir,
        do_port=do_port,
        finance_port=finance_port,
        api_port=api_port,
        kafka_port=kafka_port,
    )
    with Stack(cfg) as stack:
        _up(stack)
        _print_endpoints(stack)
        _watch(stack)


def demo(
    exit_after: Annotated[bool, typer.Option("--exit", help="Stop after the summary.")] = False,
    scenario: Annotated[str, typer.Option(help="Built-in scenario name or a scenario folder.")] = "april-2026",
    do_port: Annotated[int, typer.Option(help="DigitalOcean simulator port.")] = 4020,
    finance_port: Annotated[int, typer.Option(help="Finance simulator port.")] = 4010,
    api_port: Annotated[int, typer.Option(help="HTTP API port.")] = 8000,
    workdir: Annotated[Path, typer.Option(help="Logs and data.")] = Path(".cloudbill"),
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the pipeline.")] = 300,
) -> None:
    """The whole pipeline on the april-2026 account: poll, ingest, match, push, then a summary."""
    from cloudbill.demo import run_demo
    from cloudbill.stack import Stack, StackConfig

    cfg = StackConfig(scenario=scenario, workdir=workdir, do_port=do_port, finance_port=finance_port, api_port=api_port)
    with Stack(cfg) as stack:
        _up(stack)
        ok = run_demo(stack, console, timeout=timeout)
        _print_endpoints(stack)
        if not ok:
            raise typer.Exit(1)
        if not exit_after:
            _watch(stack)


def _up(stack) -> None:
    with console.status("starting embedded Kafka and PostgreSQL..."):
        stack.start_infra()
        stack.prepare()
    console.print(f"broker [bold]{stack.bootstrap}[/bold], database ready")
    with console.status("starting simulators and services..."):
        if stack.cfg.start_sims:
            stack.start_sims()
        stack.start_services()
    console.print(f"started: {', '.join(stack.children)} (logs in {stack.logdir})")


def _print_endpoints(stack) -> None:
    from shared.auth import mint

    token = mint(
        stack.cfg.api_secret,
        algorithm="HS256",
        ttl_s=12 * 3600,
        subject="demo-admin",
        claims={"roles": ["platform_admin"]},
    )
    api = f"http://127.0.0.1:{stack.cfg.api_port}"
    console.print(f"\nAPI  {api}/docs   (finance simulator http://127.0.0.1:{stack.cfg.finance_port}/api/v1/invoices)")
    console.print("token (12 h, platform_admin):")
    typer.echo(token)  # unwrapped, so it can be copied
    console.print(f'try: curl -H "Authorization: Bearer $TOKEN" {api}/api/v1/billing/invoices\n')


def _watch(stack) -> None:
    console.print("running; Ctrl-C stops everything.")
    reported: set[str] = set()
    try:
        while True:
            for event in stack.keep_alive():
                console.print(f"[yellow]{event}[/yellow]")
            for child in stack.dead():
                if child.name not in reported:
                    reported.add(child.name)
                    console.print(
                        f"[red]{child.name} exited ({child.proc.returncode}) and is not restarted"
                        f"[/red]; last log lines:\n{child.tail()}"
                    )
            time.sleep(1)
    except KeyboardInterrupt:
        console.print("stopping...")


def register(app: typer.Typer) -> None:
    dev = typer.Typer(help="Development stack.", no_args_is_help=True)
    dev.command("up")(dev_up)
    app.add_typer(dev, name="dev")
    app.command()(demo)
    app.command()(replay)
    app.command()(status)
