"""A failed scheduled poll is retried with backoff, not left until the job's next tick (a day for history)."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import SecretStr

from services.poller import main as poller_main
from services.poller.poller import PollResult
from services.poller.schedule import PollRetries
from shared.settings import Settings

T0 = datetime(2026, 5, 1, 2, 0, tzinfo=UTC)


class FakeTime:
    """The clock and the stop signal of the poller loop: waiting moves the clock; it stops at `end`."""

    def __init__(self, end: datetime) -> None:
        self.now = T0
        self.end = end

    def clock(self) -> datetime:
        return self.now

    def is_set(self) -> bool:
        return self.now >= self.end

    def wait(self, seconds: float) -> bool:
        self.now = min(self.end, self.now + timedelta(seconds=seconds))
        return self.is_set()

    def set(self, *_: object) -> None:
        self.now = self.end


class FakePoller:
    """History fails `failures` times (DigitalOcean down), then succeeds; every call is recorded."""

    def __init__(self, time: FakeTime, failures: int) -> None:
        self.time = time
        self.failures = failures
        self.calls: list[tuple[str, datetime, datetime | None, bool]] = []

    def poll(self, job: str, *, tick: datetime | None = None, missed_only: bool = False, **_: Any) -> list[PollResult]:
        self.calls.append((job, self.time.now, tick, missed_only))
        self.time.now += timedelta(seconds=1)  # a poll takes a second
        if job == "history" and self.failures > 0:
            self.failures -= 1
            return [PollResult(job, "acme", "failed", error="DigitalOcean answered 503")]
        return [PollResult(job, "acme", "ok")]


def run_poller(monkeypatch: pytest.MonkeyPatch, failures: int, hours: float) -> list[tuple[str, datetime, Any, bool]]:
    time = FakeTime(T0 + timedelta(hours=hours))
    poller = FakePoller(time, failures)
    monkeypatch.setattr(poller_main, "build", lambda *a, **k: (poller, lambda: None))
    monkeypatch.setattr(poller_main.metrics, "serve", lambda *a, **k: None)
    settings = Settings(
        _env_file=None,
        digitalocean_token=SecretStr("t"),
        poll_catch_up=False,
        poll_history_cron="23 2 * * *",
        poll_balance_cron="0 0 1 1 *",
        poll_resources_cron="0 0 1 1 *",
        poll_retry_initial_s=30,
        poll_retry_max_s=600,
    )
    poller_main.run(settings, time, clock=time.clock)  # type: ignore[arg-type]
    return [c for c in poller.calls if c[0] == "history"]


def test_a_failed_scheduled_poll_is_retried_with_backoff_until_it_succeeds(monkeypatch: pytest.MonkeyPatch) -> None:
    """History fails at 02:23 three times: it is polled again within minutes (same tick, only the accounts
    still missing it), with growing waits, and not again once it succeeded. It used to wait until 02:23
    the next day."""
    calls = run_poller(monkeypatch, failures=3, hours=6)
    tick = T0.replace(minute=23)
    assert [c[2] for c in calls] == [tick] * 4
    assert [c[3] for c in calls] == [False, True, True, True]  # retries poll only what missed the tick
    gaps = [(b[1] - a[1]).total_seconds() for a, b in itertools.pairwise(calls)]
    assert 15 <= gaps[0] <= 31 and gaps[0] < gaps[1] <= 61 and gaps[2] <= 121, gaps
    assert calls[-1][1] < tick + timedelta(minutes=5)


def test_retries_stop_at_the_next_tick(monkeypatch: pytest.MonkeyPatch) -> None:
    """DigitalOcean down all day: retries are capped (POLL_RETRY_MAX_S) and the next tick takes over."""
    calls = run_poller(monkeypatch, failures=10_000, hours=25)
    gaps = [(b[1] - a[1]).total_seconds() for a, b in itertools.pairwise(calls)]
    assert max(gaps) <= 601
    assert len(calls) > 100
    assert calls[-1][2] == T0.replace(minute=23) + timedelta(days=1)  # the next day's tick, polled as scheduled


def test_poll_retries_are_floored_jittered_and_capped() -> None:
    r = PollRetries(30, 600, rng=lambda: 1.0)
    now = T0
    waits = [(r.failed("history", T0, now) - now).total_seconds() for _ in range(8)]
    assert waits == [30, 60, 120, 240, 480, 600, 600, 600]
    assert r.next_due() == now + timedelta(seconds=600)
    assert r.due(now) == [] and r.due(now + timedelta(seconds=600)) == [("history", T0, 8)]
    r.succeeded("history")
    assert r.next_due() is None
    low = PollRetries(30, 600, rng=lambda: 0.0)
    assert (low.failed("balance", T0, now) - now).total_seconds() == 15
