"""The admin HTTP API: `create_app(settings)` and `cloudbill run api` (uvicorn until stop/SIGTERM)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import uvicorn
from confluent_kafka.admin import AdminClient
from fastapi import FastAPI, Request, Response
from prometheus_client import Counter, Histogram
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from services.api.routes import billing, ops
from services.api.security import TokenVerifier
from shared.db import migrate
from shared.kafka import StopSignal
from shared.kafka.config import base_config
from shared.settings import Settings

log = logging.getLogger(__name__)

REQUESTS = Counter("cloudbill_api_requests_total", "HTTP requests served", ["method", "route", "status"])
LATENCY = Histogram("cloudbill_api_request_seconds", "HTTP request latency", ["method", "route"])

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


def _open_pool(settings: Settings) -> ConnectionPool | None:
    """Opened in the background: the API starts (and answers /healthz) while the database comes up."""
    if not settings.database_url:
        log.warning("no DATABASE_URL: billing routes answer 503")
        return None
    pool = ConnectionPool(
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


def create_app(settings: Settings) -> FastAPI:
    verifier = TokenVerifier(settings)
    if not verifier.configured:
        log.warning("no API token key configured: every billing request answers 401")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.pool = _open_pool(settings)
        try:
            yield
        finally:
            if app.state.pool is not None:
                app.state.pool.close()

    app = FastAPI(
        title="cloudbill admin API",
        version="1.0.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url="/docs",
    )
    app.state.settings = settings
    app.state.verifier = verifier
    app.state.pool = None
    app.state.broker_check = _broker_check(settings)
    app.include_router(billing)
    app.include_router(ops)

    @app.middleware("http")
    async def count_requests(request: Request, call_next: Callable) -> Response:
        started = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        path = getattr(route, "path", "unmatched")
        REQUESTS.labels(request.method, path, str(response.status_code)).inc()
        LATENCY.labels(request.method, path).observe(time.perf_counter() - started)
        return response

    return app


def run(settings: Settings, stop: StopSignal | None = None) -> None:
    """`cloudbill run api`: serve until stop/SIGTERM."""
    if stop is None:
        stop = StopSignal().install()
    migrate(settings, ["readmodel"])
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(settings), host=settings.api_host, port=settings.api_port, log_config=None, access_log=False
        )
    )

    def watch() -> None:
        while not stop.wait(0.2) and not server.should_exit:
            pass
        server.should_exit = True

    threading.Thread(target=watch, name="api-stop-watch", daemon=True).start()
    log.info("api on http://%s:%d (docs at /docs)", settings.api_host, settings.api_port)
    server.run()
