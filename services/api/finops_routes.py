"""FinOps routes (platform_admin only, like every billing route): FOCUS export, forecast, alerts."""

from __future__ import annotations

import re
import tempfile
from collections.abc import Iterator
from datetime import date, datetime
from typing import Annotated, Literal
from urllib.parse import quote

from fastapi import APIRouter, Depends, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import StreamingResponse

from services.api.deps import get_settings, require_admin
from services.api.domain import encode_cursor
from services.api.finops import FinOpsRepository
from services.api.finops_schemas import AccountForecastOut, AlertOut, AlertsPage, ForecastOut
from services.api.focus import csv_chunks, parse_month, write_parquet
from services.api.routes import _AUTH_ERRORS, _CURSOR_ERRORS, Cursor, _cursor
from shared.events import AlertKind
from shared.money import minor_digits
from shared.settings import Settings

finops = APIRouter(
    prefix="/api/v1/billing", tags=["finops"], dependencies=[Depends(require_admin)], responses=_AUTH_ERRORS
)

Account = Annotated[
    str | None, Query(pattern=r"^[^\x00-\x20\x7f:/]{1,200}$", description="One account (default: all).")
]
# A month as the schema says it (a period that matches always parses: no 422 for schema-valid input).
MONTH = r"^[1-9][0-9]{3}-(0[1-9]|1[0-2])$"


def get_finops(request: Request) -> FinOpsRepository:
    from services.api.deps import get_repository

    return FinOpsRepository(get_repository(request).pool)


Repo = Annotated[FinOpsRepository, Depends(get_finops)]


def _period(text: str) -> date:
    try:
        return parse_month(text)
    except ValueError as e:
        raise RequestValidationError(
            [{"type": "value_error", "loc": ("query", "period"), "msg": str(e), "input": text}]
        ) from None


def _attachment(name: str) -> str:
    """Content-Disposition for any account name: headers are latin-1, so an ASCII fallback plus the exact
    UTF-8 name (RFC 6266); an account such as `Ā` must not turn the export into a 500."""
    fallback = re.sub(r"[^A-Za-z0-9._-]", "_", name)
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"


@finops.get(
    "/focus",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/csv": {}, "application/vnd.apache.parquet": {}}}},
)
def focus(
    repo: Repo,
    settings: Annotated[Settings, Depends(get_settings)],
    period: Annotated[str, Query(pattern=MONTH, description="Billing month, YYYY-MM.", examples=["2026-04"])],
    account: Account = None,
    format_: Annotated[Literal["csv", "parquet"], Query(alias="format")] = "csv",
) -> StreamingResponse:
    """The billing period as a FOCUS 1.2 dataset, one row per cost line of each invoice's served revision,
    streamed (CSV as it is read; parquet once written, in row groups). Costs are exact decimals; sums of
    BilledCost per InvoiceId are the invoices' gross amounts."""
    month = _period(period)
    name = f"focus-{month:%Y-%m}{'-' + account if account else ''}.{format_}"
    headers = {"content-disposition": _attachment(name), "x-focus-version": "1.2"}
    if format_ == "csv":
        return StreamingResponse(
            csv_chunks(repo.focus_records(month, account)), media_type="text/csv; charset=utf-8", headers=headers
        )
    spool = tempfile.SpooledTemporaryFile(max_size=32 * 1024 * 1024)  # noqa: SIM115 - closed by the stream
    write_parquet(repo.focus_records(month, account), spool, currency_digits=minor_digits(settings.currency))
    spool.seek(0)

    def stream() -> Iterator[bytes]:
        try:
            while chunk := spool.read(256 * 1024):
                yield chunk
        finally:
            spool.close()

    return StreamingResponse(stream(), media_type="application/vnd.apache.parquet", headers=headers)


@finops.get("/forecast", response_model=ForecastOut)
def forecast(repo: Repo, settings: Annotated[Settings, Depends(get_settings)], account: Account = None) -> ForecastOut:
    """Month-to-date usage and the month-end forecast per account (pre-tax, from the hourly balance snapshots),
    the method used, the budget ratios, and the method's measured error on the past months (`accuracy`)."""
    budgets = settings.budgets_minor()
    out = []
    for acc, currency in repo.accounts():
        if account is not None and acc != account:
            continue
        f = repo.account_forecast(acc, currency, budgets.get(acc), settings.forecast_window_days)
        out.append(AccountForecastOut.build(f))
    return ForecastOut(accounts=out)


@finops.get("/alerts", response_model=AlertsPage, responses=_CURSOR_ERRORS)
def alerts(
    repo: Repo,
    account: Account = None,
    kind: Annotated[AlertKind | None, Query()] = None,
    period: Annotated[str | None, Query(pattern=MONTH, description="Billing month, YYYY-MM.")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Cursor = None,
) -> AlertsPage:
    """Budget and anomaly alerts, newest first (each raised once per account, kind, subject, threshold, month)."""
    decoded = _cursor(cursor, (datetime, str))
    after = (decoded[0], decoded[1]) if decoded else None
    rows, more = repo.alerts(account, kind, _period(period) if period else None, after, limit)
    items = [AlertOut.from_row(r) for r in rows]
    nxt = encode_cursor([items[-1].detected_at.isoformat(), items[-1].alert_id]) if more and items else None
    return AlertsPage(items=items, next_cursor=nxt)
