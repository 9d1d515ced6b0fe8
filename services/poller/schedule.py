"""Cron schedules of the poller jobs (pure: the clock is passed in). Cron times are UTC.

Croniter accepts a sixth field for seconds (`* * * * * */2`), which tests use for fast ticks.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime

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

    def next_due(self) -> tuple[datetime, list[str]]:
        """The earliest tick and every job due at it (in the order the schedule was given)."""
        tick = min(self._next.values())
        return tick, [j for j in self.crons if self._next[j] == tick]

    def advance(self, jobs: list[str], tick: datetime, now: datetime) -> None:
        """Next tick of each job after this one; ticks missed while a poll ran are skipped, not replayed."""
        for j in jobs:
            self._next[j] = self._after(j, max(tick, now))
