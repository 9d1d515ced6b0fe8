"""A user error is one line saying what is wrong and where (exit 2), for the CLI, the simulators and the
stack; never a traceback, never a secret. A bug still shows its traceback, scrubbed."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

TOKEN = "dop_v1_" + "c0ffee" * 10 + "abcd"
LEGACY = "7" * 20 + "e" * 44


def cloudbill(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("DIGITALOCEAN_", "API_", "SKYAI_", "DATABASE_"))}
    return subprocess.run(
        [sys.executable, "-m", "cloudbill", *args],
        env=base | {"LOG_FORMAT": "console", "CLOUDBILL_DEV_ENV": "off"} | env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def one_line_error(res: subprocess.CompletedProcess[str]) -> str:
    """The one line on stderr (a service that set up its logging says it as a log record, JSON or not)."""
    assert res.returncode == 2, res.stdout + res.stderr
    lines = [line for line in res.stderr.splitlines() if line.strip() and '"level": "info"' not in line]
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    return lines[0]


@pytest.mark.parametrize("accounts", [f"lab:{TOKEN}", f"lab {LEGACY}", f'[{{"name": "a b", "token": "{TOKEN}"}}]'])
def test_a_mistyped_account_list(tmp_path: Path, accounts: str) -> None:
    for command in (["config"], ["run", "poller"]):
        line = one_line_error(cloudbill(*command, cwd=tmp_path, DIGITALOCEAN_ACCOUNTS=accounts))
        assert line.startswith("error: invalid configuration: DIGITALOCEAN_ACCOUNTS")
        assert "c0ffee" not in line and "7777" not in line


def test_an_invalid_value_names_its_variable(tmp_path: Path) -> None:
    line = one_line_error(cloudbill("config", cwd=tmp_path, API_PORT="eighty"))
    assert line.startswith("error: invalid configuration: API_PORT:")


def test_the_api_refuses_a_short_secret_in_one_log_line(tmp_path: Path) -> None:
    line = one_line_error(cloudbill("run", "api", cwd=tmp_path, API_JWT_SECRET="short"))
    assert line.endswith("API_JWT_SECRET is 5 bytes; HS256 needs at least 32 (e.g. `openssl rand -hex 32`)")


def test_the_simulator_and_the_stack_refuse_a_bad_scenario_folder(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-scenario"
    line = one_line_error(cloudbill("sim", "do", "--scenario", str(missing), cwd=tmp_path))
    assert line.startswith("error:") and "no-such-scenario" in line
    line = one_line_error(cloudbill("dev", "up", "--scenario", str(missing), cwd=tmp_path))
    assert line.startswith("error: bad --scenario: ") and "no-such-scenario" in line
    assert not (tmp_path / ".cloudbill" / "logs").exists()  # refused before anything started


def test_the_stack_refuses_a_port_in_use(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        line = one_line_error(cloudbill("demo", "--api-port", str(port), cwd=tmp_path))
        sim = one_line_error(cloudbill("sim", "do", "--port", str(port), cwd=tmp_path, LOG_FORMAT="json"))
    assert (
        line == f"error: port {port} (API) is already in use on 127.0.0.1: choose another with --api-port or API_PORT"
    )
    assert json.loads(sim)["msg"] == (
        f"DigitalOcean simulator: port {port} is already in use on 127.0.0.1: choose another with --port"
    )


def test_the_stack_refuses_a_short_api_secret_from_the_environment(tmp_path: Path) -> None:
    line = one_line_error(cloudbill("dev", "up", cwd=tmp_path, API_JWT_SECRET="tiny"))
    assert "API_JWT_SECRET is 4 bytes" in line


def test_a_bug_keeps_its_traceback_scrubbed(tmp_path: Path) -> None:
    """Not a user error: the traceback is what a maintainer needs, with the secret masked."""
    from cloudbill.cli import user_error

    assert user_error(RuntimeError(f"boom {TOKEN}")) is None
    code = (
        "import sys; from cloudbill import cli\n"
        "@cli.app.command('boom')\n"
        f"def boom() -> None:\n    raise RuntimeError('exploded with {TOKEN}')\n"
        "sys.argv = ['cloudbill', 'boom']; cli.main()\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert res.returncode == 1
    assert "Traceback" in res.stderr and "RuntimeError: exploded with ****" in res.stderr
    assert "c0ffee" not in res.stderr
