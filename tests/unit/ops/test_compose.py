"""docker-compose.yml: valid against the compose specification, and every command exists in the CLI."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from ruamel.yaml import YAML
from typer.testing import CliRunner

from cloudbill.cli import app

ROOT = Path(__file__).resolve().parents[3]
COMPOSE = ROOT / "docker-compose.yml"


def _compose() -> dict:
    return YAML(typ="safe").load(COMPOSE.read_text())


def test_compose_file_matches_the_compose_specification() -> None:
    exe = shutil.which("check-jsonschema") or str(Path(sys.executable).parent / "check-jsonschema")
    res = subprocess.run(
        [exe, "--builtin-schema", "vendor.compose-spec", str(COMPOSE)], capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0, res.stdout + res.stderr


def _cli_args(svc: dict) -> list[str] | None:
    if "entrypoint" in svc:
        return None
    return list(svc.get("command", []))


@pytest.mark.parametrize(
    "name", ["poller", "ingester", "matcher", "finance-pusher", "projector", "api", "sim-do", "sim-finance"]
)
def test_every_service_command_exists_in_the_cli(name: str) -> None:
    svc = _compose()["services"][name]
    args = _cli_args(svc)
    assert args, f"{name} has no cloudbill command"
    # Keep the sub-command path (words before the first option), ask it for --help.
    path = []
    for a in args:
        if a.startswith("-"):
            break
        path.append(a)
    if path[0] == "run":
        from cloudbill.cli import Service

        assert path[1] in {s.value for s in Service}
        path = path[:1]
    res = CliRunner().invoke(app, [*path, "--help"])
    assert res.exit_code == 0, res.output
    for opt in (a for a in args if a.startswith("--")):
        assert opt in res.output, f"{name}: option {opt} unknown to `cloudbill {' '.join(path)}`"


def test_setup_runs_topic_creation_and_migrations() -> None:
    setup = _compose()["services"]["setup"]
    script = " ".join(setup["entrypoint"])
    assert "cloudbill topics create" in script and "cloudbill db migrate" in script
    for sub in (["topics", "create"], ["db", "migrate"]):
        assert CliRunner().invoke(app, [*sub, "--help"]).exit_code == 0


def test_kafka_is_kraft_with_transaction_log_replication_one() -> None:
    env = _compose()["services"]["kafka"]["environment"]
    assert "controller" in env["KAFKA_PROCESS_ROLES"]
    assert env["KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"] == "1"
    assert env["KAFKA_TRANSACTION_STATE_LOG_MIN_ISR"] == "1"


def test_demo_profile_adds_both_simulators() -> None:
    services = _compose()["services"]
    assert {n for n, s in services.items() if "demo" in s.get("profiles", [])} == {"sim-do", "sim-finance"}
