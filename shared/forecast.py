"""Month-to-date accrual and the month-end forecast, from balance snapshots. Pure: no I/O, no clock.

DigitalOcean's balance carries `month_to_date_usage`: what the month has cost so far, before tax, reset at
each month start. The poller records one snapshot per poll (hourly), so the snapshots of an account are the
month's accrual curve. Both the alerter (budget thresholds on the forecast) and the API (`/forecast`) ask this
module the same question of the same snapshots, so they never disagree.

The method (stated in every answer as `method`):
  forecast = month-to-date usage + run rate × hours left in the month, where the run rate is the usage of
  the last `window_days` complete days (a day = the accrual between the last snapshots of two consecutive
  days; across a month start the new month's accrual counts from zero) divided by their hours. With no
  complete day yet: the month so far (MTD ÷ hours elapsed, from 6 hours on), else the previous month's
  total spread over its hours, else no growth.
Measured error: `backtest` replays past months, forecasting at day 7, 14 and 21 from the snapshots known
then, against the month's actual usage (its invoice's net amount, or its last snapshot).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal

METHOD = (
    "month-to-date usage + run rate x hours left in the month; run rate = usage of the last {window} complete "
    "days / their hours (fallbacks: the month so far, then the previous month)"
)
MIN_HOURS_MONTH_SO_FAR = 6
CHECKPOINT_DAYS = (7, 14, 21)


@dataclass(frozen=True)
class Snapshot:
    """One balance poll of one account: when, and the month-to-date usage then (minor units)."""

    at: datetime
    mtd_usage_minor: int


@dataclass(frozen=True)
class Forecast:
    period: date
    as_of: datetime
    mtd_minor: int
    forecast_minor: int
    hours_elapsed: Decimal
    hours_left: Decimal
    run_rate_minor_per_day: Decimal
    basis: str  # trailing_days | month_so_far | previous_month | none
    days_used: int
    method: str


@dataclass(frozen=True)
class CheckpointError:
    day: int
    as_of: datetime
    forecast_minor: int
    error_pct: Decimal  # (forecast - actual) / actual x 100


@dataclass(frozen=True)
class MonthAccuracy:
    period: date
    actual_minor: int
    actual_source: str  # invoice_net | last_snapshot
    checkpoints: list[CheckpointError] = field(default_factory=list)

    @property
    def mean_abs_error_pct(self) -> Decimal | None:
        if not self.checkpoints:
            return None
        total = sum((abs(c.error_pct) for c in self.checkpoints), Decimal(0))
        return (total / len(self.checkpoints)).quantize(Decimal("0.1"), ROUND_HALF_UP)


def month_start(d: date | datetime) -> date:
    return date(d.year, d.month, 1)


def next_month(d: date) -> date:
    return date(d.year + (d.month == 12), d.month % 12 + 1, 1)


def month_bounds(period: date) -> tuple[datetime, datetime]:
    start = datetime(period.year, period.month, 1, tzinfo=UTC)
    return start, datetime.combine(next_month(period), datetime.min.time(), tzinfo=UTC)


def _hours(delta: timedelta) -> Decimal:
    return Decimal(int(delta.total_seconds())) / Decimal(3600)


def _round(x: Decimal) -> int:
    return int(x.quantize(Decimal(1), ROUND_HALF_UP))


def ordered(snapshots: Iterable[Snapshot]) -> list[Snapshot]:
    return sorted(snapshots, key=lambda s: s.at)


def daily_usage(snapshots: Sequence[Snapshot]) -> dict[date, int]:
    """Usage per complete day: the accrual between the last snapshots of a day and of the day before.

    A day is complete once a later day has a snapshot. The first day of a month counts from zero (the
    month-to-date usage resets); a day whose previous day has no snapshot is unknown (left out), as is a day
    whose accrual went down within a month (a correction, not usage)."""
    last_of_day: dict[date, Snapshot] = {}
    for s in ordered(snapshots):
        last_of_day[s.at.astimezone(UTC).date()] = s
    days = sorted(last_of_day)
    out: dict[date, int] = {}
    for d in days[:-1]:  # the last day with a snapshot is still running
        cur = last_of_day[d].mtd_usage_minor
        if d.day == 1:
            out[d] = cur
            continue
        prev = last_of_day.get(d - timedelta(days=1))
        if prev is None or prev.mtd_usage_minor > cur:
            continue
        out[d] = cur - prev.mtd_usage_minor
    return out


def forecast(
    snapshots: Sequence[Snapshot],
    *,
    as_of: datetime | None = None,
    previous_month_total_minor: int | None = None,
    window_days: int = 7,
) -> Forecast | None:
    """The month-end forecast as of `as_of` (default: the last snapshot), from snapshots up to then.

    None when no snapshot of `as_of`'s month is known (nothing to accrue from)."""
    known = [s for s in ordered(snapshots) if as_of is None or s.at <= as_of]
    if not known:
        return None
    last = known[-1]
    at = as_of or last.at
    period = month_start(at.astimezone(UTC))
    if month_start(last.at.astimezone(UTC)) != period:
        return None
    start, end = month_bounds(period)
    mtd = last.mtd_usage_minor
    elapsed = _hours(last.at - start)
    left = max(Decimal(0), _hours(end - last.at))
    daily = daily_usage(known)
    window = [daily[d] for d in sorted(daily) if d < last.at.astimezone(UTC).date()][-window_days:]
    if window:
        per_hour = Decimal(sum(window)) / (Decimal(24) * len(window))
        basis, used = "trailing_days", len(window)
    elif elapsed >= MIN_HOURS_MONTH_SO_FAR:
        per_hour = Decimal(mtd) / elapsed
        basis, used = "month_so_far", 0
    elif previous_month_total_minor is not None:
        prev_start, prev_end = month_bounds(month_start(start - timedelta(days=1)))
        per_hour = Decimal(previous_month_total_minor) / _hours(prev_end - prev_start)
        basis, used = "previous_month", 0
    else:
        per_hour, basis, used = Decimal(0), "none", 0
    return Forecast(
        period=period,
        as_of=last.at,
        mtd_minor=mtd,
        forecast_minor=mtd + _round(per_hour * left),
        hours_elapsed=elapsed.quantize(Decimal("0.01")),
        hours_left=left.quantize(Decimal("0.01")),
        run_rate_minor_per_day=(per_hour * 24).quantize(Decimal("0.01"), ROUND_HALF_UP),
        basis=basis,
        days_used=used,
        method=METHOD.format(window=window_days),
    )


def month_totals(snapshots: Sequence[Snapshot]) -> dict[date, int]:
    """Each month's usage as its last snapshot saw it (a month's last poll, near its end)."""
    out: dict[date, int] = {}
    for s in ordered(snapshots):
        out[month_start(s.at.astimezone(UTC))] = s.mtd_usage_minor
    return out


def backtest(
    snapshots: Sequence[Snapshot],
    actuals: Mapping[date, int] | None = None,
    *,
    checkpoints: Sequence[int] = CHECKPOINT_DAYS,
    window_days: int = 7,
) -> list[MonthAccuracy]:
    """The forecast's error on every past month the snapshots cover, oldest first.

    For each complete month (a later month has snapshots) and each checkpoint day N, the forecast made from
    the snapshots known at the start of day N+1 is compared with the month's actual usage: its invoice's net
    amount when given in `actuals` (DigitalOcean's final word), else the month's last snapshot."""
    snaps = ordered(snapshots)
    if not snaps:
        return []
    totals = month_totals(snaps)
    current = month_start(snaps[-1].at.astimezone(UTC))
    out: list[MonthAccuracy] = []
    for period in sorted(totals):
        if period >= current:
            continue
        actual, source = (
            (actuals[period], "invoice_net") if actuals and period in actuals else (totals[period], "last_snapshot")
        )
        acc = MonthAccuracy(period=period, actual_minor=actual, actual_source=source)
        start, end = month_bounds(period)
        prev_total = totals.get(month_start(start - timedelta(days=1)))
        for day in checkpoints:
            cut = start + timedelta(days=day)
            if cut >= end:
                continue
            f = forecast(snaps, as_of=cut, previous_month_total_minor=prev_total, window_days=window_days)
            if f is None or f.period != period or actual == 0:
                continue
            err = (Decimal(f.forecast_minor - actual) * 100 / Decimal(actual)).quantize(Decimal("0.1"), ROUND_HALF_UP)
            acc.checkpoints.append(
                CheckpointError(day=day, as_of=f.as_of, forecast_minor=f.forecast_minor, error_pct=err)
            )
        if acc.checkpoints:
            out.append(acc)
    return out
