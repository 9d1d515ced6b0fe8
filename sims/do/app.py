"""The DigitalOcean billing API simulator: serves a scenario folder the way api.digitalocean.com would.

Pagination, error bodies, string money values, rate-limit headers and the `text/csv` download follow
/work/shared/reference/digitalocean-billing-api.md. Faults (429, 5xx, slow answers, truncated CSVs) are set
at start or at runtime through `/_sim/faults`; `/_sim/requests` shows what clients asked and when, so tests
can check that a client waited as told. `/_sim/invoices/{uuid}/csv` replaces an invoice's CSV at runtime (a
revised invoice, or DigitalOcean serving other bytes), its items and summary following. `/_sim/inventory`
switches between the scenario's current inventory and its past one (`resources_past.json`), so the poller
sees resources disappear. `/_sim/*` needs no token and is never faulted.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from sims.do.faults import DoFaults, FaultState, RateWindow, RequestLog
from sims.scenario import (
    RESOURCE_LISTINGS,
    Scenario,
    ScenarioError,
    check_csv,
    items_from_csv,
    load_scenario,
    summary_from_items,
)

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
        self._csv_lock = threading.Lock()
        self._csv_overrides: dict[str, bytes] = {}
        self.inventory = "current"  # or "past": the scenario's resources_past.json (an earlier inventory)

    def resources(self) -> dict[str, list[dict[str, Any]]]:
        """The inventory served now: the scenario's current one, or its past one when selected."""
        if self.inventory == "past" and self.scenario.resources_past is not None:
            return self.scenario.resources_past
        return self.scenario.resources

    def csv_bytes(self, invoice_uuid: str) -> bytes:
        """The bytes served for an invoice: a runtime replacement, else the scenario file."""
        with self._csv_lock:
            data = self._csv_overrides.get(invoice_uuid)
        return data if data is not None else self.scenario.csv_bytes(invoice_uuid)

    def replace_csv(self, invoice_uuid: str, data: bytes | None) -> None:
        with self._csv_lock:
            if data is None:
                self._csv_overrides.pop(invoice_uuid, None)
            else:
                self._csv_overrides[invoice_uuid] = data

    def replaced(self, invoice_uuid: str) -> bytes | None:
        with self._csv_lock:
            return self._csv_overrides.get(invoice_uuid)

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
    data = state.csv_bytes(invoice_uuid)
    headers = {
        "content-type": "text/csv",
        "content-disposition": f'attachment; filename="{sc.csv_filename(invoice_uuid)}"',
    }
    mode = state.faults.take_truncation(path)
    if mode is None:
        return Response(data, headers=headers)
    cut = data[: max(1, len(data) // 2)]
    if mode == "rows":  # stop after the last whole row of the first half: a CSV that still parses
        cut = cut[: cut.rfind(b"\n") + 1] or cut
    log.warning("fault: truncating the CSV of %s (%s mode, %d of %d bytes)", invoice_uuid, mode, len(cut), len(data))
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
    _register_errors(app)
    _register_simulation(app, state)
    _register_billing(app, state)
    _register_listings(app, state)
    _register_faults_and_requests(app, state)
    _register_sim_invoices(app, state)
    return app


def _register_errors(app: FastAPI) -> None:
    """Errors in DigitalOcean's body shape, for unknown paths and bad query parameters too."""

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return do_error(exc.status_code if exc.status_code in _ERRORS else 404)

    @app.exception_handler(_BadRequest)
    async def _bad_request(request: Request, exc: _BadRequest) -> JSONResponse:
        return do_error(400, str(exc))


def _register_simulation(app: FastAPI, state: SimState) -> None:
    """What happens before any API route: the token, injected faults, rate-limit headers, the request log."""

    @app.middleware("http")
    async def _simulate(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
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


def _register_billing(app: FastAPI, state: SimState) -> None:
    """The billing endpoints: balance, history, invoices with their items, CSV, summary and PDF."""
    sc = state.scenario

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
        replaced = state.replaced(invoice_uuid)
        items = items_from_csv(replaced) if replaced is not None else sc.items(invoice_uuid)
        return JSONResponse(paginate(request, "invoice_items", items))

    @app.get("/v2/customers/my/invoices/{invoice_uuid}/csv")
    async def invoice_csv(invoice_uuid: str, request: Request) -> Response:
        if not sc.has_invoice(invoice_uuid):
            return do_error(404)
        return _csv_response(state, invoice_uuid, request.url.path)

    @app.get("/v2/customers/my/invoices/{invoice_uuid}/summary")
    async def invoice_summary(invoice_uuid: str) -> Response:
        if not sc.has_invoice(invoice_uuid):
            return do_error(404)
        replaced = state.replaced(invoice_uuid)
        if replaced is not None and invoice_uuid not in sc.summary_paths:
            inv = sc.invoice(invoice_uuid) or {"invoice_uuid": invoice_uuid}
            return JSONResponse(summary_from_items(inv, items_from_csv(replaced)))
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


def _register_listings(app: FastAPI, state: SimState) -> None:
    """The resource listings the poller reads (the current or the past inventory)."""

    def _listing(key: str, paginated: bool) -> Any:
        async def listing(request: Request) -> dict[str, Any]:
            items = state.resources().get(key, [])
            if key == "droplets":  # as DigitalOcean: GPU droplets only with type=gpus, and only them then
                gpus = request.query_params.get("type") == "gpus"
                items = [d for d in items if str(d.get("size_slug", "")).startswith("gpu-") is gpus]
            if not paginated:
                return {key: items}
            return paginate(request, key, items)

        listing.__name__ = f"list_{key}"
        return listing

    for key, (path, paginated) in RESOURCE_LISTINGS.items():
        app.add_api_route(f"/v2/{path}", _listing(key, paginated), methods=["GET"], name=f"list_{key}")

    @app.get("/v2/registry")
    async def registry() -> Response:
        regs = state.resources().get("registries", [])
        return JSONResponse({"registry": regs[0]}) if regs else do_error(404)


def _register_faults_and_requests(app: FastAPI, state: SimState) -> None:
    """`/_sim/faults` and `/_sim/requests`: set faults at runtime, see what clients asked and when."""

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


def _register_sim_invoices(app: FastAPI, state: SimState) -> None:
    """`/_sim/invoices`, `/_sim/inventory`, `/_sim/health`: change what is served at runtime."""
    sc = state.scenario

    @app.put("/_sim/invoices/{invoice_uuid}/csv")
    async def replace_csv(invoice_uuid: str, request: Request) -> Response:
        if not sc.has_invoice(invoice_uuid):
            return do_error(404, f"invoice {invoice_uuid} is not in scenario {sc.name}")
        data = await request.body()
        state.replace_csv(invoice_uuid, data)
        problem = check_csv(data)
        log.warning(
            "invoice %s: CSV replaced at runtime (%d bytes)%s",
            invoice_uuid,
            len(data),
            f": {problem}" if problem else "",
        )
        return JSONResponse({"invoice_uuid": invoice_uuid, "bytes": len(data), "replaced": True, "warning": problem})

    @app.delete("/_sim/invoices/{invoice_uuid}/csv")
    async def restore_csv(invoice_uuid: str) -> Response:
        if not sc.has_invoice(invoice_uuid):
            return do_error(404, f"invoice {invoice_uuid} is not in scenario {sc.name}")
        state.replace_csv(invoice_uuid, None)
        return JSONResponse({"invoice_uuid": invoice_uuid, "bytes": len(sc.csv_bytes(invoice_uuid)), "replaced": False})

    @app.get("/_sim/inventory")
    async def get_inventory() -> dict[str, Any]:
        return {"inventory": state.inventory, "has_past": sc.resources_past is not None}

    @app.put("/_sim/inventory")
    async def set_inventory(request: Request) -> Response:
        """Serve the past inventory (`resources_past.json`) or the current one: an inventory's history in tests."""
        body = await request.json()
        which = body.get("inventory") if isinstance(body, dict) else None
        if which not in ("past", "current") or (which == "past" and sc.resources_past is None):
            return JSONResponse(
                {"id": "bad_request", "message": "inventory must be 'current' or 'past' (with resources_past.json)"},
                status_code=422,
            )
        state.inventory = which
        log.info("serving the %s inventory", which)
        return JSONResponse({"inventory": which})

    @app.get("/_sim/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "scenario": sc.name, "invoices": len(sc.invoices), "warnings": sc.warnings}


__all__ = ["DoFaults", "ScenarioError", "create_app", "paginate"]
