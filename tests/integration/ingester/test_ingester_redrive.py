"""A dead-lettered invoice, fixed at the source, redriven with `cloudbill dlq`: ingested once, redrives counted."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from cloudbill.dlq import read_dead_letters, redrive
from shared.db import connect
from shared.kafka.deadletter import H_REDRIVE_COUNT
from shared.settings import Settings
from shared.topics import INVOICE_DISCOVERED
from sims.scenario import APRIL_2026_INVOICE_UUID
from tests.helpers import read_all, settings_env, wait_until
from tests.integration.ingester.support import assemble, consumed, discovered_events, ledger_rows, publish, running

APRIL = APRIL_2026_INVOICE_UUID


def _cli(s: Settings, *args: str) -> str:
    res = subprocess.run(
        [sys.executable, "-m", "cloudbill", *args], env=settings_env(s), capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0, res.stderr[-3000:]
    return res.stdout


def test_redrive_after_the_fix_ingests_once_and_a_second_redrive_sends_nothing(
    ingester_settings: Settings, scenario_dir: Path
) -> None:
    s = ingester_settings
    csv_path = scenario_dir / "invoices" / f"{APRIL}.csv"
    original = csv_path.read_bytes()
    csv_path.write_bytes(original.replace(b"$6.00", b"$6.0.0", 1))  # DigitalOcean serves a malformed CSV
    try:
        with running(s):
            publish(s, [discovered_events(scenario_dir)[APRIL]])
            wait_until(lambda: consumed(s) == 1, timeout=60, what="discovered event consumed")
            [dead] = wait_until(lambda: read_dead_letters(s), timeout=30, what="the dead letter")
            assert dead.error_class.endswith("CsvParseError") and dead.key == APRIL
            assert read_dead_letters(s, topic=INVOICE_DISCOVERED.name(s.kafka_topic_prefix), error_class="x") == []

            # The CLI lists and shows it (through the same settings a user's environment gives).
            listed = _cli(s, "dlq", "list", "--json")
            assert dead.id in listed and "CsvParseError" in listed
            assert '"redrive_count": 0' in _cli(s, "dlq", "show", dead.id)

            csv_path.write_bytes(original)  # the fix, at the source
            dry = redrive(s, [dead], by="test", dry_run=True)
            assert dry.sent == [dead.id] and consumed(s) == 1  # a dry run sends nothing
            assert "1 sent, 0 skipped" in _cli(s, "dlq", "redrive", dead.id, "--reason", "CSV restored")
            wait_until(lambda: APRIL in assemble(s)[0].current, timeout=60, what="April ingested after the redrive")
            assert len(assemble(s)[0].current[APRIL].lines) == 33

            # Redriving the same dead letter again sends nothing; --again sends it, and downstream it is a
            # duplicate (same content: the ledger skips it), so the invoice is still one revision.
            second = redrive(s, [dead], by="test")
            assert second.sent == [] and "already redriven" in second.skipped[dead.id]
            third = redrive(s, [dead], by="test", again=True)
            assert third.sent == [dead.id]
            wait_until(lambda: consumed(s) == 3, timeout=60, what="the repeated redrive consumed")
        assert [(r["revision"], r["state"]) for r in ledger_rows(s)] == [(1, "committed")]
        redriven = [
            r for r in read_all(s, INVOICE_DISCOVERED.name(s.kafka_topic_prefix)) if H_REDRIVE_COUNT in r.headers
        ]
        assert [r.headers[H_REDRIVE_COUNT] for r in redriven] == [b"1", b"1"]
        with connect(s) as conn:
            row = conn.execute("SELECT state, times, requested_by, reason FROM ops.redrives").fetchone()
        assert row is not None and (row["state"], row["times"], row["requested_by"]) == ("sent", 2, "test")
    finally:
        csv_path.write_bytes(original)
