"""Secret canary: the whole stack (every service and simulator its own process) runs with distinctive secrets
and is driven through a poll, an invalid configuration, a finance 401, a DigitalOcean 500 and crashes; no log
file, stdout or stderr may then hold any of the secrets, nor any 12-character piece of one.

The secrets: the DigitalOcean token of the running account (a legacy 64-hex token, which no pattern can
recognise by shape), two more tokens in a mistyped account list (a `dop_v1_` one and a legacy one), the API
and finance JWT secrets, the finance secret a misconfigured finance service holds, and the database
password of a password-protected role (with characters that URLs encode) plus a wrong one.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import uuid
from pathlib import Path
from urllib.parse import quote, quote_plus

import httpx
import pytest

from cloudbill.stack import Stack, StackConfig
from shared.auth import mint
from shared.devinfra import free_port
from sims.scenario import APRIL_2026_INVOICE_UUID
from tests.conftest import KafkaUnderTest
from tests.helpers import wait_until

PIECE = 12  # no piece of a secret this long may show (the issue saw 43 of 64 hex digits in an error)


def _canaries() -> dict[str, str]:
    hex64 = lambda: secrets.token_hex(32)  # noqa: E731
    return {
        "do_token_legacy": hex64(),
        "do_token_typo_prefixed": "dop_v1_" + hex64(),
        "do_token_typo_legacy": hex64(),
        "api_secret": "CANARYapi" + secrets.token_hex(24),
        "finance_secret": "CANARYfin" + secrets.token_hex(24),
        "finance_secret_wrong": "CANARYfinWRONG" + secrets.token_hex(24),
        "db_password": "CANARY/db@pw:" + secrets.token_hex(12),
        "db_password_wrong": "CANARYdbWRONG" + secrets.token_hex(12),
    }


def _pieces(secret: str) -> set[str]:
    forms = {secret, quote(secret, safe=""), quote_plus(secret)}
    return {f[i : i + PIECE] for f in forms for i in range(len(f) - PIECE + 1)}


def _leaks(texts: dict[str, str], canaries: dict[str, str]) -> list[str]:
    found = []
    for name, secret in canaries.items():
        pieces = _pieces(secret)
        for where, text in texts.items():
            hits = {p for p in pieces if p in text}
            if hits:
                line = next(ln for ln in text.splitlines() if any(p in ln for p in hits))
                found.append(f"{name} in {where}: {line[:300]}")
    return found


def _run(stack: Stack, args: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cloudbill", *args],
        env=stack.env() | env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_no_secret_reaches_any_log_or_output(kafka: KafkaUnderTest, tmp_path: Path) -> None:
    c = _canaries()
    outputs: dict[str, str] = {}
    cfg = StackConfig(
        workdir=tmp_path / "stack",
        kafka_bootstrap=kafka.bootstrap,
        kafka_flavor=kafka.flavor,
        topic_prefix=f"canary{uuid.uuid4().hex[:6]}.",
        database_password=c["db_password"],
        api_secret=c["api_secret"],
        finance_secret=c["finance_secret"],
        do_token=c["do_token_legacy"],
        do_port=free_port(),
        finance_port=free_port(),
        api_port=free_port(),
        # Fast retries, so the 401 and the 500 are met and recovered from within the test; every log line.
        extra_env={"SKYAI_FINANCE_AUTH_RETRY_S": "1", "DIGITALOCEAN_MAX_RETRIES": "1", "LOG_LEVEL": "DEBUG"},
    )
    stack = Stack(cfg)
    try:
        stack.start_infra()
        stack.prepare()
        stack.start_sims()
        # A finance service that does not share the pusher's secret: every push answers 401.
        stack.children["sim-finance"].proc.terminate()  # type: ignore[union-attr]
        stack.children["sim-finance"].proc.wait(20)  # type: ignore[union-attr]
        wrong = stack.env() | {
            "SKYAI_FINANCE_JWT_SECRET": c["finance_secret_wrong"],
            "DATABASE_URL": stack.finance_database_url,
        }
        stack.spawn("sim-finance", ["sim", "finance", "--port", str(cfg.finance_port)], env=wrong)
        stack._wait_port("sim-finance", cfg.finance_port)
        stack.start_services()

        # A poll of everything, through the CLI as an operator would.
        outputs["poll all"] = stack.poll_now("all")
        pusher_log = stack.logdir / "finance-pusher.log"
        wait_until(lambda: "CONFIGURATION ERROR" in pusher_log.read_text(), timeout=120, what="the finance 401")

        # Finance fixed: the invoice goes through, over the password-protected database role.
        stack.children["sim-finance"].proc.terminate()  # type: ignore[union-attr]
        stack.children["sim-finance"].proc.wait(20)  # type: ignore[union-attr]
        right = wrong | {"SKYAI_FINANCE_JWT_SECRET": c["finance_secret"]}
        stack.spawn("sim-finance", ["sim", "finance", "--port", str(cfg.finance_port)], env=right)
        stack._wait_port("sim-finance", cfg.finance_port)
        token = mint(c["api_secret"], algorithm="HS256", ttl_s=600, claims={"roles": ["platform_admin"]})
        api = httpx.Client(
            base_url=f"http://127.0.0.1:{cfg.api_port}", headers={"Authorization": f"Bearer {token}"}, timeout=10
        )

        def april_pushed() -> bool:
            stack.keep_alive()
            r = api.get(f"/api/v1/billing/invoices/{APRIL_2026_INVOICE_UUID}")
            return r.status_code == 200 and r.json()["status"] == "pushed"

        wait_until(april_pushed, timeout=180, interval=1, what="April 2026 pushed after finance was fixed")

        # DigitalOcean answering 500: a failed poll, reported.
        do = f"http://127.0.0.1:{cfg.do_port}"
        httpx.post(f"{do}/_sim/faults", json={"server_errors": 20, "server_error_status": 500}).raise_for_status()
        res = _run(stack, ["poll", "balance"])
        outputs["poll balance (500)"] = res.stdout + res.stderr
        assert res.returncode == 1 and "HTTP 500" in res.stderr, res.stderr
        httpx.delete(f"{do}/_sim/faults").raise_for_status()

        # An invalid configuration holding two more tokens, for a command and for a service.
        typo = f"lab:{c['do_token_typo_prefixed']},ops {c['do_token_typo_legacy']}"
        for args in (["config"], ["run", "poller"], ["poll", "all"]):
            res = _run(stack, args, DIGITALOCEAN_ACCOUNTS=typo)
            outputs[f"{' '.join(args)} (invalid configuration)"] = res.stdout + res.stderr
            assert res.returncode == 2 and "DIGITALOCEAN_ACCOUNTS" in res.stderr, res.stderr

        # Crashes: two services killed outright (restarted by the supervisor), one dying of an exception
        # at start (a wrong database password), in JSON as in production.
        for name in ("ingester", "finance-pusher"):
            stack.children[name].proc.kill()  # type: ignore[union-attr]
            stack.children[name].proc.wait(10)  # type: ignore[union-attr]
        assert len(stack.keep_alive()) == 2
        bad_db = stack.database_url.replace(quote(c["db_password"], safe=""), quote(c["db_password_wrong"], safe=""))
        assert bad_db != stack.database_url
        res = _run(stack, ["run", "projector"], DATABASE_URL=bad_db, LOG_FORMAT="json")
        outputs["run projector (wrong database password)"] = res.stdout + res.stderr
        assert res.returncode == 1 and '"level": "critical"' in res.stderr and "Traceback" in res.stderr
        assert "password authentication failed" in res.stderr
        wait_until(lambda: all(stack.children[n].alive() for n in ("ingester", "finance-pusher")), timeout=30)
    finally:
        stack.stop()

    logs = {str(p.relative_to(tmp_path)): p.read_text(errors="replace") for p in stack.logdir.glob("*.log")}
    pg_log = cfg.workdir / "postgres" / "pgdata" / "log"
    if pg_log.exists():
        logs["postgres server log"] = pg_log.read_text(errors="replace")
    texts = logs | outputs
    # The scan is not vacuous: every process left its log, each step left its trace, and the detector finds
    # the secrets where they are meant to be (the children's environment).
    expected = {f"stack/logs/{n}.log" for n in ("sim-do", "sim-finance", *stack.children)}
    assert expected <= {k for k, v in logs.items() if v.strip()}
    assert "CONFIGURATION ERROR" in logs["stack/logs/finance-pusher.log"]
    assert "exited (-9); restarting" in logs["stack/logs/ingester.log"]
    control = _leaks({"the children's environment": repr(stack.env())}, c)
    assert {x.split()[0] for x in control} == {"api_secret", "finance_secret", "db_password", "do_token_legacy"}
    leaks = _leaks(texts, c)
    assert not leaks, "secrets leaked:\n" + "\n".join(leaks)


@pytest.fixture(autouse=True)
def _no_inherited_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    """The stack's environment is the test's plus its own: nothing secret from the caller's shell."""
    for k in list(os.environ):
        if k.startswith(("DIGITALOCEAN_", "SKYAI_", "API_JWT", "DATABASE_")):
            monkeypatch.delenv(k)
