"""The whole pipeline on one machine: a broker (embedded or Apache Kafka) + PostgreSQL, both simulators, seven services.

Every service and simulator is its own OS process (`cloudbill run <svc>`, `cloudbill sim ...`), as in
production; this module only starts, watches and stops them. Used by `cloudbill dev up`, `cloudbill
demo`, the benchmark and the end-to-end tests.

Every process it starts ends with it, on every exit path: a normal return or an exception stops them in
order (`stop()`); inside `with Stack(...)`, SIGTERM and SIGHUP do what Ctrl-C does (a graceful stop, a second
signal hurries it); and a supervisor killed outright (SIGKILL) leaves the job to its lifeline, which stops the
services and then the broker and PostgreSQL (shared/lifeline.py). So anything built on `Stack` (the bench,
a chaos command) gets this for free.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from cloudbill.services import START_ORDER
from shared import lifeline
from shared.devinfra import (
    ApacheKafka,
    EmbeddedKafka,
    EmbeddedPostgres,
    KafkaFlavor,
    free_port,
    port_free,
    wait_for_port,
)
from shared.settings import ConfigError, Settings

log = logging.getLogger(__name__)

SERVICES = START_ORDER  # every service of the registry, in the order the stack starts them
DEV_DO_TOKEN = "dop_v1_devsimulatortoken"
# Like compose's restart policy, with a budget: a service that keeps dying is left down and reported.
RESTARTS_PER_WINDOW = 5
RESTART_WINDOW_S = 300.0
STOP_TIMEOUT_S = 20.0


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP reached the supervisor: stop everything as Ctrl-C would."""


@dataclass
class StackConfig:
    scenario: str = "april-2026"
    workdir: Path = field(default_factory=lambda: Path(".cloudbill"))
    kafka_bootstrap: str = ""  # empty: start a broker of `kafka_flavor`
    kafka_flavor: KafkaFlavor = "embedded"  # the broker started, or the flavour of the one given
    database_url: str = ""  # empty: start the embedded PostgreSQL
    database_password: str = ""  # the embedded PostgreSQL: services log in with this password (empty: trust)
    finance_database_url: str = ""  # the finance simulator's database; empty: DATABASE_URL's (or its own, embedded)
    kafka_port: int = 0
    do_port: int = 4020
    finance_port: int = 4010
    api_port: int = 8000
    metrics_base_port: int = 0  # >0: worker i exposes /metrics on base+i
    topic_prefix: str = ""
    finance_secret: str = field(default_factory=lambda: secrets.token_hex(32))
    api_secret: str = field(default_factory=lambda: secrets.token_hex(32))
    do_token: str = DEV_DO_TOKEN  # what the DigitalOcean simulator accepts and the poller sends
    with_finance: bool = True
    start_sims: bool = True  # False: use simulators (or real peers) already listening on the ports
    # The poller's catch-up at start (its production default). Off for callers that poll themselves (the demo,
    # tests, the bench) so they decide when billing data arrives.
    poller_catch_up: bool = False
    extra_env: dict[str, str] = field(default_factory=dict)
    # Restarts of one service allowed per RESTART_WINDOW_S before it is left down (the chaos run kills on purpose).
    restarts_per_window: int = RESTARTS_PER_WINDOW

    @classmethod
    def from_environment(cls, env: dict[str, str] | None = None, **options: Any) -> StackConfig:
        """Secrets from the environment when given (API_JWT_SECRET, SKYAI_FINANCE_JWT_SECRET,
        DIGITALOCEAN_TOKEN), random otherwise; a random database password. `options`: the rest."""
        env = dict(os.environ if env is None else env)
        given: dict[str, Any] = {
            "api_secret": env.get("API_JWT_SECRET", ""),
            "finance_secret": env.get("SKYAI_FINANCE_JWT_SECRET", ""),
            "do_token": env.get("DIGITALOCEAN_TOKEN", ""),
        }
        return cls(**{k: v for k, v in given.items() if v}, database_password=secrets.token_urlsafe(24), **options)

    def check(self) -> None:
        """What can be known wrong before starting anything, in one line each (ConfigError)."""
        from shared.auth import check_hmac_secret
        from sims.scenario import ScenarioError, load_scenario

        check_hmac_secret(self.api_secret, "API_JWT_SECRET")
        if self.start_sims:
            try:
                load_scenario(self.scenario)
            except ScenarioError as e:
                raise ConfigError(f"bad --scenario: {e}") from None
        ports = [("API", self.api_port, "--api-port or API_PORT")]
        if self.start_sims:
            ports += [
                ("DigitalOcean simulator", self.do_port, "--do-port"),
                ("finance simulator", self.finance_port, "--finance-port"),
            ]
        if self.kafka_port and not self.kafka_bootstrap:
            ports.append(("broker", self.kafka_port, "--kafka-port"))
        for what, port, option in ports:
            if not port_free(port):
                raise ConfigError(f"port {port} ({what}) is already in use on 127.0.0.1: choose another with {option}")


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
        self.kafka: ApacheKafka | EmbeddedKafka | None = None
        self.pg: EmbeddedPostgres | None = None
        self.bootstrap = cfg.kafka_bootstrap
        self.database_url = cfg.database_url
        self.finance_database_url = ""
        self.children: dict[str, Child] = {}
        self._previous_handlers: dict[int, Any] = {}
        self._hurry = False

    # ---------------------------------------------------------------------------------------- infra
    def start_infra(self) -> None:
        self.logdir.mkdir(parents=True, exist_ok=True)
        if not self.bootstrap:
            port = self.cfg.kafka_port or free_port()
            if self.cfg.kafka_flavor == "apache":
                import shutil

                shutil.rmtree(self.workdir / "apache-kafka", ignore_errors=True)  # start clean, like the memory broker
                self.kafka = ApacheKafka(port=port, workdir=self.workdir / "apache-kafka")
            else:
                self.kafka = EmbeddedKafka(port=port, workdir=self.workdir / "kafka")
            self.kafka.start()
            self.bootstrap = self.kafka.bootstrap
        if not self.database_url:
            pgdir = self.workdir / "postgres"
            if pgdir.exists():  # a previous run's data: start clean, like the memory-only broker
                import shutil

                shutil.rmtree(pgdir, ignore_errors=True)
            self.pg = EmbeddedPostgres(workdir=pgdir, password=self.cfg.database_password)
            self.pg.start()
            self.database_url = self.pg.create_database("cloudbill")
            self.finance_database_url = self.pg.create_database("finance")
        else:
            self.finance_database_url = self.cfg.finance_database_url or self.database_url

    def env(self) -> dict[str, str]:
        """The environment every child gets (the README's configuration names)."""
        base = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("KAFKA_", "DATABASE_", "DIGITALOCEAN_", "SKYAI_", "API_"))
        }
        env = base | {
            "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
            "KAFKA_BROKER_FLAVOR": self.cfg.kafka_flavor,
            "KAFKA_TOPIC_PREFIX": self.cfg.topic_prefix,
            "KAFKA_PARTITIONS": "3",
            "KAFKA_SESSION_TIMEOUT_MS": "6000",
            "KAFKA_HEARTBEAT_INTERVAL_MS": "1000",
            "DATABASE_URL": self.database_url,
            "DIGITALOCEAN_TOKEN": self.cfg.do_token,
            "DIGITALOCEAN_ACCOUNT_NAME": "demo",
            "DIGITALOCEAN_API_URL": f"http://127.0.0.1:{self.cfg.do_port}",
            "SKYAI_FINANCE_URL": f"http://127.0.0.1:{self.cfg.finance_port}",
            "API_JWT_SECRET": self.cfg.api_secret,
            "API_PORT": str(self.cfg.api_port),
            "POLL_CATCH_UP": "true" if self.cfg.poller_catch_up else "false",
            "LOG_FORMAT": "console",
            "PYTHONUNBUFFERED": "1",
            "CLOUDBILL_DEV_ENV": "off",  # children get every setting here, never from a dev.env file
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
        if child.proc is not None:
            lifeline.forget(child.proc.pid)
        with open(child.log_path, "ab") as logf:
            # Its own session: a terminal's Ctrl-C reaches the supervisor only, which stops children in order.
            child.proc = subprocess.Popen(
                child.argv, env=child.env or self.env(), stdout=logf, stderr=subprocess.STDOUT, start_new_session=True
            )
        lifeline.watch(child.proc.pid, tier=lifeline.TIER_SERVICE, grace_s=STOP_TIMEOUT_S)

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
            if len(child.restarts) >= self.cfg.restarts_per_window:
                continue
            child.restarts.append(now)
            with child.log_path.open("a") as f:
                f.write(f"--- cloudbill: {child.name} exited ({code}); restarting ---\n")
            self._popen(child)
            n = len(child.restarts)
            events.append(
                f"{child.name} exited ({code}); restarted ({n}/{self.cfg.restarts_per_window} in {RESTART_WINDOW_S:.0f}s)"
            )
        return events

    def start_sims(self) -> None:
        # The token reaches the simulator through its environment, never its command line (visible to `ps`).
        self.spawn(
            "sim-do",
            ["sim", "do", "--scenario", self.cfg.scenario, "--port", str(self.cfg.do_port)],
            env=self.env() | {"SIM_DO_TOKENS": self.cfg.do_token},
        )
        fin_env = self.env() | {
            "SKYAI_FINANCE_JWT_SECRET": self.cfg.finance_secret,
            "DATABASE_URL": self.finance_database_url,  # its password stays out of the command line
        }
        self.spawn("sim-finance", ["sim", "finance", "--port", str(self.cfg.finance_port)], env=fin_env)
        self._wait_port("sim-do", self.cfg.do_port)
        self._wait_port("sim-finance", self.cfg.finance_port)

    def start_services(self, services: tuple[str, ...] = SERVICES) -> None:
        for svc in services:
            env = self.env()
            if self.cfg.metrics_base_port and svc != "api":  # by the service's place, whatever is started when
                env["METRICS_PORT"] = str(self.cfg.metrics_base_port + SERVICES.index(svc))
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
            kafka_broker_flavor=self.cfg.kafka_flavor,
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

    def connection_env(self) -> dict[str, str]:
        """The settings another shell needs to talk to this stack (written to `<workdir>/dev.env`)."""
        fields = {name.upper() for name in Settings.model_fields}
        return {k: v for k, v in self.env().items() if k in fields and k != "POLL_CATCH_UP"}

    def up(self) -> Stack:
        self.start_infra()
        self.prepare()
        if self.cfg.start_sims:
            self.start_sims()
        self.start_services()
        return self

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """Services (SIGTERM, then SIGKILL after `timeout`; at once if a second signal asks to hurry), then the
        broker and PostgreSQL."""
        for child in reversed(list(self.children.values())):
            if child.alive() and child.proc is not None:
                with contextlib.suppress(ProcessLookupError):
                    child.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for child in self.children.values():
            if child.proc is None:
                continue
            while child.proc.poll() is None and time.monotonic() < deadline and not self._hurry:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    child.proc.wait(0.2)
            if child.proc.poll() is None:
                log.warning("%s did not stop in time: killed", child.name)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.proc.pid, signal.SIGKILL)
                child.proc.wait(5)
            lifeline.forget(child.proc.pid)
        if self.kafka:
            self.kafka.stop()
        if self.pg:
            self.pg.stop()

    # ------------------------------------------------------------------------------------------- signals
    def _terminate(self, signum: int, frame: FrameType | None) -> None:
        raise Terminated(signal.Signals(signum).name)

    def _hurry_up(self, signum: int, frame: FrameType | None) -> None:
        self._hurry = True

    def _set_handlers(self, handler: Any, sigs: tuple[signal.Signals, ...]) -> None:
        """Install `handler` for `sigs`, except where the caller installed a policy of its own (the bench's
        signal guard): those signals stay the caller's to handle."""
        if not threading_is_main():
            return
        for sig in sigs:
            current = signal.getsignal(sig)
            if sig in self._previous_handlers or current in (signal.SIG_DFL, signal.default_int_handler, None):
                previous = signal.signal(sig, handler)
                self._previous_handlers.setdefault(sig, previous)

    def __enter__(self) -> Stack:
        """SIGTERM and SIGHUP stop the stack as Ctrl-C does (a process manager's stop, a closed terminal)."""
        self._set_handlers(self._terminate, (signal.SIGTERM, signal.SIGHUP))
        return self

    def __exit__(self, *exc: object) -> None:
        # Stopping takes a few seconds: a second Ctrl-C or SIGTERM hurries it instead of breaking it.
        self._set_handlers(self._hurry_up, (signal.SIGTERM, signal.SIGHUP, signal.SIGINT))
        try:
            self.stop()
        finally:
            if threading_is_main():
                for sig, handler in self._previous_handlers.items():
                    signal.signal(sig, handler)
                self._previous_handlers.clear()


def threading_is_main() -> bool:
    return threading.current_thread() is threading.main_thread()
