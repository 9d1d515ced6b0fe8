"""Which alerts the data calls for: budget thresholds, daily spikes, new products and resources, their ids."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from services.alerter.domain import (
    CostItem,
    Rules,
    alert_id,
    balance_alerts,
    budget_alerts,
    new_cost_alerts,
    slack_payload,
    spike_alert,
)
from shared.forecast import Snapshot, daily_usage, forecast

MAY = datetime(2026, 5, 1, tzinfo=UTC)
RULES = Rules()


def series(start: datetime, per_day: list[int]) -> list[Snapshot]:
    out, mtd, day = [], 0, start
    for amount in per_day:
        if day.day == 1:
            mtd = 0
        for h in range(0, 24, 6):
            out.append(Snapshot(day + timedelta(hours=h, minutes=7), mtd + amount * h // 24))
        mtd += amount
        day += timedelta(days=1)
    return out


def test_alert_ids_name_the_tuple_and_nothing_else() -> None:
    a = alert_id("default", "budget_actual", "", 80, date(2026, 5, 1))
    assert a == alert_id("default", "budget_actual", "", 80, date(2026, 5, 1))
    others = {
        alert_id("other", "budget_actual", "", 80, date(2026, 5, 1)),
        alert_id("default", "budget_forecast", "", 80, date(2026, 5, 1)),
        alert_id("default", "budget_actual", "", 100, date(2026, 5, 1)),
        alert_id("default", "budget_actual", "", 80, date(2026, 6, 1)),
        alert_id("default", "budget_actual", "x", 80, date(2026, 5, 1)),
    }
    assert a not in others and len(others) == 5


def test_budget_thresholds_on_actual_and_on_forecast_once_enough_days() -> None:
    snaps = series(MAY, [1000] * 10)  # 10.00 a day: 90.00 after 9 complete days, ~310 forecast
    fc = forecast(snaps)
    assert fc is not None
    alerts = budget_alerts("default", 20000, fc, daily_usage(snaps), RULES, "USD")
    got = {(a.kind, a.threshold_pct) for a in alerts}
    assert got == {("budget_forecast", 50), ("budget_forecast", 80), ("budget_forecast", 100)} | (
        {("budget_actual", 50)} if fc.mtd_minor >= 10000 else set()
    )
    early = series(MAY, [1000] * 3)  # two complete days: below forecast_min_days
    fc2 = forecast(early)
    assert fc2 is not None
    assert not [
        a for a in budget_alerts("default", 2000, fc2, daily_usage(early), RULES, "USD") if "forecast" in a.kind
    ]


@settings(max_examples=80, deadline=None)
@given(
    st.lists(st.integers(0, 20_000), min_size=1, max_size=25),
    st.integers(1, 200_000),
    st.lists(st.integers(1, 150), min_size=1, max_size=4, unique=True),
)
def test_actual_alerts_are_exactly_the_thresholds_reached(per_day: list[int], budget: int, pcts: list[int]) -> None:
    rules = Rules(thresholds=tuple(sorted(pcts)))
    snaps = series(MAY, per_day)
    fc = forecast(snaps)
    assert fc is not None
    actual = {
        a.threshold_pct
        for a in budget_alerts("a", budget, fc, daily_usage(snaps), rules, "USD")
        if a.kind == "budget_actual"
    }
    assert actual == {p for p in pcts if fc.mtd_minor >= (budget * p + 50) // 100}  # amounts round half up
    forecasts = [
        a for a in budget_alerts("a", budget, fc, daily_usage(snaps), rules, "USD") if a.kind == "budget_forecast"
    ]
    assert all(a.observed_minor >= a.reference_minor for a in forecasts)


def test_a_spike_is_one_day_far_above_the_median_of_its_recent_days() -> None:
    daily = {date(2026, 5, d): 1000 for d in range(1, 10)} | {date(2026, 5, 10): 6000, date(2026, 5, 11): 1100}
    spike = spike_alert("default", daily, date(2026, 5, 10), RULES, "USD")
    assert spike is not None and spike.subject == "2026-05-10" and spike.observed_minor == 6000
    assert spike.reference_minor == 1000 and spike.period == "2026-05-01"
    assert spike_alert("default", daily, date(2026, 5, 11), RULES, "USD") is None  # the median shrugs the spike off
    assert spike_alert("default", daily, date(2026, 5, 9), RULES, "USD") is None
    small = {d: v // 100 for d, v in daily.items()}  # 10x but only 0.50 more: under the minimum increase
    assert spike_alert("default", small, date(2026, 5, 10), RULES, "USD") is None
    young = {date(2026, 5, 1): 100, date(2026, 5, 2): 100, date(2026, 5, 3): 9000}
    assert spike_alert("default", young, date(2026, 5, 3), RULES, "USD") is None  # fewer than 3 days to judge


def test_balance_alerts_judge_the_day_that_just_ended() -> None:
    per_day = [1000] * 9 + [8000] + [1000] * 4
    snaps = series(MAY, per_day)
    seen = []
    for i in range(1, len(snaps) + 1):
        fc = forecast(snaps[:i])
        assert fc is not None
        seen += [a.alert_id for a in balance_alerts("default", snaps[:i], fc, None, RULES, "USD")]
    spikes = set(seen)
    assert len(spikes) == 1  # raised at every snapshot of May 11, the same alert each time
    assert alert_id("default", "anomaly_daily_spike", "2026-05-10", None, date(2026, 5, 1)) in spikes


def test_new_products_and_resources_need_history_and_significance() -> None:
    items = [
        CostItem("Droplets", "Droplets", 5000),
        CostItem("GPU Droplets", "GPU Droplets", 3000),
        CostItem("Functions", "Functions", 500),
    ]
    at = datetime(2026, 5, 1, tzinfo=UTC)
    args = ("default", "anomaly_new_product", date(2026, 4, 1), at, 8500, items)
    got = new_cost_alerts(*args, {"Droplets"}, True, RULES, "USD")
    assert [a.subject for a in got] == ["GPU Droplets"]  # Functions: under 10.00
    assert got[0].message.startswith("default: new product GPU Droplets cost 30.00 USD in April 2026")
    assert new_cost_alerts(*args, {"Droplets"}, False, RULES, "USD") == []  # the first invoice ever: all new
    strict = Rules(new_cost_share_pct=40)
    assert new_cost_alerts(*args, {"Droplets"}, True, strict, "USD") == []  # 35% of the net is not 40%


def test_the_webhook_payload_is_slack_shaped_and_carries_the_alert() -> None:
    snaps = series(MAY, [1000] * 9 + [9000, 1000])
    fc = forecast(snaps)
    assert fc is not None
    alert = next(a for a in balance_alerts("default", snaps, fc, None, RULES, "USD"))
    body = slack_payload(alert, "default")
    assert body["text"].startswith(":rotating_light: *Usage spike*") and alert.message in body["text"]
    assert body["blocks"][0]["type"] == "header"
    assert body["cloudbill"]["alert_id"] == alert.alert_id and body["cloudbill"]["account"] == "default"
