"""The admin HTTP API: `create_app(settings)` and `cloudbill run api` (uvicorn until stop/SIGTERM).

Unauthenticated surfaces are bounded: metric labels take a fixed set of values (unknown methods fold into
`OTHER`, unmatched paths into `unmatched`), `/readyz` checks its dependencies at most once a second whatever
the request rate, and `/docs` and `/metrics` can be switched off or served on a separate operations port
(API_DOCS, API_METRICS, API_OPS_PORT) that is not published with the API.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import uvicorn
from confluent_kafka.admin import AdminClient
from fastapi import FastAPI, Request, Response
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from prometheus_client import REGISTRY, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from services.api.finops_metrics import FINOPS_GAUGES, LAG_GAUGES, ReadModelGauges
from services.api.finops_routes import finops
from services.api.queries import ReadModelRepository
from services.api.routes import billing, metrics_router, ops, readiness_checks
from services.api.security import TokenVerifier
from shared.db import DictPool, migrate
from shared.kafka import StopSignal
from shared.kafka.config import base_config
from shared.settings import ConfigError, Settings

log = logging.getLogger(__name__)

REQUESTS = Counter("cloudbill_api_requests_total", "HTTP requests served", ["method", "route", "status"])
LATENCY = Histogram("cloudbill_api_request_seconds", "HTTP request latency", ["method", "route"])
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
READYZ_CACHE_S = 1.0


def method_label(method: str) -> str:
    """Any string is a valid HTTP method to a server: only the standard ones get their own series."""
    return method if method in METHODS else "OTHER"


class Readiness:
    """The readiness checks' last answer, reused for `ttl_s`; concurrent callers wait for one round of checks."""

    def __init__(self, check: Callable[[], dict[str, str]], ttl_s: float = READYZ_CACHE_S) -> None:
        self._check = check
        self.ttl_s = ttl_s
        self._lock = threading.Lock()
        self._at: float | None = None
        self._checks: dict[str, str] = {}
        self.rounds = 0

    def result(self) -> tuple[bool, dict[str, str]]:
        with self._lock:
            now = time.monotonic()
            if self._at is None or now - self._at >= self.ttl_s:
                self._checks = self._check()
                self._at = time.monotonic()
                self.rounds += 1
            checks = dict(self._checks)
        return all(v == "ok" for v in checks.values()), checks


class HeldInvoices(ReadModelGauges):
    """The money gates' gauges, read from the read model at scrape time (right whether or not the pusher runs).

    `cloudbill_invoices_held`: invoices whose latest completed revision is held (not pushed to finance);
    `cloudbill_invoice_held_variance_minor{invoice_uuid,currency}`: each one's variance (lines - expected).
    """

    what = "held invoices gauge"

    def read(self, pool: DictPool) -> list[Any]:
        return ReadModelRepository(pool).held()

    def families(self, rows: list[Any]) -> Iterator[GaugeMetricFamily]:
        count = GaugeMetricFamily("cloudbill_invoices_held", "Invoices held by the money gates, not pushed")
        count.add_metric([], len(rows))
        yield count
        variance = GaugeMetricFamily(
            "cloudbill_invoice_held_variance_minor",
            "A held invoice's variance: its lines' gross minus what DigitalOcean says (minor units)",
            labels=["invoice_uuid", "currency"],
        )
        for r in rows:
            variance.add_metric([r["invoice_uuid"], r["currency"] or ""], r["reconciliation_difference_minor"] or 0)
        yield variance


HELD_GAUGES = HeldInvoices()
REGISTRY.register(HELD_GAUGES)
REGISTRY.register(FINOPS_GAUGES)
REGISTRY.register(LAG_GAUGES)

DESCRIPTION = """Read models of the cloudbill pipeline: balance snapshots, invoices with their ingest, match and push
status, per-line cost with the matched resource, unmatched cost.

Every `/api/v1/billing` route wants `Authorization: Bearer <JWT>` with the `platform_admin` role
(`cloudbill token --role platform_admin` mints one for local use)."""


def _broker_check(settings: Settings) -> Callable[[], None]:
    client: list[AdminClient] = []

    def check() -> None:
        if not client:
            cfg = base_config(settings, "cloudbill-api-readyz") | {"logger": logging.getLogger("cloudbill.api.readyz")}
            client.append(AdminClient(cfg))
        client[0].list_topics(timeout=2)

    return check


def _open_pool(settings: Settings) -> DictPool | None:
    """Opened in the background: the API starts (and answers /healthz) while the database comes up."""
    if not settings.database_url:
        log.warning("no DATABASE_URL: billing routes answer 503")
        return None
    pool: DictPool = ConnectionPool(
        settings.database_url,
        min_size=1,
        max_size=settings.database_pool_max,
        kwargs={"row_factory": dict_row, "autocommit": True},
        name="cloudbill-api",
        open=False,
        timeout=10,
    )
    pool.open(wait=False)
    return pool


def check_ops_settings(settings: Settings) -> None:
    if "ops" in (settings.api_docs, settings.api_metrics) and not settings.api_ops_port:
        raise ConfigError("API_DOCS or API_METRICS is `ops` but API_OPS_PORT is not set")
    if settings.api_ops_port and settings.api_ops_port == settings.api_port:
        raise ConfigError(f"API_OPS_PORT ({settings.api_ops_port}) must differ from API_PORT")


def create_app(settings: Settings) -> FastAPI:
    """The API app. Raises ConfigError for a configuration it must not serve with (short HMAC secret...)."""
    check_ops_settings(settings)
    verifier = TokenVerifier(settings)
    if not verifier.configured:
        log.warning("no API token key configured: every billing request answers 401")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.pool = _open_pool(settings)
        HELD_GAUGES.pool = FINOPS_GAUGES.pool = app.state.pool
        LAG_GAUGES.start(settings)
        try:
            yield
        finally:
            if HELD_GAUGES.pool is app.state.pool:
                HELD_GAUGES.pool = None
            if FINOPS_GAUGES.pool is app.state.pool:
                FINOPS_GAUGES.pool = None
            if LAG_GAUGES.settings is settings:
                LAG_GAUGES.stop()
            if app.state.pool is not None:
                app.state.pool.close()

    docs_here = settings.api_docs == "main"
    app = FastAPI(
        title="cloudbill admin API",
        version="1.0.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url="/docs" if docs_here else None,
        redoc_url="/redoc" if docs_here else None,
        openapi_url="/openapi.json" if docs_here else None,
    )
    app.state.settings = settings
    app.state.verifier = verifier
    app.state.pool = None
    app.state.broker_check = _broker_check(settings)
    app.state.readiness = Readiness(lambda: readiness_checks(app.state))
    app.include_router(billing)
    app.include_router(finops)
    app.include_router(ops)
    if settings.api_metrics == "main":
        app.include_router(metrics_router)

    @app.middleware("http")
    async def count_requests(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        started = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        path = getattr(route, "path", "unmatched")
        method = method_label(request.method)
        REQUESTS.labels(method, path, str(response.status_code)).inc()
        LATENCY.labels(method, path).observe(time.perf_counter() - started)
        return response

    return app


def create_ops_app(settings: Settings, api: FastAPI) -> FastAPI | None:
    """What API_DOCS=ops / API_METRICS=ops move off the API port (None when nothing does)."""
    if "ops" not in (settings.api_docs, settings.api_metrics):
        return None
    ops_app = FastAPI(title="cloudbill operations", docs_url=None, redoc_url=None, openapi_url=None)
    if settings.api_metrics == "ops":
        ops_app.include_router(metrics_router)
    if settings.api_docs == "ops":

        @ops_app.get("/openapi.json", include_in_schema=False)
        def openapi() -> JSONResponse:
            return JSONResponse(api.openapi())

        @ops_app.get("/docs", include_in_schema=False)
        def docs() -> HTMLResponse:
            return get_swagger_ui_html(openapi_url="/openapi.json", title=api.title)

        @ops_app.get("/redoc", include_in_schema=False)
        def redoc() -> HTMLResponse:
            return get_redoc_html(openapi_url="/openapi.json", title=api.title)

    return ops_app


def run(settings: Settings, stop: StopSignal | None = None) -> None:
    """`cloudbill run api`: serve until stop/SIGTERM (the operations port too, when one is set)."""
    app = create_app(settings)  # before anything else: a configuration error stops here, in one line
    if stop is None:
        stop = StopSignal().install()
    migrate(settings, ["readmodel"])
    servers = [_server(app, settings.api_host, settings.api_port)]
    ops_app = create_ops_app(settings, app)
    if ops_app is not None:
        servers.append(_server(ops_app, settings.api_ops_host, settings.api_ops_port))

    def watch() -> None:
        while not stop.wait(0.2) and not any(s.should_exit for s in servers):
            pass
        for s in servers:
            s.should_exit = True

    threading.Thread(target=watch, name="api-stop-watch", daemon=True).start()
    docs = {"main": "docs at /docs", "ops": "docs on the operations port", "off": "docs off"}[settings.api_docs]
    log.info("api on http://%s:%d (%s)", settings.api_host, settings.api_port, docs)
    if ops_app is not None:
        log.info(
            "operations on http://%s:%d (%s)",
            settings.api_ops_host,
            settings.api_ops_port,
            ", ".join(
                p for p, where in (("/docs", settings.api_docs), ("/metrics", settings.api_metrics)) if where == "ops"
            ),
        )

    async def serve_all() -> None:
        await asyncio.gather(*(s.serve() for s in servers))

    asyncio.run(serve_all())  # a port in use: uvicorn logs it in one line and exits 1


def _server(app: Any, host: str, port: int) -> uvicorn.Server:
    return uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_config=None, access_log=False))
