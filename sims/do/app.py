"""The DigitalOcean billing API simulator: serves a scenario folder the way api.digitalocean.com would.

Pagination, error bodies, string money values, rate-limit headers and the `text/csv` download follow
/work/shared/reference/digitalocean-billing-api.md. Faults (429, 5xx, slow answers, truncated CSVs) are set
at start or at runtime through `/_sim/faults`; `/_sim/requests` shows what clients asked and when, so tests
can check that a client waited as told. `/_sim/*` needs no token and is never faulted.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from sims.do.faults import DoFaults, FaultState, RateWindow, RequestLog
from sims.scenario import RESOURCE_LISTINGS, Scenario, ScenarioError, load_scenario

log = logging.getLogger(__name__)

DEFAULT_PER_PAGE = 20
MAX_PER_PAGE = 200
RATE_LIMIT = 5000

_ERRORS = {
    400: ("bad_request", "The request was invalid."),
    401: ("unauthorized", "Unable to authenticate you"),
    404: ("not_found", "The resource you were accessing could not be found."),
    429: ("too_many_requests", "API Rate limit exceeded."),
    500: ("server_error", "Server Error"),
}


def do_error(status: int, message: str | None = None) -> JSONResponse:
    ident, default = _ERRORS.get(status, ("server_error" if status >= 500 else "error", "Server Error"))
    return JSONResponse({"id": ident, "message": message or default}, status_code=status)


class _DropDeliberateTruncation(logging.Filter):
    """uvicorn logs a traceback when a response is shorter than its content-length: that is the injected fault."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not (exc is not None and "Too little data for declared Content-Length" in str(exc))


_TRUNCATION_FILTER = _DropDeliberateTruncation()


class _BadRequest(Exception):
    pass


def _int_param(request: Request, name: str, default: int) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise _BadRequest(f"{name} must be an integer") from None
    if value < 1:
        raise _BadRequest(f"{name} must be at least 1")
    return value


def paginate(request: Request, key: str, items: list[Any], extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """One page as DigitalOcean answers it: the items, `links.pages` with full URLs, `meta.total`."""
    page = _int_param(request, "page", 1)
    per_page = min(_int_param(request, "per_page", DEFAULT_PER_PAGE), MAX_PER_PAGE)
    total = len(items)
    last = max(1, math.ceil(total / per_page))
    chunk = items[(page - 1) * per_page : page * per_page]
    base = f"{str(request.base_url).rstrip('/')}{request.url.path}"

    def url(p: int) -> str:
        return f"{base}?page={p}&per_page={per_page}"

    pages: dict[str, str] = {}
    if page > 1:
        pages["first"] = url(1)
        pages["prev"] = url(min(page - 1, last))
    if page < last:
        pages["next"] = url(page + 1)
        pages["last"] = url(last)
    return {key: chunk, **(extra or {}), "links": {"pages": pages}, "meta": {"total": total}}


class SimState:
    """Per-app mutable state: faults, request log, rate window, position in the balance series."""

    def __init__(self, scenario: Scenario, tokens: Iterable[str] | None, faults: DoFaults | None) -> None:
        self.scenario = scenario
        self.tokens = frozenset(tokens) if tokens else None
        self.faults = FaultState(faults)
        self.requests = RequestLog()
        self.window = RateWindow(RATE_LIMIT)
        self._balance_lock = threading.Lock()
        self._balance_next = 0

    def next_balance(self) -> dict[str, Any]:
        """The series in turn, then the latest snapshot forever."""
        with self._balance_lock:
            snaps = self.scenario.balances
            snap = snaps[min(self._balance_next, len(snaps) - 1)]
            self._balance_next += 1
            return snap

    def authorized(self, header: str | None) -> str | None:
        """The bearer token if acceptable (any non-empty one unless a token list is configured)."""
        if not header:
            return None
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return None
        if self.tokens is not None and token not in self.tokens:
            return None
        return token


def _csv_response(state: SimState, invoice_uuid: str, path: str) -> Response:
    sc = state.scenario
    data = sc.csv_bytes(invoice_uuid)
    headers = {
        "content-type": "text/csv",
        "content-disposition": f'attachment; filename="{sc.csv_filename(invoice_uuid)}"',
    }
    mode = state.faults.take_truncation(path)
    if mode is None:
        return Response(data, headers=headers)
    cut = data[: max(1, len(data) // 2)]
    log.warning("fault: truncating the CSV of %s (%s mode)", invoice_uuid, mode)
    if mode == "connection":
        # Announce the whole file, send half: the server closes the connection mid-body.
        headers["content-length"] = str(len(data))
    return Response(cut, headers=headers)


def create_app(
    scenario: Scenario | str | Path,
    *,
    tokens: Iterable[str] | None = None,
    faults: DoFaults | dict[str, Any] | None = None,
) -> FastAPI:
    """A FastAPI app serving `scenario` (a Scenario, a built-in name or a folder)."""
    sc = scenario if isinstance(scenario, Scenario) else load_scenario(scenario)
    if isinstance(faults, dict):
        faults = DoFaults.model_validate(faults)
    state = SimState(sc, tokens, faults)
    if _TRUNCATION_FILTER not in logging.getLogger("uvicorn.error").filters:
        logging.getLogger("uvicorn.error").addFilter(_TRUNCATION_FILTER)
    app = FastAPI(title=f"DigitalOcean simulator ({sc.name})", docs_url="/_sim/docs", openapi_url="/_sim/openapi.json")
    app.state.sim = state

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return do_error(exc.status_code if exc.status_code in _ERRORS else 404)

    @app.exception_handler(_BadRequest)
    async def _bad_request(request: Request, exc: _BadRequest) -> JSONResponse:
        return do_error(400, str(exc))

    @app.middleware("http")
    async def _simulate(request: Request, call_next: Any) -> Response:
        path = request.url.path
        if path.startswith("/_sim"):
            return await call_next(request)
        started = time.time()
        t0 = time.monotonic()
        token = state.authorized(request.headers.get("authorization"))
        if token is None:
            response: Response = do_error(401)
            remaining, reset = state.window.hit("", started)
        else:
            decision = state.faults.decide(path)
            if decision.delay_s:
                await asyncio.sleep(decision.delay_s)
            remaining, reset = state.window.hit(token, started)
            if decision.status == 429:
                response = do_error(429)
                remaining, reset = 0, int(started) + decision.reset_in_s
                if decision.retry_after is not None:
                    response.headers["retry-after"] = str(decision.retry_after)
            elif decision.status is not None:
                response = do_error(decision.status)
            else:
                response = await call_next(request)
        response.headers["ratelimit-limit"] = str(RATE_LIMIT)
        response.headers["ratelimit-remaining"] = str(remaining)
        response.headers["ratelimit-reset"] = str(reset)
        state.requests.add(
            request.method, path, request.url.query, response.status_code, started, time.monotonic() - t0
        )
        return response

    # ------------------------------------------------------------------------------- billing endpoints
    @app.get("/v2/customers/my/balance")
    async def balance() -> dict[str, Any]:
        return state.next_balance()

    @app.get("/v2/customers/my/billing_history")
    async def billing_history(request: Request) -> dict[str, Any]:
        return paginate(request, "billing_history", sc.billing_history)

    @app.get("/v2/customers/my/invoices")
    async def invoices(request: Request) -> dict[str, Any]:
        return paginate(request, "invoices", sc.invoices, {"invoice_preview": sc.invoice_preview})

    @app.get("/v2/customers/my/invoices/{invoice_uuid}")
    async def invoice_items(invoice_uuid: str, request: Request) -> Response:
        if not sc.has_invoice(invoice_uuid):
            if invoice_uuid == "preview":
                return JSONResponse(paginate(request, "invoice_items", []))
            return do_error(404)
        return JSONResponse(paginate(request, "invoice_items", sc.items(invoice_uuid)))

    @app.get("/v2/customers/my/invoices/{invoice_uuid}/csv")
    async def invoice_csv(invoice_uuid: str, request: Request) -> Response:
        if not sc.has_invoice(invoice_uuid):
            return do_error(404)
        return _csv_response(state, invoice_uuid, request.url.path)

    @app.get("/v2/customers/my/invoices/{invoice_uuid}/summary")
    async def invoice_summary(invoice_uuid: str) -> Response:
        if not sc.has_invoice(invoice_uuid):
            return do_error(404)
        return JSONResponse(sc.summary(invoice_uuid))

    @app.get("/v2/customers/my/invoices/{invoice_uuid}/pdf")
    async def invoice_pdf(invoice_uuid: str) -> Response:
        if not sc.has_invoice(invoice_uuid):
            return do_error(404)
        body = b"%PDF-1.4\n% cloudbill simulator: no real PDF\n%%EOF\n"
        name = sc.csv_filename(invoice_uuid).removesuffix(".csv") + ".pdf"
        return Response(
            body,
            headers={"content-type": "application/pdf", "content-disposition": f'attachment; filename="{name}"'},
        )

    # ------------------------------------------------------------------------------- resource listings
    def _listing(key: str, paginated: bool) -> Any:
        async def listing(request: Request) -> dict[str, Any]:
            items = sc.resources.get(key, [])
            if key == "droplets" and request.query_params.get("type") == "gpus":
                items = [d for d in items if str(d.get("size_slug", "")).startswith("gpu-")]
            if not paginated:
                return {key: items}
            return paginate(request, key, items)

        listing.__name__ = f"list_{key}"
        return listing

    for key, (path, paginated) in RESOURCE_LISTINGS.items():
        app.add_api_route(f"/v2/{path}", _listing(key, paginated), methods=["GET"], name=f"list_{key}")

    @app.get("/v2/registry")
    async def registry() -> Response:
        regs = sc.resources.get("registries", [])
        return JSONResponse({"registry": regs[0]}) if regs else do_error(404)

    # ----------------------------------------------------------------------------------- admin (/_sim)
    @app.get("/_sim/faults")
    async def get_faults() -> dict[str, Any]:
        return state.faults.get().model_dump()

    @app.post("/_sim/faults")
    async def set_faults(request: Request) -> Response:
        try:
            body = await request.json()
            if not isinstance(body, dict):
                raise ValueError("a JSON object is expected")
            return JSONResponse(state.faults.update(body).model_dump())
        except ValueError as e:  # pydantic's ValidationError is a ValueError
            return JSONResponse({"id": "bad_request", "message": str(e)}, status_code=422)

    @app.delete("/_sim/faults")
    async def clear_faults() -> dict[str, Any]:
        return state.faults.clear().model_dump()

    @app.get("/_sim/requests")
    async def get_requests() -> dict[str, Any]:
        entries = state.requests.entries()
        return {"requests": entries, "total": len(entries)}

    @app.delete("/_sim/requests")
    async def clear_requests() -> dict[str, Any]:
        state.requests.clear()
        return {"requests": [], "total": 0}

    @app.get("/_sim/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "scenario": sc.name, "invoices": len(sc.invoices)}

    return app


__all__ = ["DoFaults", "ScenarioError", "create_app", "paginate"]
