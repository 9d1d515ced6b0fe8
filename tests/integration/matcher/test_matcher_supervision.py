"""faust's weak spots, guarded: a crashed agent ends the process non-zero; a stop that hangs is killed; a
record faust skipped is never committed past, and the worker restarts to re-read it."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import faust
import pytest

from services.matcher.main import EXIT_CRASHED, EXIT_STOP_TIMEOUT
from shared.events import BillingHistoryEntry
from shared.kafka import EventProducer, StopSignal, group_lag
from shared.settings import Settings
from shared.topics import HISTORY
from tests.helpers import settings_env, wait_until
from tests.integration.matcher.support import matcher_thread


def _publish_one(s: Settings, n: int = 1) -> None:
    prod = EventProducer(s, "test")
    for i in range(n):
        entry = BillingHistoryEntry(
            entry_type="Payment", description=f"p{i}", amount_minor=-1, date="2024-01-01T00:00:00Z"
        )
        prod.publish(HISTORY.name(s.kafka_topic_prefix), "acct", entry, "acct")
    prod.flush()


def _start(s: Settings, mode: str, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.integration.matcher.faulty_worker", mode, str(log.parent)],
        env=settings_env(s),
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )


def _run_until_exit(s: Settings, mode: str, tmp_path: Path) -> tuple[int, str]:
    """The faulty worker, left to end by itself: its exit code and its log."""
    log = tmp_path / "faulty.log"
    proc = _start(s, mode, log)
    try:
        code = proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
    return code, log.read_text(errors="replace")


def test_a_crashed_agent_ends_the_process_with_a_non_zero_code(kafka_settings: Settings, tmp_path: Path) -> None:
    _publish_one(kafka_settings)
    code, text = _run_until_exit(kafka_settings, "raise", tmp_path)
    assert code == EXIT_CRASHED, text
    assert "boom: the agent failed on purpose" in text


def test_a_stop_that_hangs_is_killed_after_the_timeout(kafka_settings: Settings, tmp_path: Path) -> None:
    _publish_one(kafka_settings)
    log = tmp_path / "faulty.log"
    proc = _start(kafka_settings, "hang", log)
    try:
        wait_until(lambda: "refusing to stop" in log.read_text(errors="replace"), timeout=60, what="record in hand")
        began = time.monotonic()
        proc.terminate()
        code = proc.wait(30)
        took = time.monotonic() - began
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == EXIT_STOP_TIMEOUT, log.read_text(errors="replace")
    assert took < 15


def test_a_record_skipped_by_faust_holds_the_commit_and_ends_the_worker(
    kafka_settings: Settings, tmp_path: Path
) -> None:
    s = kafka_settings
    _publish_one(s, 3)
    code, text = _run_until_exit(s, "drop", tmp_path)
    assert code == EXIT_CRASHED, text
    assert "offset 0 was fetched but never processed while 2 later record(s) were" in text
    lags = group_lag(s, f"{s.kafka_topic_prefix}faulty-drop", [HISTORY.name(s.kafka_topic_prefix)])
    assert sum(pl.lag for pl in lags) == 3, lags  # nothing committed past the skipped record: a restart re-reads it


def test_a_stalled_worker_ends_and_leaves_fausts_view_of_its_partitions_in_the_log(
    kafka_settings: Settings, tmp_path: Path
) -> None:
    """The only trace a rare stall leaves: which partitions faust fetched, paused or dropped, and where each task
    waited, logged before the worker ends (services/matcher/runtime.py)."""
    s = kafka_settings
    _publish_one(s)
    code, text = _run_until_exit(s, "stall", tmp_path)
    assert code == EXIT_CRASHED, text
    assert "WorkerStalled: 1 record waiting, none processed (on purpose)" in text
    topic = HISTORY.name(s.kafka_topic_prefix)
    assert f"stall: {topic}[0] active read=" in text, text
    assert f"stall: channel {topic}: queued=0/" in text, text
    assert "stall: consumer flow active=True, app flow control active=True" in text, text
    assert "stall: agent " in text and "faulty > sleep (" in text, text  # the agent, parked in its sleep
    # faust's consumer thread (a stop waits for it to shut down): its loop's tasks and every thread's stack
    assert "stall: consumer thread task " in text and "aiokafka" in text, text
    assert "stall: thread MainThread is in " in text and "_log_stall_state (" in text, text


def test_a_stop_that_lands_in_the_group_join_ends_cleanly(
    kafka_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A SIGTERM right after a start lands in the worker's first group join (CI: 1 in ~10 runs of the stop test).

    faust's rebalance callback, seeing the app stopping, closed the Kafka client from the main event loop: the
    client's metadata task, which lives on the consumer thread's loop, was cancelled, the join went on as group
    leader and waited for a metadata update that nothing would make, and the consumer thread never shut down
    (faust_patches fix 8). Here the stop is made to land exactly there: the first revocation of the join waits
    until the worker is stopping before faust handles it."""
    s = kafka_settings
    stop = StopSignal()
    handled: list[bool] = []
    metadata_task_alive: list[bool] = []
    original = faust.App._on_partitions_revoked

    async def revoked_once_stopping(self: faust.App, revoked: Any) -> None:
        stop.set()
        for _ in range(200):  # the supervisor sees the signal within 0.2 s and stops the worker
            if self.should_stop:
                break
            await asyncio.sleep(0.05)
        handled.append(self.should_stop)
        await original(self, revoked)
        # The client's metadata task, on the consumer thread's loop: the join after this callback needs it (a
        # leader's assignment waits for a metadata update). faust's close cancelled it from this loop.
        await asyncio.sleep(0.5)
        task = self.consumer._thread._consumer._client._sync_task  # type: ignore[attr-defined]
        metadata_task_alive.append(task is not None and not task.done() and not task.cancelling())

    monkeypatch.setattr(faust.App, "_on_partitions_revoked", revoked_once_stopping)
    # Its exit joins the worker and fails on any error it ended with: WorkerStopTimeout before fix 8, when the
    # join was left waiting for metadata.
    with matcher_thread(s, stop, stop_timeout_s=10.0):
        wait_until(lambda: bool(metadata_task_alive) or None, timeout=60, what="the revocation handled")
    assert handled == [True], handled  # the stop did land in the join, once
    assert metadata_task_alive == [True]  # faust's close from the wrong loop cancelled it (before fix 8)
