"""The billing routes (platform_admin only) and the operational ones (health, readiness, metrics).

Query values are taken only in the shape the OpenAPI schema announces: dates as `YYYY-MM-DD`, times as ISO
8601 (pydantic alone would also take `0` or `0.5` as seconds since 1970). A cursor of the schema's alphabet
that this API did not issue is a 400 (the request is well-formed, its cursor unknown), not a 422.
"""

from __future__ import annotations

import logging
import re
from datetime import UTC, date, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, Response, status
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BeforeValidator

from services.api.deps import Repo, require_admin
from services.api.domain import CursorError, decode_cursor, encode_cursor
from services.api.queries import ReadModelRepository
from services.api.schemas import (
    BalanceHistoryOut,
    BalanceOut,
    CostLineOut,
    CostLinesPage,
    DeadLetterOut,
    DeadLettersPage,
    ErrorOut,
    HealthOut,
    HistoryEntryOut,
    HistoryPage,
    InvoiceActionOut,
    InvoiceDetail,
    InvoiceOut,
    InvoicesPage,
    ResourceCostsOut,
    ResourceMonth,
    RollupBy,
    RollupOut,
    RollupRow,
    Status,
    UnmatchedGroup,
    UnmatchedOut,
)
from shared.digitalocean import HISTORY_TYPES
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

_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_ISO_DATETIME = re.compile(r"^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})?)?$")


def _iso_date(v: Any) -> Any:
    if not isinstance(v, str) or not _ISO_DATE.match(v):
        raise ValueError("expected a date as YYYY-MM-DD")
    return v


def _iso_datetime(v: Any) -> Any:
    if not isinstance(v, str) or not _ISO_DATETIME.match(v):
        raise ValueError("expected an ISO 8601 date (YYYY-MM-DD) or date-time (YYYY-MM-DDTHH:MM:SSZ)")
    return v


IsoDate = Annotated[date, BeforeValidator(_iso_date)]
IsoDateTime = Annotated[datetime, BeforeValidator(_iso_datetime)]

# Names and ids are text without control characters (PostgreSQL text cannot even hold a NUL byte).
_PRINTABLE = r"^[^\x00-\x1f\x7f]{1,200}$"
Account = Annotated[
    str | None, Query(pattern=r"^[^\x00-\x20\x7f:/]{1,200}$", description="One account's name (as configured).")
]
Kind = Annotated[str | None, Query(pattern=r"^[a-z][a-z0-9_]{0,63}$", description="One resource kind, e.g. `droplet`.")]
Limit = Annotated[int, Query(ge=1, le=1000, description="Page size (max 1000).")]
Cursor = Annotated[
    str | None,
    Query(
        max_length=512,
        pattern=r"^[A-Za-z0-9_-]+$",
        description="`next_cursor` of the previous page (opaque; a cursor this API did not issue is a 400).",
    ),
]
_CURSOR_ERRORS: dict[int | str, dict[str, Any]] = {400: {"model": ErrorOut, "description": "A cursor not issued here."}}


def _cursor(cursor: str | None, types: tuple[type, ...]) -> list[Any] | None:
    if cursor is None:
        return None
    try:
        return decode_cursor(cursor, types)
    except CursorError as e:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, f"invalid cursor: {e}") from None


@billing.get("/balance", response_model=BalanceOut, responses={404: {"model": ErrorOut}})
def balance(repo: Repo, account: Account = None) -> BalanceOut:
    """The latest balance snapshot (of one account when `account` is given)."""
    row = repo.latest_balance(account)
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no balance snapshot yet")
    return BalanceOut.from_row(row)


@billing.get("/balance/history", response_model=BalanceHistoryOut)
def balance_history(
    repo: Repo,
    start: Annotated[IsoDateTime | None, Query(alias="from", description="Inclusive, ISO date or datetime.")] = None,
    end: Annotated[IsoDateTime | None, Query(alias="to", description="Inclusive, ISO date or datetime.")] = None,
    account: Account = None,
    limit: Annotated[int, Query(ge=1, le=10000)] = 1000,
) -> BalanceHistoryOut:
    """Balance snapshots over time, oldest first: the month-to-date accrual."""
    rows = repo.balance_history(start, end, account, limit)
    return BalanceHistoryOut(snapshots=[BalanceOut.from_row(r) for r in rows])


@billing.get("/cost-lines", response_model=CostLinesPage, responses=_CURSOR_ERRORS)
def cost_lines(
    repo: Repo,
    period: Annotated[IsoDate, Query(description="Billing period start day, YYYY-MM-DD.")],
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


@billing.get("/rollups", response_model=RollupOut)
def rollups(
    repo: Repo,
    period: Annotated[IsoDate, Query(description="Billing period start day, YYYY-MM-DD.")],
    by: Annotated[RollupBy, Query(description="Group the served lines by product, kind, project, resource or rule.")],
    account: Account = None,
) -> RollupOut:
    """A period's cost grouped by one dimension, with how many lines are attributed (and to current resources).
    `by=rule` is the attribution table: lines per attribution rule (or unattributed reason)."""
    rows = [
        RollupRow(**{**r, "amount": format_minor(r["amount_minor"], r["currency"])})
        for r in repo.rollup(period, by, account)
    ]
    if by != "resource":
        rows = [x.model_copy(update={"name": None}) for x in rows]
    return RollupOut(period=period, by=by, rows=rows)


@billing.get("/resources/{resource_id}/costs", response_model=ResourceCostsOut, responses={404: {"model": ErrorOut}})
def resource_costs(
    repo: Repo,
    resource_id: Annotated[str, Path(pattern=_PRINTABLE, description="DigitalOcean's id (an item's id or uuid).")],
    kind: Kind = None,
    account: Account = None,
) -> ResourceCostsOut:
    """One resource's cost over months (served lines attributed to it, by any rule), and what the inventory knows
    of it: its latest name, whether it exists now, when it was first and last seen."""
    months, known, named = repo.resource_costs(resource_id, kind, account)
    if not months and not known:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no cost line is attributed to that resource")
    inv = known[0] if known else None
    return ResourceCostsOut(
        resource_id=resource_id,
        kind=inv["kind"] if inv else (named[0]["kind"] if named else None),
        name=inv["name"] if inv else next((n["name"] for n in named if n["name"]), None),
        names_on_invoices=sorted({n["name"] for n in named if n["name"]}),
        still_exists=inv["exists_now"] if inv else None,
        first_seen=inv["first_seen"] if inv else None,
        last_seen=inv["last_seen"] if inv else None,
        months=[
            ResourceMonth(**{**m, "rules": m["rules"] or [], "amount": format_minor(m["amount_minor"], m["currency"])})
            for m in months
        ],
    )


@billing.get("/invoices", response_model=InvoicesPage, responses=_CURSOR_ERRORS)
def invoices(
    repo: Repo,
    status_: Annotated[Status | None, Query(alias="status")] = None,
    period: Annotated[IsoDate | None, Query(description="Billing period start day, YYYY-MM-DD.")] = None,
    limit: Limit = 100,
    cursor: Cursor = None,
) -> InvoicesPage:
    """Invoices, newest period first, with their ingest/match/push status (`held`: complete in the pipeline but
    not proven to be the whole invoice, so not pushed; see `reconciliation` for the variance)."""
    after = _cursor(cursor, (date, str))
    page = repo.invoices(status_, period, (after[0], after[1]) if after else None, limit)
    nxt = None
    if page.has_more and page.rows:
        last = page.rows[-1]
        nxt = encode_cursor([last["sort_period"].isoformat(), last["invoice_uuid"]])
    return InvoicesPage(items=[InvoiceOut.from_row(r) for r in page.rows], next_cursor=nxt)


@billing.get("/invoices/{invoice_uuid}", response_model=InvoiceDetail, responses={404: {"model": ErrorOut}})
def invoice(repo: Repo, invoice_uuid: Annotated[str, Path(pattern=_PRINTABLE)]) -> InvoiceDetail:
    """One invoice, the lines of its served revision, and its releases and re-fetches (who, why, when)."""
    found = repo.invoice(invoice_uuid)
    if found is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "unknown invoice")
    head, lines, actions = found
    dead = repo.dead_letters(None, None, invoice_uuid, None, 1000).rows
    return InvoiceDetail(
        **InvoiceOut.from_row(head).model_dump(),
        lines=[CostLineOut.from_row(r) for r in lines],
        dead_letters=[DeadLetterOut.from_row(r) for r in dead],
        actions=[InvoiceActionOut(**a) for a in actions],
    )


@billing.get("/dead-letters", response_model=DeadLettersPage, responses=_CURSOR_ERRORS)
def dead_letters(
    repo: Repo,
    topic: Annotated[
        str | None,
        Query(
            pattern=r"^[^\x00-\x1f\x7f]{1,300}$",
            description="A source topic or its dead-letter topic (full name).",
        ),
    ] = None,
    since: Annotated[
        IsoDateTime | None, Query(description="Only those failed at/after this ISO date or datetime.")
    ] = None,
    invoice: Annotated[str | None, Query(pattern=_PRINTABLE, description="Only those about this invoice uuid.")] = None,
    limit: Limit = 100,
    cursor: Cursor = None,
) -> DeadLettersPage:
    """Dead letters, newest first: what failed, where and why (redrive them with `cloudbill dlq redrive`)."""
    after = _cursor(cursor, (datetime, str))
    page = repo.dead_letters(topic, since, invoice, (after[0], after[1]) if after else None, limit)
    nxt = None
    if page.has_more and page.rows:
        last = page.rows[-1]
        nxt = encode_cursor([last["sort_at"].isoformat(), last["dedup_key"]])
    return DeadLettersPage(items=[DeadLetterOut.from_row(r) for r in page.rows], next_cursor=nxt)


_HISTORY_TYPE_NAMES = {t.lower(): t for t in HISTORY_TYPES}
# Any case, spelled out letter by letter: JSON Schema patterns (ECMA 262) have no case-insensitive flag.
_HISTORY_TYPE_PATTERN = (
    "^(?:"
    + "|".join("".join(f"[{c.upper()}{c.lower()}]" if c.isalpha() else re.escape(c) for c in t) for t in HISTORY_TYPES)
    + ")$"
)


@billing.get("/history", response_model=HistoryPage, responses=_CURSOR_ERRORS)
def history(
    repo: Repo,
    type_: Annotated[
        str | None,
        Query(
            alias="type",
            pattern=_HISTORY_TYPE_PATTERN,
            description=f"One of {', '.join(HISTORY_TYPES)} (any case).",
        ),
    ] = None,
    start: Annotated[IsoDateTime | None, Query(alias="from", description="Inclusive, ISO date or datetime.")] = None,
    end: Annotated[IsoDateTime | None, Query(alias="to", description="Inclusive, ISO date or datetime.")] = None,
    account: Account = None,
    limit: Limit = 100,
    cursor: Cursor = None,
) -> HistoryPage:
    """Billing-history entries, newest first: payments, credits, adjustments, refunds, invoices..."""
    entry_type = _HISTORY_TYPE_NAMES[type_.lower()] if type_ is not None else None
    after = _cursor(cursor, (str, str))
    after_key = None
    if after:
        try:
            after_key = (datetime.fromisoformat(after[0]), after[1])
        except ValueError:
            raise HTTPException(status.HTTP_400_BAD_REQUEST, "invalid cursor: malformed cursor") from None
    page = repo.history(entry_type, _aware(start), _aware(end), account, after_key, limit)
    nxt = None
    if page.has_more and page.rows:
        last = page.rows[-1]
        nxt = encode_cursor([last["date"].isoformat(), last["event_id"]])
    return HistoryPage(items=[HistoryEntryOut.from_row(r) for r in page.rows], next_cursor=nxt)


def _aware(value: datetime | None) -> datetime | None:
    """A date or datetime without an offset is UTC."""
    return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


@billing.get("/unmatched", response_model=UnmatchedOut)
def unmatched(
    repo: Repo, period: Annotated[IsoDate | None, Query(description="Billing period start day, YYYY-MM-DD.")] = None
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
    """Readiness: the database and the broker both answer (checked at most once a second, answers shared)."""
    ok, checks = request.app.state.readiness.result()
    if not ok:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    return HealthOut(status="ok" if ok else "unavailable", checks=checks)


def readiness_checks(state: Any) -> dict[str, str]:
    """One round of the readiness checks against the app's pool and broker check."""
    checks: dict[str, str] = {}
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
    return checks


metrics_router = APIRouter(tags=["operations"])


@metrics_router.get("/metrics", response_class=Response, responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
def metrics() -> Response:
    """Prometheus metrics of this process."""
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
