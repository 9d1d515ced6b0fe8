"""Which alerts the data calls for. Pure: no I/O, no clock; the same data always yields the same alerts.

Rules (docs/architecture.md, "FinOps outputs"):
- budget_actual:   the month-to-date usage reached `threshold`% of the account's monthly budget;
- budget_forecast: the month-end forecast (shared/forecast.py) reached it, once the month has
                   `forecast_min_days` complete days of usage (the first hours are too noisy to alert on);
- anomaly_daily_spike: a complete day's usage is more than `spike_factor` x the median of its
                   `baseline_days` previous days (at least 3 known) and above it by `min_increase`;
- anomaly_new_product / anomaly_new_resource: on an invoice, a product or a resource absent from the
                   previous `lookback_months` periods' invoices costs at least `new_cost_min` and
                   `new_cost_share_pct`% of the invoice's net amount (only once a previous invoice exists).
Each alert's id names (account, kind, subject, threshold, period): the once-only key (services/alerter).
"""

from __future__ import annotations

import statistics
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from shared.events import AlertKind, BillingAlert
from shared.forecast import Forecast, daily_usage
from shared.forecast import Snapshot as Snapshot
from shared.money import format_minor

ALERT_NAMESPACE = uuid.UUID("0b6f7f0e-4f54-4c5e-9d7e-3a1f18a2c7d1")


@dataclass(frozen=True)
class Rules:
    """The alerting knobs (from Settings; see the README's configuration table)."""

    thresholds: tuple[int, ...] = (50, 80, 100)
    forecast_min_days: int = 3
    spike_factor: Decimal = Decimal(3)
    baseline_days: int = 7
    min_increase_minor: int = 500
    new_cost_min_minor: int = 1000
    new_cost_share_pct: int = 10
    lookback_months: int = 3


def alert_id(account: str, kind: str, subject: str, threshold: int | None, period: date) -> str:
    """The once-only key: the same (account, kind, subject, threshold, period) is the same alert."""
    return str(uuid.uuid5(ALERT_NAMESPACE, f"{account}\x1f{kind}\x1f{subject}\x1f{threshold}\x1f{period.isoformat()}"))


def _alert(
    account: str,
    kind: AlertKind,
    period: date,
    *,
    subject: str = "",
    threshold: int | None = None,
    currency: str,
    budget: int | None = None,
    observed: int,
    reference: int | None,
    detected_at: datetime,
    message: str,
) -> BillingAlert:
    return BillingAlert(
        alert_id=alert_id(account, kind, subject, threshold, period),
        kind=kind,
        period=period.isoformat(),
        subject=subject,
        threshold_pct=threshold,
        currency=currency,
        budget_minor=budget,
        observed_minor=observed,
        reference_minor=reference,
        detected_at=detected_at,
        message=message,
    )


def threshold_amount(budget_minor: int, pct: int) -> int:
    return int((Decimal(budget_minor) * pct / 100).quantize(Decimal(1), ROUND_HALF_UP))


def budget_alerts(
    account: str, budget_minor: int, fc: Forecast, daily: Mapping[date, int], rules: Rules, currency: str
) -> list[BillingAlert]:
    """Every threshold the month-to-date usage or (with enough days) the forecast has reached."""
    out: list[BillingAlert] = []
    if budget_minor <= 0:
        return out

    def money(m: int) -> str:
        return f"{format_minor(m, currency)} {currency}"

    days_in_month = sum(1 for d in daily if d >= fc.period and d < fc.as_of.astimezone(UTC).date())
    for pct in rules.thresholds:
        amount = threshold_amount(budget_minor, pct)
        if fc.mtd_minor >= amount:
            out.append(
                _alert(
                    account,
                    "budget_actual",
                    fc.period,
                    threshold=pct,
                    currency=currency,
                    budget=budget_minor,
                    observed=fc.mtd_minor,
                    reference=amount,
                    detected_at=fc.as_of,
                    message=f"{account}: month-to-date usage {money(fc.mtd_minor)} reached {pct}% of the "
                    f"{fc.period:%B %Y} budget {money(budget_minor)}",
                )
            )
        if days_in_month >= rules.forecast_min_days and fc.forecast_minor >= amount:
            out.append(
                _alert(
                    account,
                    "budget_forecast",
                    fc.period,
                    threshold=pct,
                    currency=currency,
                    budget=budget_minor,
                    observed=fc.forecast_minor,
                    reference=amount,
                    detected_at=fc.as_of,
                    message=f"{account}: month-end forecast {money(fc.forecast_minor)} reaches {pct}% of the "
                    f"{fc.period:%B %Y} budget {money(budget_minor)} (month to date {money(fc.mtd_minor)})",
                )
            )
    return out


def spike_alert(account: str, daily: Mapping[date, int], day: date, rules: Rules, currency: str) -> BillingAlert | None:
    """`day`'s usage against the median of its recent days; None when it is no spike or cannot be judged."""
    usage = daily.get(day)
    if usage is None:
        return None
    recent = [daily[d] for d in sorted(daily) if day - timedelta(days=rules.baseline_days) <= d < day]
    if len(recent) < 3:
        return None
    baseline = int(Decimal(str(statistics.median(recent))).quantize(Decimal(1), ROUND_HALF_UP))
    if usage - baseline < rules.min_increase_minor or Decimal(usage) <= rules.spike_factor * baseline:
        return None
    ratio = f"{Decimal(usage) / baseline:.1f}x" if baseline else "from nothing"
    return _alert(
        account,
        "anomaly_daily_spike",
        date(day.year, day.month, 1),
        subject=day.isoformat(),
        currency=currency,
        observed=usage,
        reference=baseline,
        detected_at=datetime.combine(day + timedelta(days=1), time(), tzinfo=UTC),
        message=f"{account}: usage on {day.isoformat()} was {format_minor(usage, currency)} {currency}, {ratio} the "
        f"median of the {len(recent)} days before ({format_minor(baseline, currency)} {currency})",
    )


def balance_alerts(
    account: str,
    snapshots: Sequence[Snapshot],
    fc: Forecast,
    budget_minor: int | None,
    rules: Rules,
    currency: str,
) -> list[BillingAlert]:
    """What one balance snapshot can raise: budget thresholds now, and a spike on the day that just ended."""
    daily = daily_usage(snapshots)
    out = budget_alerts(account, budget_minor, fc, daily, rules, currency) if budget_minor else []
    last_complete = fc.as_of.astimezone(UTC).date() - timedelta(days=1)
    spike = spike_alert(account, daily, last_complete, rules, currency)
    if spike is not None:
        out.append(spike)
    return out


@dataclass(frozen=True)
class CostItem:
    """A product's or a resource's total on one invoice (from the read model's attributed lines)."""

    key: str  # the product name, or the resource (`kind:name`, or its id when attributed)
    label: str
    amount_minor: int


def new_cost_alerts(
    account: str,
    kind: AlertKind,
    period: date,
    invoice_date: datetime,
    net_minor: int,
    items: Sequence[CostItem],
    seen_before: set[str],
    had_previous_invoice: bool,
    rules: Rules,
    currency: str,
) -> list[BillingAlert]:
    """Products (or resources) on this invoice that no earlier invoice of the lookback had, with significant cost."""
    if not had_previous_invoice or net_minor <= 0:
        return []
    floor = max(rules.new_cost_min_minor, threshold_amount(net_minor, rules.new_cost_share_pct))
    what = "product" if kind == "anomaly_new_product" else "resource"
    out = []
    for item in items:
        if item.key in seen_before or item.amount_minor < floor:
            continue
        share = (Decimal(item.amount_minor) * 100 / Decimal(net_minor)).quantize(Decimal(1), ROUND_HALF_UP)
        out.append(
            _alert(
                account,
                kind,
                period,
                subject=item.key,
                currency=currency,
                observed=item.amount_minor,
                reference=net_minor,
                detected_at=invoice_date,
                message=f"{account}: new {what} {item.label} cost {format_minor(item.amount_minor, currency)} "
                f"{currency} in {period:%B %Y} ({share}% of the invoice's net), absent the "
                f"{rules.lookback_months} months before",
            )
        )
    return out


def slack_payload(alert: BillingAlert, account: str) -> dict[str, Any]:
    """Slack-compatible (incoming webhook): `text` for Slack, the alert itself under `cloudbill` for machines."""
    title = {
        "budget_actual": "Budget threshold reached",
        "budget_forecast": "Budget threshold forecast",
        "anomaly_daily_spike": "Usage spike",
        "anomaly_new_product": "New product with significant cost",
        "anomaly_new_resource": "New resource with significant cost",
    }[alert.kind]
    return {
        "text": f":rotating_light: *{title}* — {alert.message}",
        "blocks": [
            {"type": "header", "text": {"type": "plain_text", "text": title}},
            {"type": "section", "text": {"type": "mrkdwn", "text": alert.message}},
            {
                "type": "context",
                "elements": [{"type": "mrkdwn", "text": f"cloudbill alert `{alert.alert_id}` · account `{account}`"}],
            },
        ],
        "cloudbill": {"account": account, **alert.model_dump(mode="json")},
    }
