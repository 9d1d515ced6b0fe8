"""The bounded chaos run CI makes: 30 invoices of mixed sizes over three accounts, 8 SIGKILLs over every service,
one broker SIGKILL, finance and DigitalOcean faults, five poison records; nothing lost, nothing doubled, read models
identical to an undisturbed run. The full size is `make chaos` (`cloudbill chaos`, 200 invoices, 20 kills)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rich.console import Console

from cloudbill.chaos import ChaosOptions, run_chaos
from shared.devinfra import apache_kafka_available
from tests.conftest import _unavailable

pytestmark = [pytest.mark.chaos, pytest.mark.e2e]


@pytest.mark.timeout(600)
def test_chaos_run_loses_and_doubles_nothing(tmp_path: Path) -> None:
    if why := apache_kafka_available():
        _unavailable("Apache Kafka (jars)", why)  # fails under CI=true, like every broker fixture
    out = tmp_path / "chaos.json"
    opts = ChaosOptions(
        seed=1,
        invoices=30,
        kills=8,
        kafka="apache",
        out=out,
        workdir=tmp_path / "chaos",
        max_lines=300,
        finance_outage_s=15,
        min_window_s=60,
        idle_timeout_s=150,
        timeout_s=420,
    )
    report = run_chaos(opts, Console(width=140, stderr=True))
    data = json.loads(out.read_text())
    for key in (
        "kills",
        "broker_kills",
        "lost",
        "doubled",
        "finance_rows",
        "invoices_expected",
        "read_models_equal",
        "poison_injected",
        "poison_dead_lettered",
        "converged_s",
    ):
        assert key in data
    failed = [name for name, passed in report.checks.items() if not passed]
    assert report.ok, (
        f"failed checks: {failed}; notes: {report.notes}; tables: {[d for d in report.table_diffs if not d['equal']]}"
    )
    assert (data["kills"], data["broker_kills"], data["lost"], data["doubled"]) == (8, 1, 0, 0)
    assert data["finance_rows"] == data["invoices_expected"] == 30
    assert data["poison_injected"] == data["poison_dead_lettered"] == 5
