"""HTTP adapter for the finance service's import endpoint (httpx), with failures classified.

Each request carries a freshly minted short-lived JWT; the token and the secret never appear in an
exception text or a log line. The caller decides what each failure class means for the record.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
from pydantic import SecretStr

from shared.auth import mint
from shared.metrics import HTTP_CALLS, HTTP_LATENCY
from shared.retry import http_class
from shared.settings import Settings

log = logging.getLogger(__name__)

IMPORT_PATH = "/api/v1/integrations/cloud/import-invoice"
MAX_BODY_IN_ERROR = 2000
MAX_RETRY_AFTER_S = 600.0


class FinanceError(Exception):
    """Base of every finance call failure."""


class FinanceUnavailable(FinanceError):
    """Connection error, timeout, 408, 409, 425, 429 or 5xx: try again later (after `retry_after_s` when finance said so)."""

    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class FinanceConfigError(FinanceError):
    """Finance refuses our credentials (401/403) or has no import endpoint at our URL: a configuration error."""

    def __init__(self, message: str, *, status: int) -> None:
        super().__init__(message)
        self.status = status


class FinanceRejected(FinanceError, ValueError):
    """Finance refuses this invoice (422, other 4xx): retrying cannot help, the record is dead-lettered."""

    def __init__(self, message: str, *, status: int, body: str) -> None:
        super().__init__(message)
        self.status = status
        self.body = body


@dataclass(frozen=True)
class ImportResult:
    action: str  # "created" | "updated"
    invoice_id: str
    vendor_id: str | None


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """`Retry-After` as delay-seconds or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    if seconds != seconds:  # NaN
        return None
    return min(max(0.0, seconds), MAX_RETRY_AFTER_S)


class FinanceClient:
    def __init__(
        self,
        base_url: str,
        secret: SecretStr,
        *,
        algorithm: str = "HS512",
        tenant_id: str = "platform-admin",
        roles: list[str] | None = None,
        ttl_s: int = 120,
        timeout_s: float = 15.0,
        transport: httpx.BaseTransport | None = None,
        service: str = "finance-pusher",
    ) -> None:
        if not 0 < ttl_s <= 300:
            raise ValueError("finance JWT lifetime must be between 1 and 300 seconds")
        self._secret = secret
        self._algorithm = algorithm
        self._tenant_id = tenant_id
        self._roles = list(roles if roles is not None else ["admin"])
        self._ttl_s = ttl_s
        self._service = service
        self._http = httpx.Client(base_url=base_url.rstrip("/"), timeout=timeout_s, transport=transport)

    @classmethod
    def from_settings(cls, settings: Settings, *, transport: httpx.BaseTransport | None = None) -> FinanceClient:
        if settings.skyai_finance_jwt_secret is None:
            raise ValueError("SKYAI_FINANCE_JWT_SECRET is not set")
        return cls(
            settings.skyai_finance_url,
            settings.skyai_finance_jwt_secret,
            algorithm=settings.skyai_finance_jwt_algorithm,
            tenant_id=settings.skyai_finance_tenant_id,
            roles=settings.skyai_finance_roles,
            ttl_s=settings.skyai_finance_jwt_ttl_s,
            timeout_s=settings.skyai_finance_timeout_s,
            transport=transport,
        )

    def __enter__(self) -> FinanceClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _token(self) -> str:
        return mint(
            self._secret.get_secret_value(),
            algorithm=self._algorithm,
            ttl_s=self._ttl_s,
            subject=self._tenant_id,
            claims={"tenant_id": self._tenant_id, "roles": self._roles},
        )

    def import_invoice(self, payload: dict[str, Any], *, idempotency_key: str) -> ImportResult:
        """POST one invoice; returns finance's answer or raises a classified FinanceError."""
        headers = {"Authorization": f"Bearer {self._token()}", "Idempotency-Key": idempotency_key}
        started = time.monotonic()
        try:
            resp = self._http.post(IMPORT_PATH, json=payload, headers=headers)
        except httpx.TimeoutException as e:
            HTTP_CALLS.labels(self._service, "finance", "timeout").inc()
            raise FinanceUnavailable(f"finance timed out ({type(e).__name__})") from None
        except httpx.TransportError as e:
            HTTP_CALLS.labels(self._service, "finance", "error").inc()
            raise FinanceUnavailable(f"finance unreachable at {self._http.base_url} ({type(e).__name__})") from None
        finally:
            HTTP_LATENCY.labels(self._service, "finance").observe(time.monotonic() - started)
        HTTP_CALLS.labels(self._service, "finance", str(resp.status_code)).inc()
        return self._classify(resp)

    def _classify(self, resp: httpx.Response) -> ImportResult:
        status = resp.status_code
        body = resp.text[:MAX_BODY_IN_ERROR]
        if 200 <= status < 300:
            try:
                data = resp.json()
                return ImportResult(str(data["action"]), str(data["invoice_id"]), data.get("vendor_id"))
            except (ValueError, KeyError, TypeError):
                # Finance may have stored it; the same key re-sent later is harmless, a DLQ would lose it.
                raise FinanceUnavailable(f"finance answered HTTP {status} with an unreadable body: {body}") from None
        if http_class(status) == "transient":  # 408, 409, 425, 429, 5xx
            raise FinanceUnavailable(
                f"finance answered HTTP {status}", retry_after_s=parse_retry_after(resp.headers.get("retry-after"))
            )
        if status in (401, 403):
            raise FinanceConfigError(f"finance refused the pusher's credentials: HTTP {status}: {body}", status=status)
        if status in (404, 405) or 300 <= status < 400:
            # No import endpoint at the configured URL: every invoice would fail alike, so no DLQ flood.
            raise FinanceConfigError(
                f"no finance import endpoint at {self._http.base_url}{IMPORT_PATH}: HTTP {status}", status=status
            )
        raise FinanceRejected(f"finance rejected the invoice: HTTP {status}: {body}", status=status, body=body)
