"""Test helpers shared by integration and e2e tests (reading topics to their end, waiting, dumping read models)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

import psycopg
from psycopg.rows import tuple_row

from shared.events import Reconciliation
from shared.kafka.admin import read_topic
from shared.kafka.records import Record
from shared.reconciliation import Expected, reconcile
from shared.settings import Settings

T = TypeVar("T")


def read_all(settings: Settings, topic: str, *, timeout: float = 20.0, committed_only: bool = True) -> list[Record]:
    """Every record of `topic` from offset 0 to the end (detected with partition EOF, not latest offsets)."""
    return read_topic(settings, topic, timeout=timeout, committed_only=committed_only)


def wait_until(check: Callable[[], T], *, timeout: float = 30.0, interval: float = 0.2, what: str = "condition") -> T:
    """Poll `check` until it returns something truthy; its last value is returned."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise TimeoutError(f"{what} not reached in {timeout}s (last: {last!r})")


def settings_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment a child process needs to see the same Settings (secrets included)."""
    import json
    import os

    from pydantic import SecretStr

    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "DATABASE_", "DIGITALOCEAN_", "SKYAI_"))}
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        if value is None:
            continue
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        elif name == "digitalocean_accounts":
            value = ",".join(f"{a.name}={a.token.get_secret_value()}" for a in value)
        elif isinstance(value, list):  # comma-separated lists (roles, tax names, thresholds)
            value = ",".join(str(x) for x in value)
        elif isinstance(value, dict):  # JSON objects (budgets)
            value = json.dumps(value)
        env[name.upper()] = str(value)
    env["LOG_FORMAT"] = "console"
    env.update(extra)
    return env


class ServiceProcess:
    """`cloudbill run <service>` as a real OS process, for kill/restart tests and e2e."""

    def __init__(self, service: str, settings: Settings, log_dir, **extra_env: str) -> None:
        self.service = service
        self.env = settings_env(settings, **extra_env)
        self.log_path = log_dir / f"{service}.log"
        self.proc = None

    def start(self) -> ServiceProcess:
        import subprocess
        import sys

        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cloudbill", "run", self.service], env=self.env, stdout=log, stderr=subprocess.STDOUT
        )
        return self

    def kill(self) -> None:
        """SIGKILL: no chance to commit, flush or close."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM and wait; SIGKILL after `timeout`."""
        import subprocess

        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def proven(gross_minor: int, tax_minor: int = 0, currency: str = "USD") -> Reconciliation:
    """The reconciliation of a revision whose billing-history and invoice-list amounts both equal its gross."""
    return reconcile(
        gross_minor=gross_minor,
        tax_minor=tax_minor,
        csv_currency=currency,
        expected=Expected(currency=currency, history_minor=gross_minor, listed_minor=gross_minor),
    )


def dump(conn: psycopg.Connection) -> dict[str, list[Any]]:
    """Every read-model table, every row, in a total order: equal dumps mean identical read models."""
    cur = conn.cursor(row_factory=tuple_row)
    tables = [
        r[0]
        for r in cur.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'readmodel'"
            " AND table_name <> 'schema_migrations' ORDER BY table_name"
        ).fetchall()
    ]
    out: dict[str, list[Any]] = {}
    for t in tables:
        cur.execute(f"SELECT * FROM readmodel.{t} LIMIT 0")
        ncols = len(cur.description or [])
        order = ", ".join(str(i + 1) for i in range(ncols))
        out[t] = cur.execute(f"SELECT * FROM readmodel.{t} ORDER BY {order}").fetchall()
    return out
