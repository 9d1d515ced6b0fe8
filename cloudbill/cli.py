"""The `cloudbill` command: thin entrypoints only; behaviour lives in services/, sims/ and shared/.

Two things hold for every command: a running dev stack's settings are used when one runs beside it
(cloudbill/devenv.py, said in one line on stderr), and a user error (invalid configuration, a bad scenario
folder, a port in use...) is one line naming what is wrong and where, not a traceback. Anything else is a
bug: its traceback is printed, scrubbed of secrets like every log line.
"""

from __future__ import annotations

import importlib
import json
import logging
import sys
import traceback
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

import services.api.cli
import services.poller.cli
import sims.cli
from cloudbill import chaos, dlq, finops, invoices, ops
from cloudbill.context import settings as _settings
from cloudbill.services import BY_NAME, Service
from shared import logging as cblog
from shared.settings import describe_validation_error, get_settings, use_env_files

# No rich tracebacks: they print local variables (settings, tokens) and boxes where one line is wanted.
app = typer.Typer(
    help="cloudbill: cloud billing pipeline on Kafka.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
topics_app = typer.Typer(help="Kafka topics of the registry.", no_args_is_help=True)
db_app = typer.Typer(help="Database migrations.", no_args_is_help=True)
app.add_typer(topics_app, name="topics")
app.add_typer(db_app, name="db")

console = Console()

# Commands that start a dev stack themselves: they must not read a running one's settings.
_STACK_COMMANDS = {"dev", "demo", "chaos"}


@app.callback()
def _use_running_dev_stack(ctx: typer.Context) -> None:
    """cloudbill: cloud billing pipeline on Kafka."""
    if ctx.invoked_subcommand in _STACK_COMMANDS:
        return
    from cloudbill import devenv

    stack = devenv.running(devenv.location())
    use_env_files([stack.path] if stack is not None else [])
    if stack is not None:
        typer.echo(stack.notice(), err=True)


@app.command()
def run(service: Annotated[Service, typer.Argument(help="The service to run until SIGTERM.")]) -> None:
    """Start one service (its own process, its own consumer group)."""
    settings = get_settings()
    cblog.setup(service.value, settings.log_format, settings.log_level)
    # Imported here, not at the top: `cloudbill --help` should not pay for every service's dependencies.
    importlib.import_module(BY_NAME[service.value].module).run(settings)


@app.command()
def config(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Print the effective configuration, secrets masked."""
    values = _settings().masked()
    if as_json:
        typer.echo(json.dumps(values, indent=2, default=str))
        return
    table = Table("variable", "value")
    for k, v in values.items():
        table.add_row(k, json.dumps(v, default=str) if not isinstance(v, str) else v)
    console.print(table)


@topics_app.command("create")
def topics_create() -> None:
    """Create every topic of the registry (idempotent)."""
    from shared.kafka import create_topics

    for name, state in sorted(create_topics(_settings()).items()):
        typer.echo(f"{state:8} {name}")


@topics_app.command("list")
def topics_list() -> None:
    """The registry: name, partitions, cleanup policy, key."""
    from shared.topics import ALL

    s = _settings()
    table = Table("topic", "key", "cleanup", "dead-letter topic")
    for t in ALL:
        table.add_row(
            t.name(s.kafka_topic_prefix),
            t.key,
            "compact" if t.compacted else "delete",
            t.dlq(s.kafka_topic_prefix) if t.has_dlq else "-",
        )
    console.print(table)


@db_app.command("migrate")
def db_migrate() -> None:
    """Apply every schema's missing migrations (safe to run twice)."""
    from shared.db import migrate

    for schema, applied in migrate(_settings()).items():
        typer.echo(f"{schema}: {', '.join(applied) if applied else 'up to date'}")


# Sub-command groups owned by other modules, mounted in this order (the order of `cloudbill --help`).
app.add_typer(sims.cli.app, name="sim")
app.add_typer(services.poller.cli.app, name="poll")
app.add_typer(invoices.app, name="invoices")
services.api.cli.register(app)
ops.register(app)
dlq.register(app)
finops.register(app)
chaos.register(app)


def user_error(e: BaseException) -> str | None:
    """The one-line message for an error the user can fix (None: a bug, which deserves its traceback)."""
    from shared.devinfra import InfraError
    from shared.settings import ConfigError
    from sims.scenario import ScenarioError

    if isinstance(e, ValidationError) and e.title in ("Settings", "DigitalOceanAccount"):
        return describe_validation_error(e)
    if isinstance(e, ConfigError | ScenarioError | InfraError):
        return str(e)
    return None


def main() -> None:
    try:
        app()
    except Exception as e:
        # A service has set up logging (JSON in production): its last words go through it, one record.
        logged = bool(logging.getLogger().handlers)
        message = user_error(e)
        if message is not None:
            if logged:
                logging.getLogger("cloudbill").error("%s", message)
            else:
                typer.echo(f"error: {cblog.scrub(message)}", err=True)
            sys.exit(2)
        if logged:
            logging.getLogger("cloudbill").critical("stopped by an unexpected error", exc_info=e)
        else:
            typer.echo(cblog.scrub("".join(traceback.format_exception(e))), err=True)
        sys.exit(1)
