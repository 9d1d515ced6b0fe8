"""The month-end forecast: daily usage from snapshots, the run rate, its fallbacks, and the backtest."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from shared.forecast import Snapshot, backtest, daily_usage, forecast, month_bounds

MAY = datetime(2026, 5, 1, tzinfo=UTC)


def series(start: datetime, per_day: list[int], step_h: int = 1) -> list[Snapshot]:
    """Snapshots at :07 every `step_h` hours; usage accrues evenly within each day; resets each month."""
    out, mtd, day = [], 0, start
    for amount in per_day:
        if day.day == 1:
            mtd = 0
        for h in range(0, 24, step_h):
            out.append(Snapshot(day + timedelta(hours=h, minutes=7), mtd + amount * h // 24))
        mtd += amount
        day += timedelta(days=1)
    return out


def test_daily_usage_is_the_accrual_between_days_and_restarts_at_the_month() -> None:
    snaps = series(datetime(2026, 4, 28, tzinfo=UTC), [240, 480, 240, 720, 96, 120])
    usage = daily_usage(snaps)
    # Apr 29: 23:07 of the 29th minus 23:07 of the 28th = 1/24 of the 28th + 23/24 of the 29th.
    assert usage[date(2026, 4, 29)] == (240 - 240 * 23 // 24) + 480 * 23 // 24
    assert usage[date(2026, 5, 1)] == 720 * 23 // 24  # a new month counts from zero
    assert usage[date(2026, 5, 2)] == (720 - 720 * 23 // 24) + 96 * 23 // 24
    assert date(2026, 5, 3) not in usage  # the last day is still running
    assert date(2026, 4, 28) not in usage  # no day before it: unknown


def test_flat_usage_is_forecast_exactly() -> None:
    snaps = series(MAY - timedelta(days=10), [2400] * 10 + [2400] * 14)  # 24.00 a day since Apr 21
    fc = forecast(snaps)
    assert fc is not None and fc.period == date(2026, 5, 1) and fc.basis == "trailing_days" and fc.days_used == 7
    assert fc.run_rate_minor_per_day == 2400
    assert abs(fc.forecast_minor - 31 * 2400) <= 100  # the :07 offset of the last snapshot


def test_fallbacks_month_so_far_then_previous_month_then_none() -> None:
    first_hours = [Snapshot(MAY + timedelta(hours=h, minutes=7), 100 * h) for h in range(8)]
    fc = forecast(first_hours)
    assert fc is not None and fc.basis == "month_so_far"
    early = first_hours[:3]
    fc = forecast(early, previous_month_total_minor=72000)
    assert fc is not None and fc.basis == "previous_month"
    assert fc.run_rate_minor_per_day == 2400  # 720.00 over April's 30 days
    fc = forecast(early)
    assert fc is not None and fc.basis == "none" and fc.forecast_minor == fc.mtd_minor
    assert forecast([]) is None


def test_a_snapshot_of_another_month_gives_no_forecast_for_this_one() -> None:
    snaps = series(datetime(2026, 4, 20, tzinfo=UTC), [100] * 5)
    assert forecast(snaps, as_of=MAY + timedelta(days=3)) is None


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=50_000), min_size=2, max_size=40), st.integers(1, 6))
def test_forecast_never_below_month_to_date_and_equal_at_month_end(per_day: list[int], step: int) -> None:
    step_h = [1, 2, 3, 4, 6, 8][step - 1]
    snaps = series(MAY - timedelta(days=len(per_day) // 2), per_day, step_h)
    fc = forecast(snaps)
    assert fc is not None and fc.forecast_minor >= fc.mtd_minor
    _, end = month_bounds(fc.period)
    # A forecast made at the very end of the month is the month to date itself.
    # (1 µs before the end: a whole second left is worth a cent at $432 a day, which hypothesis finds.)
    last = Snapshot(end - timedelta(microseconds=1), fc.mtd_minor + 5)
    at_end = forecast([*snaps, last])
    assert at_end is not None and at_end.forecast_minor == at_end.mtd_minor


def test_backtest_measures_each_past_month_against_its_invoice() -> None:
    days = [3000] * 30 + [3100] * 31 + [2000] * 14  # April, May, June so far
    snaps = series(datetime(2026, 4, 1, tzinfo=UTC), days)
    acc = backtest(snaps, {date(2026, 5, 1): 31 * 3100 + 3100})  # May's invoice says one day more
    assert [m.period for m in acc] == [date(2026, 4, 1), date(2026, 5, 1)]
    april, may = acc
    assert april.actual_source == "last_snapshot" and may.actual_source == "invoice_net"
    assert [c.day for c in may.checkpoints] == [7, 14, 21]
    assert all(-4 < c.error_pct < -2 for c in may.checkpoints)  # ~1/32 short: the invoice's extra day
    assert may.mean_abs_error_pct is not None and 2 < may.mean_abs_error_pct < 4
