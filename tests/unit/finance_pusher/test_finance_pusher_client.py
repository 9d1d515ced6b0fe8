"""The finance HTTP adapter: request shape, JWT, and failure classification (httpx.MockTransport)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import pytest
from pydantic import SecretStr

from services.finance_pusher.finance_client import (
    IMPORT_PATH,
    FinanceClient,
    FinanceConfigError,
    FinanceRejected,
    FinanceUnavailable,
    parse_retry_after,
)
from shared.auth import verify
from shared.settings import Settings

SECRET = "finance-shared-secret-" + "0123456789abcdef" * 4
PAYLOAD = {"tenant_id": "platform-admin", "external_id": "u1", "amount_gross_minor": 1}


def client(handler, **kw) -> FinanceClient:
    return FinanceClient("http://finance.test/", SecretStr(SECRET), transport=httpx.MockTransport(handler), **kw)


def ok(action: str = "created") -> httpx.Response:
    return httpx.Response(200, json={"action": action, "invoice_id": "fin-1", "vendor_id": "v-1", "external_id": "u1"})


def test_request_carries_body_short_lived_pinned_jwt_and_idempotency_key() -> None:
    seen: list[httpx.Request] = []

    def handler(req: httpx.Request) -> httpx.Response:
        seen.append(req)
        return ok()

    with client(handler, ttl_s=120, algorithm="HS512", tenant_id="platform-admin", roles=["admin"]) as c:
        result = c.import_invoice(PAYLOAD, idempotency_key="k" * 64)
    assert (result.action, result.invoice_id, result.vendor_id) == ("created", "fin-1", "v-1")
    req = seen[0]
    assert req.method == "POST" and req.url.path == IMPORT_PATH and req.url.host == "finance.test"
    assert json.loads(req.content) == PAYLOAD
    assert req.headers["idempotency-key"] == "k" * 64
    scheme, token = req.headers["authorization"].split(" ", 1)
    assert scheme == "Bearer"
    claims = verify(token, SECRET, algorithms=["HS512"])
    assert claims["sub"] == "platform-admin" and claims["tenant_id"] == "platform-admin"
    assert claims["roles"] == ["admin"]
    assert 0 < claims["exp"] - claims["iat"] <= 300


def test_each_call_gets_a_fresh_token() -> None:
    tokens: list[str] = []

    def handler(req: httpx.Request) -> httpx.Response:
        tokens.append(req.headers["authorization"])
        return ok()

    with client(handler) as c:
        c.import_invoice(PAYLOAD, idempotency_key="k")
        c.import_invoice(PAYLOAD, idempotency_key="k")
    assert tokens[0] != tokens[1]  # distinct jti


def test_ttl_over_five_minutes_is_refused() -> None:
    with pytest.raises(ValueError, match="300"):
        FinanceClient("http://x", SecretStr("s"), ttl_s=301)


def test_from_settings_uses_identity_algorithm_and_url() -> None:
    seen: list[httpx.Request] = []

    def handler(req: httpx.Request) -> httpx.Response:
        seen.append(req)
        return ok("updated")

    s = Settings(
        _env_file=None,
        skyai_finance_url="http://fin.example:4010",
        skyai_finance_jwt_secret=SECRET,
        skyai_finance_jwt_algorithm="HS256",
        skyai_finance_tenant_id="acme",
        skyai_finance_roles="admin,auditor",
    )
    with FinanceClient.from_settings(s, transport=httpx.MockTransport(handler)) as c:
        assert c.import_invoice(PAYLOAD, idempotency_key="k").action == "updated"
    token = seen[0].headers["authorization"].split(" ", 1)[1]
    claims = verify(token, SECRET, algorithms=["HS256"])
    assert claims["tenant_id"] == "acme" and claims["roles"] == ["admin", "auditor"]
    assert seen[0].url.port == 4010


@pytest.mark.parametrize("status", [408, 409, 425, 500, 502, 503, 504, 507])
def test_408_409_425_and_5xx_are_unavailable(status: int) -> None:
    """Transient classes (shared/retry.py): a request timeout, a conflict with a concurrent write and "too early"
    are worth retrying; 409 used to dead-letter the invoice."""
    with client(lambda _r: httpx.Response(status, text="boom")) as c, pytest.raises(FinanceUnavailable) as ei:
        c.import_invoice(PAYLOAD, idempotency_key="k")
    assert ei.value.retry_after_s is None


def test_429_honours_retry_after() -> None:
    resp = httpx.Response(429, headers={"Retry-After": "7"}, json={"error": "rate_limited"})
    with client(lambda _r: resp) as c, pytest.raises(FinanceUnavailable) as ei:
        c.import_invoice(PAYLOAD, idempotency_key="k")
    assert ei.value.retry_after_s == 7.0


def test_503_with_retry_after_is_honoured_too() -> None:
    resp = httpx.Response(503, headers={"Retry-After": "2"})
    with client(lambda _r: resp) as c, pytest.raises(FinanceUnavailable) as ei:
        c.import_invoice(PAYLOAD, idempotency_key="k")
    assert ei.value.retry_after_s == 2.0


@pytest.mark.parametrize(
    "exc", [httpx.ConnectError("refused"), httpx.ReadTimeout("slow"), httpx.RemoteProtocolError("x")]
)
def test_transport_errors_and_timeouts_are_unavailable(exc: Exception) -> None:
    def handler(_req: httpx.Request) -> httpx.Response:
        raise exc

    with client(handler) as c, pytest.raises(FinanceUnavailable):
        c.import_invoice(PAYLOAD, idempotency_key="k")


def test_unreadable_2xx_is_retried_not_dead_lettered() -> None:
    with client(lambda _r: httpx.Response(200, text="<html>")) as c, pytest.raises(FinanceUnavailable):
        c.import_invoice(PAYLOAD, idempotency_key="k")


@pytest.mark.parametrize("status", [401, 403])
def test_401_403_are_configuration_errors_without_the_token(status: int) -> None:
    captured: list[str] = []

    def handler(req: httpx.Request) -> httpx.Response:
        captured.append(req.headers["authorization"].split(" ", 1)[1])
        return httpx.Response(status, json={"error": "unauthorized", "detail": "bad signature"})

    with client(handler) as c, pytest.raises(FinanceConfigError) as ei:
        c.import_invoice(PAYLOAD, idempotency_key="k")
    assert ei.value.status == status
    assert str(status) in str(ei.value)
    assert captured[0] not in str(ei.value) and SECRET not in str(ei.value)


@pytest.mark.parametrize("status", [404, 405])
def test_missing_endpoint_is_a_configuration_error_not_a_dlq_flood(status: int) -> None:
    with client(lambda _r: httpx.Response(status)) as c, pytest.raises(FinanceConfigError, match="no finance import"):
        c.import_invoice(PAYLOAD, idempotency_key="k")


@pytest.mark.parametrize("status", [400, 410, 413, 422])
def test_422_and_other_4xx_are_rejections_with_the_body(status: int) -> None:
    body = {"error": "validation_failed", "errors": [{"field": "invoice_date", "message": "invalid date"}]}
    with client(lambda _r: httpx.Response(status, json=body)) as c, pytest.raises(FinanceRejected) as ei:
        c.import_invoice(PAYLOAD, idempotency_key="k")
    assert ei.value.status == status
    assert "invoice_date" in str(ei.value) and f"HTTP {status}" in str(ei.value)
    assert isinstance(ei.value, ValueError)


def test_parse_retry_after_forms() -> None:
    now = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
    assert parse_retry_after(None) is None
    assert parse_retry_after("") is None
    assert parse_retry_after("garbage") is None
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after("1.5") == 1.5
    assert parse_retry_after("-4") == 0.0
    assert parse_retry_after("99999") == 600.0
    assert parse_retry_after("nan") is None
    assert parse_retry_after(format_datetime(now + timedelta(seconds=30), usegmt=True), now=now) == 30.0
    assert parse_retry_after(format_datetime(now - timedelta(seconds=30), usegmt=True), now=now) == 0.0
