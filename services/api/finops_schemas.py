"""Response models of the FinOps routes: forecast (with its measured error) and alerts."""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Any

from pydantic import BaseModel, Field

from services.api.finops import AccountForecast
from services.api.schemas import money
from shared.events import AlertKind


class CheckpointOut(BaseModel):
    day: int = Field(description="The forecast was made with the snapshots known at the end of this day.")
    as_of: datetime
    forecast_minor: int
    error_pct: Decimal = Field(description="(forecast - actual) / actual x 100.")


class MonthAccuracyOut(BaseModel):
    period: date
    actual_minor: int
    actual_source: str = Field(description="invoice_net (DigitalOcean's invoice) or last_snapshot.")
    mean_abs_error_pct: Decimal | None
    checkpoints: list[CheckpointOut]


class AccountForecastOut(BaseModel):
    account: str
    currency: str
    period: date | None = Field(description="The month forecast (the latest snapshot's).")
    as_of: datetime | None
    month_to_date_minor: int | None
    month_to_date: str | None
    forecast_minor: int | None = Field(description="Month-end usage, pre-tax.")
    forecast: str | None
    run_rate_per_day_minor: Decimal | None
    basis: str | None = Field(description="trailing_days, month_so_far, previous_month or none.")
    days_used: int | None
    method: str | None
    budget_minor: int | None
    budget: str | None
    budget_ratio: Decimal | None = Field(description="Month to date / budget.")
    forecast_budget_ratio: Decimal | None = Field(description="Forecast / budget.")
    accuracy: list[MonthAccuracyOut] = Field(description="The method's error on past months, replayed.")
    mean_abs_error_pct: Decimal | None = Field(description="Mean absolute error over every past checkpoint.")

    @classmethod
    def build(cls, f: AccountForecast) -> AccountForecastOut:
        fc, cur, budget = f.forecast, f.currency, f.budget_minor
        points = [abs(c.error_pct) for m in f.accuracy for c in m.checkpoints]

        def ratio(x: int) -> Decimal | None:
            return (Decimal(x) / budget).quantize(Decimal("0.0001")) if budget else None

        return cls(
            account=f.account,
            currency=cur,
            period=fc.period if fc else None,
            as_of=fc.as_of if fc else None,
            month_to_date_minor=fc.mtd_minor if fc else None,
            month_to_date=money(fc.mtd_minor, cur) if fc else None,
            forecast_minor=fc.forecast_minor if fc else None,
            forecast=money(fc.forecast_minor, cur) if fc else None,
            run_rate_per_day_minor=fc.run_rate_minor_per_day if fc else None,
            basis=fc.basis if fc else None,
            days_used=fc.days_used if fc else None,
            method=fc.method if fc else None,
            budget_minor=budget,
            budget=money(budget, cur),
            budget_ratio=ratio(fc.mtd_minor) if fc else None,
            forecast_budget_ratio=ratio(fc.forecast_minor) if fc else None,
            accuracy=[
                MonthAccuracyOut(
                    period=m.period,
                    actual_minor=m.actual_minor,
                    actual_source=m.actual_source,
                    mean_abs_error_pct=m.mean_abs_error_pct,
                    checkpoints=[CheckpointOut(**c.__dict__) for c in m.checkpoints],
                )
                for m in f.accuracy
            ],
            mean_abs_error_pct=(sum(points, Decimal(0)) / len(points)).quantize(Decimal("0.1")) if points else None,
        )


class ForecastOut(BaseModel):
    accounts: list[AccountForecastOut]


class AlertOut(BaseModel):
    alert_id: str
    account: str
    kind: AlertKind
    period: date
    subject: str
    threshold_pct: int | None
    currency: str
    budget_minor: int | None
    observed_minor: int
    observed: str
    reference_minor: int | None
    detected_at: datetime
    message: str

    @classmethod
    def from_row(cls, r: dict[str, Any]) -> AlertOut:
        return cls(**r, observed=money(r["observed_minor"], r["currency"]) or "")


class AlertsPage(BaseModel):
    items: list[AlertOut]
    next_cursor: str | None = None
