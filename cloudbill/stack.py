"""The whole pipeline on one machine: embedded broker + PostgreSQL, both simulators, six services.

Every service and simulator is its own OS process (`cloudbill run <svc>`, `cloudbill sim ...`), as in
production; this module only starts, watches and stops them. Used by `cloudbill dev up`, `cloudbill
demo` and the end-to-end tests.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from shared.devinfra import EmbeddedKafka, EmbeddedPostgres, free_port, wait_for_port
from shared.settings import Settings

log = logging.getLogger(__name__)

SERVICES = ("projector", "ingester", "matcher", "finance-pusher", "api", "poller")
DEV_DO_TOKEN = "dop_v1_devsimulatortoken"
# Like compose's restart policy, with a budget: a service that keeps dying is left down and reported.
RESTARTS_PER_WINDOW = 5
RESTART_WINDOW_S = 300.0


@dataclass
class StackConfig:
    scenario: str = "april-2026"
    workdir: Path = field(default_factory=lambda: Path(".cloudbill"))
    kafka_bootstrap: str = ""  # empty: start the embedded broker
    database_url: str = ""  # empty: start the embedded PostgreSQL
    kafka_port: int = 0
    do_port: int = 4020
    finance_port: int = 4010
    api_port: int = 8000
    metrics_base_port: int = 0  # >0: worker i exposes /metrics on base+i
    topic_prefix: str = ""
    finance_secret: str = field(default_factory=lambda: secrets.token_hex(32))
    api_secret: str = field(default_factory=lambda: secrets.token_hex(32))
    with_finance: bool = True
    start_sims: bool = True  # False: use simulators (or real peers) already listening on the ports
    extra_env: dict[str, str] = field(default_factory=dict)


@dataclass
class Child:
    name: str
    argv: list[str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    env: dict[str, str] | None = None
    restarts: list[float] = field(default_factory=list)  # monotonic times

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def tail(self, lines: int = 30) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


class Stack:
    def __init__(self, cfg: StackConfig) -> None:
        self.cfg = cfg
        self.workdir = cfg.workdir.resolve()
        self.logdir = self.workdir / "logs"
        self.kafka: EmbeddedKafka | None = None
        self.pg: EmbeddedPostgres | None = None
        self.bootstrap = cfg.kafka_bootstrap
        self.database_url = cfg.database_url
        self.finance_database_url = ""
        self.children: dict[str, Child] = {}

    # ---------------------------------------------------------------------------------------- infra
    def start_infra(self) -> None:
        self.logdir.mkdir(parents=True, exist_ok=True)
        if not self.bootstrap:
            self.kafka = EmbeddedKafka(port=self.cfg.kafka_port or free_port(), workdir=self.workdir / "kafka")
            self.kafka.start()
            self.bootstrap = self.kafka.bootstrap
        if not self.database_url:
            pgdir = self.workdir / "postgres"
            if pgdir.exists():  # a previous run's data: start clean, like the memory-only broker
                import shutil

                shutil.rmtree(pgdir, ignore_errors=True)
            self.pg = EmbeddedPostgres(workdir=pgdir)
            self.pg.start()
            self.database_url = self.pg.create_database("cloudbill")
            self.finance_database_url = self.pg.create_database("finance")
        else:
            self.finance_database_url = self.database_url

    def env(self) -> dict[str, str]:
        """The environment every child gets (the README's configuration names)."""
        base = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("KAFKA_", "DATABASE_", "DIGITALOCEAN_", "SKYAI_", "API_"))
        }
        env = base | {
            "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
            "KAFKA_TOPIC_PREFIX": self.cfg.topic_prefix,
            "KAFKA_PARTITIONS": "3",
            "KAFKA_SESSION_TIMEOUT_MS": "6000",
            "KAFKA_HEARTBEAT_INTERVAL_MS": "1000",
            "DATABASE_URL": self.database_url,
            "DIGITALOCEAN_TOKEN": DEV_DO_TOKEN,
            "DIGITALOCEAN_ACCOUNT_NAME": "demo",
            "DIGITALOCEAN_API_URL": f"http://127.0.0.1:{self.cfg.do_port}",
            "SKYAI_FINANCE_URL": f"http://127.0.0.1:{self.cfg.finance_port}",
            "API_JWT_SECRET": self.cfg.api_secret,
            "API_PORT": str(self.cfg.api_port),
            "LOG_FORMAT": "console",
            "PYTHONUNBUFFERED": "1",
        }
        if self.cfg.with_finance:
            env["SKYAI_FINANCE_JWT_SECRET"] = self.cfg.finance_secret
        return env | self.cfg.extra_env

    def prepare(self) -> None:
        """Topics and migrations, before any service starts (services do it too, idempotently)."""
        self._cli(["topics", "create"])
        self._cli(["db", "migrate"])

    def _cli(self, args: list[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
        res = subprocess.run(
            [sys.executable, "-m", "cloudbill", *args], env=self.env(), capture_output=True, text=True, timeout=timeout
        )
        if res.returncode != 0:
            raise RuntimeError(f"cloudbill {' '.join(args)} failed ({res.returncode}):\n{res.stderr[-3000:]}")
        return res

    # ------------------------------------------------------------------------------------ processes
    def spawn(self, name: str, args: list[str], env: dict[str, str] | None = None) -> Child:
        child = Child(name, [sys.executable, "-m", "cloudbill", *args], self.logdir / f"{name}.log", env=env)
        self._popen(child)
        self.children[name] = child
        return child

    def _popen(self, child: Child) -> None:
        logf = open(child.log_path, "ab")  # noqa: SIM115 - owned by the child
        child.proc = subprocess.Popen(
            child.argv, env=child.env or self.env(), stdout=logf, stderr=subprocess.STDOUT, start_new_session=True
        )

    def keep_alive(self, now: float | None = None) -> list[str]:
        """Restart services that exited (the matcher exits 70 on purpose to be restarted), within a budget.

        Returns what happened, for the caller to show. A service over budget stays dead: `dead()` lists it.
        """
        now = time.monotonic() if now is None else now
        events = []
        for child in self.children.values():
            if child.name not in SERVICES or child.alive() or child.proc is None:
                continue
            code = child.proc.returncode
            child.restarts = [t for t in child.restarts if now - t < RESTART_WINDOW_S]
            if len(child.restarts) >= RESTARTS_PER_WINDOW:
                continue
            child.restarts.append(now)
            with child.log_path.open("a") as f:
                f.write(f"--- cloudbill: {child.name} exited ({code}); restarting ---\n")
            self._popen(child)
            n = len(child.restarts)
            events.append(
                f"{child.name} exited ({code}); restarted ({n}/{RESTARTS_PER_WINDOW} in {RESTART_WINDOW_S:.0f}s)"
            )
        return events

    def start_sims(self) -> None:
        self.spawn(
            "sim-do",
            ["sim", "do", "--scenario", self.cfg.scenario, "--port", str(self.cfg.do_port), "--token", DEV_DO_TOKEN],
        )
        fin_env = self.env() | {"SKYAI_FINANCE_JWT_SECRET": self.cfg.finance_secret}
        self.spawn(
            "sim-finance",
            ["sim", "finance", "--port", str(self.cfg.finance_port), "--database-url", self.finance_database_url],
            env=fin_env,
        )
        self._wait_port("sim-do", self.cfg.do_port)
        self._wait_port("sim-finance", self.cfg.finance_port)

    def start_services(self, services: tuple[str, ...] = SERVICES) -> None:
        for i, svc in enumerate(services):
            env = self.env()
            if self.cfg.metrics_base_port and svc != "api":
                env["METRICS_PORT"] = str(self.cfg.metrics_base_port + i)
            self.spawn(svc, ["run", svc], env=env)
        if "api" in services:
            self._wait_port("api", self.cfg.api_port)

    def _wait_port(self, name: str, port: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            child = self.children[name]
            if not child.alive():
                raise RuntimeError(f"{name} exited ({child.proc.returncode if child.proc else '?'}):\n{child.tail()}")
            if wait_for_port("127.0.0.1", port, 0.5):
                return
        raise RuntimeError(f"{name} did not listen on port {port} within {timeout}s:\n{self.children[name].tail()}")

    def dead(self) -> list[Child]:
        return [c for c in self.children.values() if not c.alive()]

    def poll_now(self, what: str = "all", inventory_timeout: float = 90.0) -> str:
        """One poll now. `all` syncs the inventory first and waits until the matcher has read it, so the
        invoices the history poll discovers are matched against the whole inventory (see inventory_read)."""
        if what != "all":
            return self._cli(["poll", what]).stdout
        out = self._cli(["poll", "resources"]).stdout
        self.wait_inventory_read(inventory_timeout)
        return out + self._cli(["poll", "balance"]).stdout + self._cli(["poll", "history"]).stdout

    def settings(self) -> Settings:
        return Settings(
            _env_file=None,
            kafka_bootstrap_servers=self.bootstrap,
            kafka_topic_prefix=self.cfg.topic_prefix,
            database_url=self.database_url,
        )

    def wait_inventory_read(self, timeout: float) -> None:
        from services.matcher.app import inventory_read

        settings = self.settings()
        deadline = time.monotonic() + timeout
        while not inventory_read(settings):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the matcher did not read the inventory within {timeout}s")
            self.keep_alive()
            if self.children.get("matcher") is not None and not self.children["matcher"].alive():
                raise RuntimeError(
                    f"the matcher exited and was restarted too often:\n{self.children['matcher'].tail()}"
                )
            time.sleep(0.5)

    def up(self) -> Stack:
        self.start_infra()
        self.prepare()
        if self.cfg.start_sims:
            self.start_sims()
        self.start_services()
        return self

    def stop(self, timeout: float = 20.0) -> None:
        for child in reversed(list(self.children.values())):
            if child.alive() and child.proc is not None:
                with contextlib.suppress(ProcessLookupError):
                    child.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for child in self.children.values():
            if child.proc is None:
                continue
            try:
                child.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in %ss: killed", child.name, timeout)
                child.proc.kill()
                child.proc.wait(5)
        if self.kafka:
            self.kafka.stop()
        if self.pg:
            self.pg.stop()

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
