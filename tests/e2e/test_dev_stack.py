"""`cloudbill dev up` as a user runs it, from an empty directory: nothing but the command.

- In a second shell, `cloudbill token` (no secret given) mints a token the running API accepts, and the
  API shows the April 2026 invoice pushed within two minutes (the poller's catch-up at start).
- SIGKILL of `dev up` leaves no process behind (services, simulators, broker, PostgreSQL), ports freed.
- SIGTERM stops it as Ctrl-C does: services stopped gracefully, dev.env removed, exit 143.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from cloudbill import devenv
from shared.devinfra import free_port
from sims.scenario import APRIL_2026_INVOICE_UUID
from tests.helpers import wait_until

DONE_WITHIN_S = 120.0


def _env(**ports: int) -> dict[str, str]:
    """A user's shell: no cloudbill settings, no secrets; free ports so parallel runs do not collide."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("KAFKA_", "DATABASE_", "DIGITALOCEAN_", "SKYAI_", "API_", "CLOUDBILL_"))
    }
    return env | {k: str(v) for k, v in ports.items()}


class DevUp:
    def __init__(self, cwd: Path) -> None:
        self.cwd = cwd
        self.api_port = free_port()
        self.env = _env(
            API_PORT=self.api_port, CLOUDBILL_DEV_DO_PORT=free_port(), CLOUDBILL_DEV_FINANCE_PORT=free_port()
        )
        self.output = cwd / "dev-up.out"
        with self.output.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "cloudbill", "dev", "up"], cwd=cwd, env=self.env, stdout=out, stderr=out
            )
        self.started = time.monotonic()

    def cloudbill(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Another shell in the same directory."""
        return subprocess.run(
            [sys.executable, "-m", "cloudbill", *args],
            cwd=self.cwd,
            env=_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )

    def wait_running(self) -> devenv.RunningStack:
        def up() -> devenv.RunningStack | None:
            assert self.proc.poll() is None, self.output.read_text()
            stack = devenv.running(self.cwd / ".cloudbill" / "dev.env")
            ready = stack is not None and "running; Ctrl-C" in self.output.read_text()
            return stack if ready else None

        return wait_until(up, timeout=DONE_WITHIN_S, interval=0.5, what="dev up running")

    def processes(self) -> list[psutil.Process]:
        """Everything it started: its descendants, and PostgreSQL (pg_ctl puts the server in its own session)."""
        procs = psutil.Process(self.proc.pid).children(recursive=True)
        postmaster = self.cwd / ".cloudbill" / "postgres" / "pgdata" / "postmaster.pid"
        procs.append(psutil.Process(int(postmaster.read_text().split()[0])))
        return procs

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def _gone(procs: list[psutil.Process]) -> bool:
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                return False
        except psutil.NoSuchProcess:
            continue
    return True


@pytest.fixture
def dev_up(tmp_path: Path) -> Iterator[DevUp]:
    run = DevUp(tmp_path)
    procs: list[psutil.Process] = []
    try:
        yield run
    finally:
        if run.proc.poll() is None:
            procs = run.processes()
            run.stop()
        wait_until(lambda: _gone(procs), timeout=60, what="cleanup")


def test_dev_up_alone_then_token_in_a_second_shell_shows_april_pushed_and_sigkill_leaves_nothing(
    dev_up: DevUp,
) -> None:
    stack = dev_up.wait_running()
    assert stack.values["API_PORT"] == str(dev_up.api_port)
    res = dev_up.cloudbill("token")
    assert res.returncode == 0, res.stderr
    assert (
        res.stderr.strip()
        == f"using the running dev stack's settings from .cloudbill/dev.env (dev stack pid {dev_up.proc.pid})"
    )
    api = httpx.Client(
        base_url=f"http://127.0.0.1:{dev_up.api_port}",
        headers={"Authorization": f"Bearer {res.stdout.strip()}"},
        timeout=10,
    )

    def april() -> dict | None:
        assert dev_up.proc.poll() is None, dev_up.output.read_text()
        r = api.get(f"/api/v1/billing/invoices/{APRIL_2026_INVOICE_UUID}")
        assert r.status_code in (200, 404), r.text  # never 401: the token is the stack's
        return r.json() if r.status_code == 200 and r.json()["status"] == "pushed" else None

    left = DONE_WITHIN_S - (time.monotonic() - dev_up.started)
    inv = wait_until(april, timeout=max(left, 1), interval=1, what="April 2026 pushed within two minutes")
    assert (inv["lines_count"], inv["amount_gross_minor"], inv["amount_tax_minor"]) == (33, 8692, 790)
    assert dev_up.cloudbill("status").returncode == 0

    procs = dev_up.processes()
    assert len(procs) >= 11  # broker, PostgreSQL, 2 simulators, 6 services, the lifeline
    dev_up.proc.send_signal(signal.SIGKILL)
    dev_up.proc.wait(10)
    wait_until(lambda: _gone(procs), timeout=60, what="every process it started gone after its SIGKILL")
    assert devenv.running(dev_up.cwd / ".cloudbill" / "dev.env") is None  # the file left behind is inert
    assert dev_up.cloudbill("token").stderr.startswith("error: API_JWT_SECRET is not set")


def test_sigterm_stops_dev_up_as_ctrl_c_does(dev_up: DevUp) -> None:
    dev_up.wait_running()
    procs = dev_up.processes()
    dev_up.proc.send_signal(signal.SIGTERM)
    assert dev_up.proc.wait(60) == 143
    out = dev_up.output.read_text()
    assert "SIGTERM received: stopping everything..." in out and out.rstrip().endswith("stopped.")
    assert _gone(procs)  # the supervisor itself stopped them before exiting
    assert not (dev_up.cwd / ".cloudbill" / "dev.env").exists()
    logs = dev_up.cwd / ".cloudbill" / "logs"
    assert "poller stopped" in (logs / "poller.log").read_text()  # its own clean stop, not a kill
    assert "killed" not in out
