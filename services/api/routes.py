"""The billing routes (platform_admin only) and the operational ones (health, readiness, metrics)."""

from __future__ import annotations

import logging
from datetime import date, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, Response, status
from fastapi.exceptions import RequestValidationError
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from services.api.deps import Repo, require_admin
from services.api.domain import CursorError, decode_cursor, encode_cursor
from services.api.queries import ReadModelRepository
from services.api.schemas import (
    BalanceHistoryOut,
    BalanceOut,
    CostLineOut,
    CostLinesPage,
    ErrorOut,
    HealthOut,
    InvoiceDetail,
    InvoiceOut,
    InvoicesPage,
    Status,
    UnmatchedGroup,
    UnmatchedOut,
)
from shared.money import format_minor

log = logging.getLogger(__name__)

_AUTH_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorOut, "description": "No valid bearer token."},
    403: {"model": ErrorOut, "description": "The token lacks the platform_admin role."},
}

billing = APIRouter(
    prefix="/api/v1/billing", tags=["billing"], dependencies=[Depends(require_admin)], responses=_AUTH_ERRORS
)
ops = APIRouter(tags=["operations"])

Kind = Annotated[str | None, Query(pattern=r"^[a-z][a-z0-9_]{0,63}$", description="One resource kind, e.g. `droplet`.")]
Limit = Annotated[int, Query(ge=1, le=1000, description="Page size (max 1000).")]
Cursor = Annotated[str | None, Query(max_length=512, description="`next_cursor` of the previous page.")]


def _cursor(cursor: str | None, types: tuple[type, ...]) -> list[Any] | None:
    if cursor is None:
        return None
    try:
        return decode_cursor(cursor, types)
    except CursorError as e:
        raise RequestValidationError(
            [{"type": "value_error", "loc": ("query", "cursor"), "msg": str(e), "input": cursor}]
        ) from None


@billing.get("/balance", response_model=BalanceOut, responses={404: {"model": ErrorOut}})
def balance(repo: Repo, account: Annotated[str | None, Query(max_length=200)] = None) -> BalanceOut:
    """The latest balance snapshot (of one account when `account` is given)."""
    row = repo.latest_balance(account)
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no balance snapshot yet")
    return BalanceOut.from_row(row)


@billing.get("/balance/history", response_model=BalanceHistoryOut)
def balance_history(
    repo: Repo,
    start: Annotated[datetime | None, Query(alias="from", description="Inclusive, ISO date or datetime.")] = None,
    end: Annotated[datetime | None, Query(alias="to", description="Inclusive, ISO date or datetime.")] = None,
    account: Annotated[str | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=10000)] = 1000,
) -> BalanceHistoryOut:
    """Balance snapshots over time, oldest first: the month-to-date accrual."""
    rows = repo.balance_history(start, end, account, limit)
    return BalanceHistoryOut(snapshots=[BalanceOut.from_row(r) for r in rows])


@billing.get("/cost-lines", response_model=CostLinesPage)
def cost_lines(
    repo: Repo,
    period: Annotated[date, Query(description="Billing period start day, YYYY-MM-DD.")],
    kind: Kind = None,
    limit: Limit = 100,
    cursor: Cursor = None,
) -> CostLinesPage:
    """Per-line cost of the billing period with the matched resource (served revision only)."""
    after = _cursor(cursor, (str, int))
    page = repo.cost_lines(period, kind, (after[0], after[1]) if after else None, limit)
    items = [CostLineOut.from_row(r) for r in page.rows]
    nxt = encode_cursor([items[-1].invoice_uuid, items[-1].line_index]) if page.has_more and items else None
    return CostLinesPage(items=items, next_cursor=nxt)


@billing.get("/invoices", response_model=InvoicesPage)
def invoices(
    repo: Repo,
    status_: Annotated[Status | None, Query(alias="status")] = None,
    period: Annotated[date | None, Query(description="Billing period start day, YYYY-MM-DD.")] = None,
    limit: Limit = 100,
    cursor: Cursor = None,
) -> InvoicesPage:
    """Invoices, newest period first, with their ingest/match/push status."""
    after = _cursor(cursor, (date, str))
    page = repo.invoices(status_, period, (after[0], after[1]) if after else None, limit)
    nxt = None
    if page.has_more and page.rows:
        last = page.rows[-1]
        nxt = encode_cursor([last["sort_period"].isoformat(), last["invoice_uuid"]])
    return InvoicesPage(items=[InvoiceOut.from_row(r) for r in page.rows], next_cursor=nxt)


@billing.get("/invoices/{invoice_uuid}", response_model=InvoiceDetail, responses={404: {"model": ErrorOut}})
def invoice(repo: Repo, invoice_uuid: Annotated[str, Path(max_length=200)]) -> InvoiceDetail:
    """One invoice and the lines of its served revision."""
    found = repo.invoice(invoice_uuid)
    if found is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "unknown invoice")
    head, lines = found
    return InvoiceDetail(**InvoiceOut.from_row(head).model_dump(), lines=[CostLineOut.from_row(r) for r in lines])


@billing.get("/unmatched", response_model=UnmatchedOut)
def unmatched(
    repo: Repo, period: Annotated[date | None, Query(description="Billing period start day.")] = None
) -> UnmatchedOut:
    """Cost that matches no current resource, by reason and kind."""
    groups = [
        UnmatchedGroup(**r, amount=format_minor(r["amount_minor"], r["currency"])) for r in repo.unmatched(period)
    ]
    totals: dict[str, int] = {}
    for g in groups:
        totals[g.currency] = totals.get(g.currency, 0) + g.amount_minor
    return UnmatchedOut(period=period, groups=groups, total_minor=totals)


# ------------------------------------------------------------------------------------------------ operations
@ops.get("/healthz", response_model=HealthOut)
def healthz() -> HealthOut:
    """Liveness: the process answers."""
    return HealthOut(status="ok")


@ops.get("/readyz", response_model=HealthOut, responses={503: {"model": HealthOut}})
def readyz(request: Request, response: Response) -> HealthOut:
    """Readiness: the database and the broker both answer."""
    checks: dict[str, str] = {}
    state = request.app.state
    try:
        if state.pool is None:
            raise RuntimeError("no DATABASE_URL")
        ReadModelRepository(state.pool).ping()
        checks["database"] = "ok"
    except Exception as e:
        checks["database"] = f"unavailable: {type(e).__name__}"
    try:
        state.broker_check()
        checks["broker"] = "ok"
    except Exception as e:
        checks["broker"] = f"unavailable: {type(e).__name__}"
    ok = all(v == "ok" for v in checks.values())
    if not ok:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    return HealthOut(status="ok" if ok else "unavailable", checks=checks)


@ops.get("/metrics", response_class=Response, responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
def metrics() -> Response:
    """Prometheus metrics of this process."""
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
