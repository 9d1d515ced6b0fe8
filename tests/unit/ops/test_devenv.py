"""dev.env: a running dev stack's settings, used by every other cloudbill command in its directory."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cloudbill import devenv
from cloudbill.cli import app
from shared.settings import ConfigError, get_settings, use_env_files

VALUES = {
    "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:59092",
    "DATABASE_URL": "postgresql://cloudbill:dev-db-password@/cloudbill?host=/tmp/x",
    "API_JWT_SECRET": "d" * 64,
    "API_PORT": "8123",
}


@pytest.fixture
def here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory; the test suite's CLOUDBILL_DEV_ENV=off is lifted, settings caches reset."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CLOUDBILL_DEV_ENV", raising=False)
    for k in VALUES:
        monkeypatch.delenv(k, raising=False)
    yield tmp_path
    use_env_files([])


def test_written_private_and_readable_only_while_its_stack_runs(here: Path) -> None:
    path = devenv.DEFAULT
    with devenv.DevEnvFile(path) as f:
        f.write(VALUES)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        stack = devenv.running(devenv.location())
        assert stack is not None and stack.pid == os.getpid()
        assert {k: stack.values[k] for k in VALUES} == VALUES
    assert not path.exists() and devenv.running(path) is None


def test_a_file_left_by_a_killed_stack_is_ignored(here: Path) -> None:
    devenv.DEFAULT.parent.mkdir()
    devenv.DEFAULT.write_text("API_JWT_SECRET='stale'\n")  # nobody holds its lock
    assert devenv.running(devenv.DEFAULT) is None


def test_a_second_stack_in_the_same_directory_is_refused_without_touching_the_first(here: Path) -> None:
    with devenv.DevEnvFile(devenv.DEFAULT) as f:
        f.write(VALUES)
        with pytest.raises(ConfigError, match=rf"already running with .*dev.env \(pid {os.getpid()}\)"):
            devenv.DevEnvFile(devenv.DEFAULT)
        assert devenv.running(devenv.DEFAULT) is not None
        assert devenv.DEFAULT.read_text().count("API_JWT_SECRET") == 1


def test_commands_use_it_and_say_so_in_one_line(here: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with devenv.DevEnvFile(devenv.DEFAULT) as f:
        f.write(VALUES)
        result = CliRunner().invoke(app, ["config", "--json"])
        assert result.exit_code == 0, result.output
        notice, _, body = result.output.partition("\n")
        assert notice == f"using the running dev stack's settings from .cloudbill/dev.env (dev stack pid {os.getpid()})"
        shown = json.loads(body)
        assert shown["KAFKA_BOOTSTRAP_SERVERS"] == "127.0.0.1:59092" and shown["API_PORT"] == 8123
        assert "dev-db-password" not in body and shown["API_JWT_SECRET"] == "****dddd"

        token = CliRunner().invoke(app, ["token"]).output.splitlines()[-1]
        assert get_settings().api_jwt_secret.get_secret_value() == "d" * 64  # type: ignore[union-attr]
        from services.api.security import TokenVerifier

        TokenVerifier(get_settings()).require_admin(token)  # what the running API accepts

        # The environment still wins, and the notice names what it overrides.
        monkeypatch.setenv("API_PORT", "9000")
        result = CliRunner().invoke(app, ["config", "--json"])
        assert result.output.splitlines()[0].endswith("; from the environment instead: API_PORT")
        assert json.loads(result.output.partition("\n")[2])["API_PORT"] == 9000


def test_off_means_off(here: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLOUDBILL_DEV_ENV", "off")
    assert devenv.location() is None
    monkeypatch.setenv("CLOUDBILL_DEV_ENV", "elsewhere/dev.env")
    assert devenv.location() == Path("elsewhere/dev.env")
