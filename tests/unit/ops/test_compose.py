"""docker-compose.yml: valid against the compose specification, every command exists in the CLI, and it is
safe by default: `docker compose config` without the secrets fails naming them (checked by interpolating the
file as compose does: no Docker engine needed), the DigitalOcean URL defaults to the real API, ports are
published on loopback, and the simulators stay in the `demo` profile."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from ruamel.yaml import YAML
from typer.testing import CliRunner

from cloudbill import services as registry
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


def test_compose_runs_every_service_of_the_registry_and_no_other() -> None:
    """docker-compose.yml cannot import the registry (cloudbill/services.py): this keeps the two the same list."""
    run = [
        (name, svc["command"][1])
        for name, svc in _compose()["services"].items()
        if (_cli_args(svc) or [""])[0] == "run"
    ]
    assert [cmd for _, cmd in run] == list(registry.NAMES)  # same services, in the registry's order
    assert all(name == cmd for name, cmd in run)  # each compose service is named after what it runs


@pytest.mark.parametrize("name", [*registry.NAMES, "sim-do", "sim-finance"])
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
        assert path[1] in {s.value for s in registry.Service}
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


# ------------------------------------------------------------------------------ interpolation, as compose does
_VAR = re.compile(r"\$(?:\$|\{(?P<braced>[^}]*)\}|(?P<plain>[A-Za-z_][A-Za-z0-9_]*))")
_BRACED = re.compile(r"^(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>.*))?$", re.S)


class MissingVariable(Exception):
    """What `docker compose config` reports for a `${VAR:?message}` whose variable is unset or empty."""


def interpolate(text: str, env: dict[str, str], errors: list[str] | None = None) -> str:
    """The compose specification's interpolation of one string: $$, $VAR, ${VAR}, ${VAR:-d}, ${VAR-d},
    ${VAR:?e}, ${VAR?e}, ${VAR:+a}, ${VAR+a}. Every missing required variable is reported."""
    collected: list[str] = [] if errors is None else errors

    def one(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        if m.group("plain"):
            return env.get(m.group("plain"), "")
        b = _BRACED.match(m.group("braced"))
        assert b, f"unsupported interpolation {m.group(0)!r}"
        name, op, arg = b.group("name"), b.group("op"), b.group("arg") or ""
        value, is_set = env.get(name), name in env
        present = bool(value) if op and op.startswith(":") else is_set
        if op in (":-", "-"):
            return value if present else arg  # type: ignore[return-value]
        if op in (":?", "?"):
            if not present:
                collected.append(f"required variable {name} is missing a value: {arg}")
                return ""
            return value  # type: ignore[return-value]
        if op in (":+", "+"):
            return arg if present else ""
        return value or ""

    out = _VAR.sub(one, text)
    if errors is None and collected:
        raise MissingVariable("\n".join(dict.fromkeys(collected)))
    return out


def resolve(path: Path, env: dict[str, str]) -> dict:
    """The compose file as `docker compose config` sees it: YAML first, then every string value interpolated."""
    errors: list[str] = []

    def walk(node: object) -> object:
        if isinstance(node, str):
            return interpolate(node, env, errors)
        if isinstance(node, dict):
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    out = walk(YAML(typ="safe").load(path.read_text()))
    if errors:
        raise MissingVariable("\n".join(dict.fromkeys(errors)))
    return out  # type: ignore[return-value]


SECRETS = {"API_JWT_SECRET": "a" * 64, "SKYAI_FINANCE_JWT_SECRET": "f" * 64}


@pytest.mark.parametrize(
    ("env", "missing"),
    [
        ({}, ["API_JWT_SECRET", "SKYAI_FINANCE_JWT_SECRET"]),
        ({"API_JWT_SECRET": "a" * 64}, ["SKYAI_FINANCE_JWT_SECRET"]),
        ({"SKYAI_FINANCE_JWT_SECRET": "f" * 64, "API_JWT_SECRET": ""}, ["API_JWT_SECRET"]),  # empty is missing
    ],
)
def test_compose_refuses_to_start_without_the_secrets(env: dict[str, str], missing: list[str]) -> None:
    with pytest.raises(MissingVariable) as info:
        resolve(COMPOSE, env)
    lines = str(info.value).splitlines()
    assert sorted(line.split()[2] for line in lines) == missing
    for line in lines:  # one clear line each: what to set and where
        assert "in .env" in line and "set " + line.split()[2] in line


def test_compose_with_the_secrets_is_valid_and_safe_by_default(tmp_path: Path) -> None:
    resolved = tmp_path / "docker-compose.yml"
    with resolved.open("w") as f:
        YAML(typ="safe").dump(resolve(COMPOSE, SECRETS), f)
    exe = shutil.which("check-jsonschema") or str(Path(sys.executable).parent / "check-jsonschema")
    res = subprocess.run(
        [exe, "--builtin-schema", "vendor.compose-spec", str(resolved)], capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0, res.stdout + res.stderr
    services = YAML(typ="safe").load(resolved.read_text())["services"]
    env = services["poller"]["environment"]
    assert env["DIGITALOCEAN_API_URL"] == "https://api.digitalocean.com"  # never the simulator by default
    assert env["DIGITALOCEAN_TOKEN"] == "" and env["API_JWT_SECRET"] == "a" * 64
    assert services["api"]["ports"] == ["127.0.0.1:8000:8000"]  # loopback unless API_PUBLISH says otherwise
    for name, svc in services.items():
        for port in svc.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), (name, port)


def test_the_readme_lists_every_variable_compose_reads() -> None:
    readme = (ROOT / "README.md").read_text()
    names = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", COMPOSE.read_text()))
    assert names >= {"API_JWT_SECRET", "SKYAI_FINANCE_JWT_SECRET", "DIGITALOCEAN_API_URL", "DIGITALOCEAN_TOKEN"}
    missing = sorted(n for n in names if f"`{n}`" not in readme)
    assert not missing, f"README lacks {missing}"


def test_interpolation_follows_the_compose_rules() -> None:
    env = {"SET": "v", "EMPTY": ""}
    assert interpolate("$$SET ${SET} $SET ${UNSET:-d} ${EMPTY:-d} ${EMPTY-d} ${SET:+a} ${EMPTY+a}", env) == (
        "$SET v v d d  a a"
    )
    assert interpolate("${EMPTY?needed}", env) == ""
    with pytest.raises(MissingVariable, match="EMPTY is missing a value: needed"):
        interpolate("${EMPTY:?needed}", env)
