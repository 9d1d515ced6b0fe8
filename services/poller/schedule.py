"""Cron schedules of the poller jobs (pure: the clock is passed in). Cron times are UTC.

Croniter accepts a sixth field for seconds (`* * * * * */2`), which tests use for fast ticks.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta

from croniter import croniter


class ScheduleError(ValueError):
    pass


class Schedule:
    def __init__(self, crons: Mapping[str, str], now: datetime) -> None:
        for job, expr in crons.items():
            if not croniter.is_valid(expr):
                raise ScheduleError(f"invalid cron expression for the {job} poll: {expr!r}")
        self.crons = dict(crons)
        self._next = {job: self._after(job, now) for job in self.crons}

    def _after(self, job: str, when: datetime) -> datetime:
        when = when if when.tzinfo else when.replace(tzinfo=UTC)
        return croniter(self.crons[job], when.astimezone(UTC)).get_next(datetime)

    def previous(self, job: str, now: datetime) -> datetime:
        """The job's latest tick at or before `now` (what a catch-up at start makes up for)."""
        now = now if now.tzinfo else now.replace(tzinfo=UTC)
        return croniter(self.crons[job], now.astimezone(UTC)).get_prev(datetime)

    def next_due(self) -> tuple[datetime, list[str]]:
        """The earliest tick and every job due at it (in the order the schedule was given)."""
        tick = min(self._next.values())
        return tick, [j for j in self.crons if self._next[j] == tick]

    def advance(self, jobs: list[str], tick: datetime, now: datetime) -> None:
        """Next tick of each job after this one; ticks missed while a poll ran are skipped, not replayed."""
        for j in jobs:
            self._next[j] = self._after(j, max(tick, now))


class PollRetries:
    """Failed polls waiting for another try (pure: the clock is passed in).

    Why: a scheduled poll that fails (DigitalOcean down, the broker restarting) used to wait for the job's next
    tick, a whole day for the billing history. A failed (job, tick) is tried again after `initial_s`, then
    after doubling waits with equal jitter up to `max_s`, until it succeeds or the job's next tick comes (which
    polls anyway, so the retry is dropped)."""

    def __init__(self, initial_s: float, max_s: float, rng: Callable[[], float] = random.random) -> None:
        self.initial_s = initial_s
        self.max_s = max_s
        self.rng = rng
        self._due: dict[str, tuple[datetime, datetime, int]] = {}  # job -> (due, tick, attempt)

    def failed(self, job: str, tick: datetime, now: datetime) -> datetime:
        """The poll of `job` for `tick` failed: when to try again."""
        _, _, attempt = self._due.get(job, (now, tick, 0))
        attempt += 1
        ceiling = min(self.max_s, self.initial_s * 2 ** (attempt - 1))
        due = now + timedelta(seconds=ceiling / 2 + self.rng() * ceiling / 2)
        self._due[job] = (due, tick, attempt)
        return due

    def succeeded(self, job: str) -> None:
        self._due.pop(job, None)

    def superseded(self, job: str) -> None:
        """The job's next tick polls anyway: a pending retry of an older tick is dropped."""
        self._due.pop(job, None)

    def next_due(self) -> datetime | None:
        return min((d for d, _, _ in self._due.values()), default=None)

    def due(self, now: datetime) -> list[tuple[str, datetime, int]]:
        """(job, tick, attempt) of every retry due at `now`, in the order they failed."""
        return [(job, tick, attempt) for job, (d, tick, attempt) in self._due.items() if d <= now]
