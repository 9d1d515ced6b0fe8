"""The `cloudbill` command: thin entrypoints only; behaviour lives in services/, sims/ and shared/."""

from __future__ import annotations

import importlib
import json
from enum import StrEnum
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from shared import logging as cblog
from shared.settings import Settings, get_settings

app = typer.Typer(help="cloudbill: cloud billing pipeline on Kafka.", no_args_is_help=True, add_completion=False)
topics_app = typer.Typer(help="Kafka topics of the registry.", no_args_is_help=True)
db_app = typer.Typer(help="Database migrations.", no_args_is_help=True)
app.add_typer(topics_app, name="topics")
app.add_typer(db_app, name="db")

console = Console()


class Service(StrEnum):
    poller = "poller"
    ingester = "ingester"
    matcher = "matcher"
    finance_pusher = "finance-pusher"
    projector = "projector"
    api = "api"


# service name -> (module, function). Each takes (settings) and runs until SIGTERM/SIGINT.
SERVICE_ENTRYPOINTS: dict[Service, tuple[str, str]] = {
    Service.poller: ("services.poller.main", "run"),
    Service.ingester: ("services.ingester.main", "run"),
    Service.matcher: ("services.matcher.main", "run"),
    Service.finance_pusher: ("services.finance_pusher.main", "run"),
    Service.projector: ("services.api.projector", "run"),
    Service.api: ("services.api.main", "run"),
}


def _settings() -> Settings:
    s = get_settings()
    cblog.setup("cloudbill", s.log_format, s.log_level)
    return s


@app.command()
def run(service: Annotated[Service, typer.Argument(help="The service to run until SIGTERM.")]) -> None:
    """Start one service (its own process, its own consumer group)."""
    settings = get_settings()
    cblog.setup(service.value, settings.log_format, settings.log_level)
    module, func = SERVICE_ENTRYPOINTS[service]
    getattr(importlib.import_module(module), func)(settings)


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


def _mount(module: str, attr: str, name: str) -> None:
    """Mount a sub-command group owned by another package."""
    sub = getattr(importlib.import_module(module), attr)
    app.add_typer(sub, name=name)


_mount("sims.cli", "app", "sim")
_mount("services.poller.cli", "app", "poll")
importlib.import_module("services.api.cli").register(app)
importlib.import_module("cloudbill.ops").register(app)


def main() -> None:
    app()
