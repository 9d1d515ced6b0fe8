"""Operations commands: `dev up`, `demo`, `replay`, `status`. Thin: the work is in stack.py,
shared.kafka.admin (rewinding groups, fetch-side lag) and the read models."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from cloudbill.context import settings as _settings

if TYPE_CHECKING:
    from cloudbill.devenv import DevEnvFile
    from cloudbill.stack import Stack, StackConfig

console = Console()


class KafkaChoice(StrEnum):
    embedded = "embedded"
    apache = "apache"


KAFKA_HELP = (
    "Broker to start: `embedded` (no Java needed) or `apache` (Apache Kafka from its Maven Central jars: "
    "Java 17+ and Maven, jars cached in ~/.cache/cloudbill)."
)


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

    from cloudbill.status import collect, render

    report = collect(_settings())
    if as_json:
        typer.echo(json.dumps(report, indent=2, default=str))
    else:
        render(report, console)


ScenarioOpt = Annotated[
    str,
    typer.Option(envvar="CLOUDBILL_SCENARIO", help="Built-in scenario name (april-2026) or a scenario folder."),
]
DoPortOpt = Annotated[int, typer.Option(envvar="CLOUDBILL_DEV_DO_PORT", help="DigitalOcean simulator port.")]
FinancePortOpt = Annotated[int, typer.Option(envvar="CLOUDBILL_DEV_FINANCE_PORT", help="Finance simulator port.")]
ApiPortOpt = Annotated[int, typer.Option(envvar="API_PORT", help="HTTP API port.")]
KafkaPortOpt = Annotated[int, typer.Option(envvar="CLOUDBILL_DEV_KAFKA_PORT", help="Broker port (0: a free one).")]
KafkaOpt = Annotated[KafkaChoice, typer.Option(envvar="CLOUDBILL_KAFKA", help=KAFKA_HELP)]
WorkdirOpt = Annotated[
    Path, typer.Option(envvar="CLOUDBILL_WORKDIR", help="Logs, data and dev.env (the settings for other shells).")
]


def dev_up(
    scenario: ScenarioOpt = "april-2026",
    do_port: DoPortOpt = 4020,
    finance_port: FinancePortOpt = 4010,
    api_port: ApiPortOpt = 8000,
    kafka_port: KafkaPortOpt = 0,
    kafka: KafkaOpt = KafkaChoice.embedded,
    workdir: WorkdirOpt = Path(".cloudbill"),
) -> None:
    """Start the whole stack (a broker + Postgres, both simulators, seven services) until Ctrl-C or SIGTERM.

    The poller catches up at start (every job runs once, then follows its schedule), so the API shows the
    invoices within a minute or two. Other `cloudbill` commands in this directory use the stack's settings.
    Secrets come from API_JWT_SECRET, SKYAI_FINANCE_JWT_SECRET and DIGITALOCEAN_TOKEN when set (else random).
    """
    from cloudbill.stack import StackConfig

    cfg = StackConfig.from_environment(
        scenario=scenario,
        workdir=workdir,
        do_port=do_port,
        finance_port=finance_port,
        api_port=api_port,
        kafka_port=kafka_port,
        kafka_flavor=kafka.value,
        poller_catch_up=True,
    )

    def body(stack: Stack) -> None:
        _print_endpoints(stack)
        _watch(stack)

    _run_stack(cfg, body)


def demo(
    exit_after: Annotated[bool, typer.Option("--exit", help="Stop after the summary.")] = False,
    scenario: ScenarioOpt = "april-2026",
    do_port: DoPortOpt = 4020,
    finance_port: FinancePortOpt = 4010,
    api_port: ApiPortOpt = 8000,
    workdir: WorkdirOpt = Path(".cloudbill"),
    timeout: Annotated[float, typer.Option(help="Give up when no invoice has moved for this many seconds.")] = 300,
    kafka: KafkaOpt = KafkaChoice.embedded,
) -> None:
    """The whole pipeline on a scenario: poll once, then wait until every invoice is pushed, held or
    dead-lettered, and print a summary.

    Secrets come from API_JWT_SECRET, SKYAI_FINANCE_JWT_SECRET and DIGITALOCEAN_TOKEN when set (else random).
    """
    from cloudbill.demo import run_demo
    from cloudbill.stack import StackConfig

    cfg = StackConfig.from_environment(
        scenario=scenario,
        workdir=workdir,
        do_port=do_port,
        finance_port=finance_port,
        api_port=api_port,
        kafka_flavor=kafka.value,
    )

    def body(stack: Stack) -> None:
        ok = run_demo(stack, console, idle_timeout=timeout)
        _print_endpoints(stack)
        if not ok:
            raise typer.Exit(1)
        if not exit_after:
            _watch(stack)

    _run_stack(cfg, body)


def _run_stack(cfg: StackConfig, body: Callable[[Stack], None]) -> None:
    """Check, start, write dev.env, run `body`, and stop everything on every way out (see cloudbill/stack.py)."""
    from cloudbill.devenv import DevEnvFile
    from cloudbill.stack import Stack, Terminated

    cfg.check()
    interrupted: KeyboardInterrupt | None = None
    with DevEnvFile(cfg.workdir / "dev.env") as env_file, Stack(cfg) as stack:
        try:
            _up(stack, env_file)
            body(stack)
        except KeyboardInterrupt as e:
            interrupted = e
            why = f"{e.args[0]} received" if isinstance(e, Terminated) and e.args else "interrupted"
            console.print(f"{why}: stopping everything...")
    if interrupted is not None:
        console.print("stopped.")
        raise typer.Exit(143 if isinstance(interrupted, Terminated) else 130)


def _up(stack: Stack, env_file: DevEnvFile) -> None:
    what = (
        "Apache Kafka (first run: Maven resolves its jars)"
        if stack.cfg.kafka_flavor == "apache"
        else "the embedded broker"
    )
    with console.status(f"starting {what} and PostgreSQL..."):
        stack.start_infra()
        env_file.write(stack.connection_env())
        stack.prepare()
    broker = stack.kafka.description if stack.kafka else stack.cfg.kafka_flavor
    console.print(f"broker [bold]{stack.bootstrap}[/bold] ({broker}), database ready")
    with console.status("starting simulators and services..."):
        if stack.cfg.start_sims:
            stack.start_sims()
        stack.start_services()
    console.print(f"started: {', '.join(stack.children)} (logs in {stack.logdir})")
    other_shells = "" if env_file.path == Path(".cloudbill") / "dev.env" else f"CLOUDBILL_DEV_ENV={env_file.path} "
    console.print(
        f"settings for other shells: {env_file.path} (mode 0600); in this directory `{other_shells}cloudbill "
        "token`, `status`, `poll`, `config`... use them"
    )


def _print_endpoints(stack: Stack) -> None:
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
    console.print("token (12 h, platform_admin; or run `cloudbill token` in another shell here):")
    typer.echo(token)  # unwrapped, so it can be copied
    console.print(f'try: curl -H "Authorization: Bearer $TOKEN" {api}/api/v1/billing/invoices\n')


def _watch(stack: Stack) -> None:
    console.print("running; Ctrl-C (or SIGTERM) stops everything.")
    reported: set[str] = set()
    while True:
        for event in stack.keep_alive():
            console.print(f"[yellow]{event}[/yellow]")
        for child in stack.dead():
            if child.name not in reported:
                reported.add(child.name)
                code = child.proc.returncode if child.proc else "?"
                console.print(
                    f"[red]{child.name} exited ({code}) and is not restarted[/red]; last log lines:\n{child.tail()}"
                )
        time.sleep(1)


def register(app: typer.Typer) -> None:
    dev = typer.Typer(help="Development stack.", no_args_is_help=True)
    dev.command("up")(dev_up)
    app.add_typer(dev, name="dev")
    app.command()(demo)
    app.command()(replay)
    app.command()(status)
