"""The finance service simulator: the import endpoint exactly as the contract says, plus test hooks.

`POST /api/v1/integrations/cloud/import-invoice` checks, in order: injected faults (503/500/slow), the JWT
(shared secret, pinned algorithm, `exp` required, lifetime <= 300 s: 401), the `admin` role (403), the body
(422 with every field error), then honours `Idempotency-Key` as a real service does (the same key with the
same body: the stored answer again, nothing changes; the same key with another body: 422
`idempotency_key_reused`), then upserts on (tenant_id, source, external_id): `created` once, `updated`
after. Data lives in Postgres (schema finance_sim) so it survives restarts. `/api/v1/invoices` and
`/api/v1/vendors` show what it holds; `/_sim/faults` and `/_sim/calls` are the test hooks.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
import time
from collections import Counter, deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool

from shared.auth import RoleError, TokenError, require_role, verify
from shared.events import canonical_json
from sims.finance.store import FinanceStore, IdempotencyConflict, ImportResult
from sims.finance.validation import ImportInvoice, validate_import

log = logging.getLogger(__name__)

WRITE_ROLE = "admin"
IMPORT_PATH = "/api/v1/integrations/cloud/import-invoice"


class FinanceFaults(BaseModel):
    """Posted to `/_sim/faults`; counters are consumed one per import call."""

    model_config = ConfigDict(extra="forbid")

    unavailable_calls: int = Field(0, ge=0, description="The next N import calls answer 503.")
    unavailable_seconds: float = Field(0, ge=0, description="Import calls answer 503 for this many seconds from now.")
    slow_ms: int = Field(0, ge=0, description="Delay every import call by this many milliseconds.")
    server_errors: int = Field(0, ge=0, description="The next N import calls answer 500.")
    rate_limited_calls: int = Field(0, ge=0, description="The next N import calls answer 429 with Retry-After.")
    retry_after_s: int = Field(1, ge=0, description="Seconds in the Retry-After of injected 429s (0 allowed).")


class _FaultState:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.unavailable_calls = 0
        self.unavailable_until = 0.0
        self.slow_ms = 0
        self.server_errors = 0
        self.rate_limited_calls = 0
        self.retry_after_s = 1

    def update(self, f: FinanceFaults, fields: set[str]) -> None:
        with self._lock:
            if "unavailable_calls" in fields:
                self.unavailable_calls = f.unavailable_calls
            if "unavailable_seconds" in fields:
                self.unavailable_until = time.monotonic() + f.unavailable_seconds if f.unavailable_seconds else 0.0
            if "slow_ms" in fields:
                self.slow_ms = f.slow_ms
            if "server_errors" in fields:
                self.server_errors = f.server_errors
            if "rate_limited_calls" in fields:
                self.rate_limited_calls = f.rate_limited_calls
            if "retry_after_s" in fields:
                self.retry_after_s = f.retry_after_s

    def clear(self) -> None:
        self.update(FinanceFaults(), set(FinanceFaults.model_fields))

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "unavailable_calls": self.unavailable_calls,
                "unavailable_seconds": round(max(0.0, self.unavailable_until - time.monotonic()), 3),
                "slow_ms": self.slow_ms,
                "server_errors": self.server_errors,
                "rate_limited_calls": self.rate_limited_calls,
                "retry_after_s": self.retry_after_s,
            }

    def decide(self) -> tuple[float, int | None]:
        """(delay seconds, status to answer instead or None)."""
        with self._lock:
            delay = self.slow_ms / 1000
            if self.unavailable_calls > 0:
                self.unavailable_calls -= 1
                return delay, 503
            if time.monotonic() < self.unavailable_until:
                return delay, 503
            if self.server_errors > 0:
                self.server_errors -= 1
                return delay, 500
            if self.rate_limited_calls > 0:
                self.rate_limited_calls -= 1
                return delay, 429
            return delay, None


class _Calls:
    """Import calls since start (every outcome, including refusals): for tests asserting retries."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls: deque[dict[str, Any]] = deque(maxlen=10_000)
        self._total = 0
        self._outcomes: Counter[str] = Counter()

    def add(self, status: int, outcome: str, external_id: str | None, idempotency_key: str | None) -> None:
        with self._lock:
            self._total += 1
            self._outcomes[outcome] += 1
            self._calls.append(
                {
                    "time": round(time.time(), 6),
                    "status": status,
                    "outcome": outcome,
                    "external_id": external_id,
                    "idempotency_key": idempotency_key,
                }
            )

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {"total": self._total, "by_outcome": dict(self._outcomes), "calls": list(self._calls)}

    def clear(self) -> None:
        with self._lock:
            self._calls.clear()
            self._total = 0
            self._outcomes.clear()


def _error(status: int, error: str, detail: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": error, "detail": detail, **extra}, status_code=status)


@dataclass(frozen=True)
class _TokenPolicy:
    """How the import endpoint checks a bearer token: pinned algorithm, bounded lifetime, a tenant."""

    secret: str
    algorithm: str
    max_lifetime_s: int
    leeway_s: int

    def claims(self, request: Request) -> dict[str, Any]:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise TokenError("missing bearer token")
        claims = verify(token.strip(), self.secret, algorithms=[self.algorithm], leeway_s=self.leeway_s)
        issued = claims.get("iat")
        start = issued if isinstance(issued, int | float) else time.time()
        if claims["exp"] - start > self.max_lifetime_s + self.leeway_s:
            raise TokenError(f"token lifetime exceeds {self.max_lifetime_s} s")
        tenant = claims.get("tenant_id") or claims.get("sub")
        if not isinstance(tenant, str) or not tenant:
            raise TokenError("token lacks a tenant (tenant_id or sub)")
        return claims


def create_app(
    database_url: str,
    jwt_secret: str,
    algorithm: str = "HS512",
    *,
    max_token_lifetime_s: int = 300,
    leeway_s: int = 10,
) -> FastAPI:
    """The finance simulator on `database_url` (its schema is migrated now)."""
    if not jwt_secret:
        raise ValueError("the finance simulator needs a JWT secret")
    store = FinanceStore(database_url)
    store.migrate()
    faults = _FaultState()
    calls = _Calls()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await run_in_threadpool(store.close)

    app = FastAPI(title="Finance service simulator", lifespan=lifespan)
    app.state.store = store
    app.state.faults = faults
    app.state.calls = calls
    policy = _TokenPolicy(jwt_secret, algorithm, max_token_lifetime_s, leeway_s)
    _register_import(app, store, faults, calls, policy)
    _register_reads(app, store)
    _register_sim(app, store, faults, calls)
    return app


async def _injected_fault(faults: _FaultState, calls: _Calls, idem: str | None) -> JSONResponse | None:
    """The delay and the answer of an injected fault, if one is due (checked before anything else)."""
    delay, fault = faults.decide()
    if delay:
        await asyncio.sleep(delay)
    if fault == 503:
        calls.add(503, "unavailable", None, idem)
        resp = _error(503, "unavailable", "finance service temporarily unavailable (simulated)")
        resp.headers["retry-after"] = "1"
        return resp
    if fault == 500:
        calls.add(500, "server_error", None, idem)
        return _error(500, "internal_error", "simulated server error")
    if fault == 429:
        calls.add(429, "rate_limited", None, idem)
        resp = _error(429, "rate_limited", "too many requests (simulated)")
        resp.headers["retry-after"] = str(faults.retry_after_s)
        return resp
    return None


def _authorized(
    policy: _TokenPolicy, request: Request, calls: _Calls, idem: str | None
) -> tuple[dict[str, Any] | None, JSONResponse | None]:
    """The token's claims when it may write, else the 401/403 answer."""
    try:
        claims = policy.claims(request)
        require_role(claims, WRITE_ROLE)
    except TokenError as e:
        calls.add(401, "unauthorized", None, idem)
        return None, _error(401, "unauthorized", str(e))
    except RoleError as e:
        calls.add(403, "forbidden", None, idem)
        return None, _error(403, "forbidden", str(e))
    return claims, None


def _imported(result: ImportResult, inv: ImportInvoice) -> JSONResponse:
    """The answer to an import the store took (or replayed), logged."""
    log.info(
        "import %s %s/%s -> %s%s",
        result.action,
        inv.source,
        inv.external_id,
        result.invoice_id,
        " (replayed: same Idempotency-Key and body)" if result.replayed else "",
    )
    resp = JSONResponse(
        {
            "action": result.action,
            "invoice_id": result.invoice_id,
            "vendor_id": result.vendor_id,
            "external_id": inv.external_id,
        }
    )
    if result.replayed:
        resp.headers["idempotent-replayed"] = "true"
    return resp


def _register_import(
    app: FastAPI, store: FinanceStore, faults: _FaultState, calls: _Calls, policy: _TokenPolicy
) -> None:
    """The import endpoint: faults, then the token and role, then the body, then idempotency and the upsert."""

    @app.post(IMPORT_PATH)
    async def import_invoice(request: Request) -> JSONResponse:
        idem = request.headers.get("idempotency-key")
        if (fault := await _injected_fault(faults, calls, idem)) is not None:
            return fault
        claims, refused = _authorized(policy, request, calls, idem)
        if claims is None:
            assert refused is not None
            return refused
        try:
            body = await request.json()
        except ValueError:
            body = None
        tenant = claims.get("tenant_id") or claims.get("sub")
        inv, errors = validate_import(body, tenant)
        ext = body.get("external_id") if isinstance(body, dict) and isinstance(body.get("external_id"), str) else None
        if inv is None:
            calls.add(422, "validation_failed", ext, idem)
            return JSONResponse({"error": "validation_failed", "errors": errors}, status_code=422)
        body_sha = hashlib.sha256(canonical_json(body).encode()).hexdigest() if idem else None
        try:
            result = await run_in_threadpool(store.import_invoice, inv, idem, body_sha)
        except IdempotencyConflict as e:
            calls.add(422, "idempotency_conflict", inv.external_id, idem)
            log.warning("import %s/%s refused: %s", inv.source, inv.external_id, e)
            return _error(422, "idempotency_key_reused", str(e))
        calls.add(200, "replayed" if result.replayed else result.action, inv.external_id, idem)
        return _imported(result, inv)


def _register_reads(app: FastAPI, store: FinanceStore) -> None:
    """What the finance service holds, for tests and the demo: invoices, vendors, health."""

    @app.get("/api/v1/invoices")
    async def list_invoices(
        tenant_id: str | None = None, source: str | None = None, external_id: str | None = None
    ) -> dict[str, Any]:
        filters = {"tenant_id": tenant_id or "", "source": source or "", "external_id": external_id or ""}
        rows = await run_in_threadpool(store.invoices, filters)
        return {"invoices": rows, "total": len(rows)}

    @app.get("/api/v1/vendors")
    async def list_vendors(tenant_id: str | None = None) -> dict[str, Any]:
        rows = await run_in_threadpool(store.vendors, tenant_id)
        return {"vendors": rows, "total": len(rows)}

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}


def _register_sim(app: FastAPI, store: FinanceStore, faults: _FaultState, calls: _Calls) -> None:
    """The test hooks: `/_sim/faults` to inject faults, `/_sim/calls` to see every import call."""

    @app.get("/_sim/faults")
    async def get_faults() -> dict[str, Any]:
        return faults.snapshot()

    @app.post("/_sim/faults")
    async def set_faults(request: Request) -> JSONResponse:
        try:
            body = await request.json()
            if not isinstance(body, dict):
                raise ValueError("a JSON object is expected")
            f = FinanceFaults.model_validate(body)
        except (ValueError, ValidationError) as e:
            return JSONResponse({"error": "validation_failed", "detail": str(e)}, status_code=422)
        faults.update(f, set(body))
        return JSONResponse(faults.snapshot())

    @app.delete("/_sim/faults")
    async def clear_faults() -> dict[str, Any]:
        faults.clear()
        return faults.snapshot()

    @app.get("/_sim/calls")
    async def get_calls() -> dict[str, Any]:
        out = calls.snapshot()
        out["stored"] = await run_in_threadpool(store.import_calls)
        return out

    @app.delete("/_sim/calls")
    async def clear_calls() -> dict[str, Any]:
        calls.clear()
        return calls.snapshot()
