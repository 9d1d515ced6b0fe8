"""The finance simulator against a real PostgreSQL: JWT, role, validation, dedup, vendors, restarts, faults."""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import jwt
import pytest

from shared.auth import mint
from sims.finance.app import IMPORT_PATH, create_app
from sims.server import RunningServer, run_in_thread

SECRET = "finance-sim-test-secret-" + "x" * 48  # >= 64 bytes: no short-key warning for HS512
TENANT = "platform-admin"


def token(
    *,
    secret: str = SECRET,
    algorithm: str = "HS512",
    ttl_s: int = 120,
    roles: list[str] | None = None,
    tenant: str = TENANT,
    now: datetime | None = None,
) -> str:
    return mint(
        secret,
        algorithm=algorithm,
        ttl_s=ttl_s,
        claims={"tenant_id": tenant, "roles": ["admin"] if roles is None else roles},
        subject=tenant,
        now=now,
    )


def body(**changes: Any) -> dict[str, Any]:
    b = {
        "tenant_id": TENANT,
        "source": "digitalocean",
        "external_id": "3f6a9c2e-8b41-4d7a-9e15-c2d04b7a6e01",
        "invoice_number": "9217394",
        "invoice_date": "2026-05-01",
        "billing_period": {"start": "2026-04-01", "end": "2026-04-30"},
        "currency": "USD",
        "vendor": {"name": "DigitalOcean", "category": "cloud"},
        "amount_net_minor": 7902,
        "amount_tax_minor": 790,
        "amount_gross_minor": 8692,
        "lines_count": 33,
    }
    return b | changes


@pytest.fixture
def finance(database_url: str) -> Iterator[RunningServer]:
    srv = run_in_thread(create_app(database_url, SECRET))
    yield srv
    srv.stop()


@pytest.fixture
def client(finance: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=finance.url, timeout=10) as c:
        yield c


def post(client: httpx.Client, payload: Any, tok: str | None = None, key: str | None = "") -> httpx.Response:
    """One import; a fresh Idempotency-Key per call unless one is given (None: no key)."""
    headers = {"Authorization": f"Bearer {tok if tok is not None else token()}"}
    if key is not None:
        headers["Idempotency-Key"] = key or uuid.uuid4().hex
    return client.post(IMPORT_PATH, json=payload, headers=headers)


# -------------------------------------------------------------------------------------------- idempotency
def test_same_key_same_body_replays_the_stored_answer_and_changes_nothing(client: httpx.Client) -> None:
    first = post(client, body(), key="rev1")
    assert first.json()["action"] == "created"
    again = post(client, dict(reversed(list(body().items()))), key="rev1")  # same body, other key order
    assert again.status_code == 200 and again.json() == first.json()
    assert again.headers["idempotent-replayed"] == "true"
    (row,) = client.get("/api/v1/invoices").json()["invoices"]
    assert row["update_count"] == 0
    assert client.get("/_sim/calls").json()["by_outcome"] == {"created": 1, "replayed": 1}


def test_same_key_other_body_is_refused(client: httpx.Client) -> None:
    assert post(client, body(), key="rev1").json()["action"] == "created"
    r = post(client, body(amount_net_minor=7900, amount_gross_minor=8690), key="rev1")
    assert r.status_code == 422 and r.json()["error"] == "idempotency_key_reused"
    (row,) = client.get("/api/v1/invoices").json()["invoices"]
    assert row["amount_gross_minor"] == 8692
    other_tenant = token(tenant="tenant-b")  # keys are per tenant
    assert post(client, body(tenant_id="tenant-b"), tok=other_tenant, key="rev1").json()["action"] == "created"


def test_a_revert_with_a_reused_key_keeps_the_wrong_content(client: httpx.Client) -> None:
    """Why a key must name one body: A(k1) → B(k2) → A(k1 again) replays A's answer while finance keeps B."""
    a, b = body(), body(amount_net_minor=7900, amount_gross_minor=8690)
    post(client, a, key="k-a")
    post(client, b, key="k-b")
    replay = post(client, a, key="k-a")
    assert replay.json()["action"] == "created" and replay.headers.get("idempotent-replayed") == "true"
    assert client.get("/api/v1/invoices").json()["invoices"][0]["amount_gross_minor"] == 8690
    assert post(client, a, key="k-a3").json()["action"] == "updated"  # a new key for the revert: A is back
    assert client.get("/api/v1/invoices").json()["invoices"][0]["amount_gross_minor"] == 8692


# -------------------------------------------------------------------------------------------------- dedup
def test_created_then_updated_one_row_and_vendor_auto_created(client: httpx.Client) -> None:
    r1 = post(client, body(), key="aaa")
    assert r1.status_code == 200, r1.text
    first = r1.json()
    assert first["action"] == "created" and first["external_id"] == body()["external_id"]
    assert first["invoice_id"] and first["vendor_id"]
    r2 = post(client, body(amount_net_minor=7900, amount_gross_minor=8690), key="bbb")
    assert r2.json() == first | {"action": "updated"}
    r3 = post(client, body(), key="ccc")
    assert r3.json()["action"] == "updated"

    invoices = client.get("/api/v1/invoices").json()
    assert invoices["total"] == 1
    inv = invoices["invoices"][0]
    assert inv["id"] == first["invoice_id"]
    assert (inv["amount_gross_minor"], inv["amount_tax_minor"], inv["amount_net_minor"]) == (8692, 790, 7902)
    assert inv["update_count"] == 2 and inv["updated_at"] > inv["created_at"]
    assert inv["source"] == "digitalocean" and inv["tenant_id"] == TENANT and inv["lines_count"] == 33
    assert inv["billing_period"] == {"start": "2026-04-01", "end": "2026-04-30"}
    assert inv["vendor"] == {"id": first["vendor_id"], "name": "DigitalOcean", "category": "cloud"}
    assert inv["last_idempotency_key"] == "ccc"

    vendors = client.get("/api/v1/vendors").json()
    assert vendors["total"] == 1
    assert vendors["vendors"][0] | {"created_at": None} == {
        "id": first["vendor_id"],
        "tenant_id": TENANT,
        "name": "DigitalOcean",
        "category": "cloud",
        "created_at": None,
    }
    calls = client.get("/_sim/calls").json()
    assert calls["by_outcome"] == {"created": 1, "updated": 2}
    assert [c["idempotency_key"] for c in calls["stored"]] == ["aaa", "bbb", "ccc"]


def test_dedup_key_is_tenant_source_external_id(client: httpx.Client) -> None:
    assert post(client, body()).json()["action"] == "created"
    assert post(client, body(external_id="other")).json()["action"] == "created"
    assert post(client, body(source="aws")).json()["action"] == "created"
    other_tenant = token(tenant="tenant-b")
    assert post(client, body(tenant_id="tenant-b"), tok=other_tenant).json()["action"] == "created"
    assert post(client, body(), key=None).json()["action"] == "updated"
    assert client.get("/api/v1/invoices").json()["total"] == 4
    assert client.get("/api/v1/invoices", params={"source": "aws"}).json()["total"] == 1
    assert client.get("/api/v1/invoices", params={"tenant_id": "tenant-b"}).json()["total"] == 1
    # One vendor per tenant and name; a second tenant gets its own.
    vendors = client.get("/api/v1/vendors").json()["vendors"]
    assert sorted(v["tenant_id"] for v in vendors) == [TENANT, "tenant-b"]
    assert client.get("/api/v1/vendors", params={"tenant_id": TENANT}).json()["total"] == 1


def test_vendor_matched_by_name_case_insensitively(client: httpx.Client) -> None:
    v1 = post(client, body()).json()["vendor_id"]
    v2 = post(client, body(external_id="x2", vendor={"name": "digitalocean", "category": "other"})).json()["vendor_id"]
    v3 = post(client, body(external_id="x3", vendor={"name": "Hetzner", "category": "cloud"})).json()["vendor_id"]
    assert v1 == v2 != v3
    assert client.get("/api/v1/vendors").json()["total"] == 2


def test_survives_restart_on_the_same_database(database_url: str) -> None:
    with run_in_thread(create_app(database_url, SECRET)) as srv:
        first = post(httpx.Client(base_url=srv.url), body()).json()
    with run_in_thread(create_app(database_url, SECRET)) as srv, httpx.Client(base_url=srv.url) as c:
        again = post(c, body()).json()
        assert again == first | {"action": "updated"}
        assert c.get("/api/v1/invoices").json()["total"] == 1
        assert c.get("/api/v1/vendors").json()["total"] == 1


def test_concurrent_first_imports_create_once(client: httpx.Client) -> None:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(4) as pool:
        actions = list(pool.map(lambda _: post(client, body()).json()["action"], range(8)))
    assert actions.count("created") == 1 and actions.count("updated") == 7
    assert client.get("/api/v1/invoices").json()["invoices"][0]["update_count"] == 7


# ---------------------------------------------------------------------------------------------------- JWT
def _b64(obj: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


def _unsigned(claims: dict[str, Any]) -> str:
    return f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(claims)}."


@pytest.mark.parametrize(
    "case",
    ["missing", "garbage", "bad_signature", "expired", "alg_none", "wrong_alg", "no_exp", "too_long", "no_tenant"],
)
def test_bad_tokens_are_401(client: httpx.Client, case: str) -> None:
    now = int(time.time())
    claims = {"tenant_id": TENANT, "roles": ["admin"], "iat": now, "exp": now + 60}
    headers: dict[str, str] = {}
    if case == "garbage":
        headers["Authorization"] = "Bearer not-a-jwt"
    elif case == "bad_signature":
        headers["Authorization"] = f"Bearer {token(secret='another-secret-' + 'y' * 60)}"
    elif case == "expired":
        headers["Authorization"] = f"Bearer {token(now=datetime.now(UTC) - timedelta(minutes=10), ttl_s=60)}"
    elif case == "alg_none":
        headers["Authorization"] = f"Bearer {_unsigned(claims)}"
    elif case == "wrong_alg":
        headers["Authorization"] = f"Bearer {token(algorithm='HS256')}"
    elif case == "no_exp":
        headers["Authorization"] = f"Bearer {jwt.encode({'tenant_id': TENANT, 'roles': ['admin']}, SECRET, 'HS512')}"
    elif case == "too_long":
        headers["Authorization"] = f"Bearer {token(ttl_s=3600)}"
    elif case == "no_tenant":
        headers["Authorization"] = f"Bearer {jwt.encode({'roles': ['admin'], 'exp': now + 60}, SECRET, 'HS512')}"
    r = client.post(IMPORT_PATH, json=body(), headers=headers)
    assert r.status_code == 401, r.text
    assert r.json()["error"] == "unauthorized" and r.json()["detail"]
    assert SECRET not in r.text
    assert client.get("/api/v1/invoices").json()["total"] == 0
    assert client.get("/_sim/calls").json()["by_outcome"] == {"unauthorized": 1}


def test_configured_algorithm_is_pinned(database_url: str) -> None:
    with run_in_thread(create_app(database_url, SECRET, algorithm="HS256")) as srv, httpx.Client(base_url=srv.url) as c:
        assert post(c, body(), tok=token(algorithm="HS256")).status_code == 200
        assert post(c, body(), tok=token(algorithm="HS512")).status_code == 401


@pytest.mark.parametrize("roles", [[], ["viewer"], ["platform_admin"], ["ADMIN"]])
def test_without_admin_role_is_403(client: httpx.Client, roles: list[str]) -> None:
    r = post(client, body(), tok=token(roles=roles))
    assert r.status_code == 403
    assert r.json()["error"] == "forbidden"
    assert client.get("/api/v1/invoices").json()["total"] == 0


# ------------------------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    ("payload", "fields"),
    [
        ({k: v for k, v in body().items() if k != "external_id"}, {"external_id"}),
        ({k: v for k, v in body().items() if k not in ("vendor", "currency")}, {"vendor", "currency"}),
        (body(invoice_date="2026-02-30"), {"invoice_date"}),
        (body(invoice_date="01/05/2026"), {"invoice_date"}),
        (body(invoice_date="20260501"), {"invoice_date"}),
        (body(billing_period={"start": "2026-04-30", "end": "2026-04-01"}), {"billing_period.end"}),
        (body(billing_period={"start": "2026-04-01"}), {"billing_period.end"}),
        (body(billing_period="2026-04"), {"billing_period"}),
        (body(lines_count=-1), {"lines_count"}),
        (body(lines_count="33"), {"lines_count"}),
        (body(amount_tax_minor=791), {"amount_gross_minor"}),
        (body(amount_net_minor=79.02), {"amount_net_minor"}),
        (body(amount_gross_minor=True), {"amount_gross_minor"}),
        (body(tenant_id="someone-else"), {"tenant_id"}),
        (body(source="oracle"), {"source"}),
        (body(currency="usd"), {"currency"}),
        (body(vendor={"name": "", "category": "cloud"}), {"vendor.name"}),
        (body(vendor={"name": "DigitalOcean"}), {"vendor.category"}),
        (body(invoice_number=7), {"invoice_number"}),
        ([1, 2], {"body"}),
    ],
)
def test_invalid_bodies_are_422_with_field_errors(client: httpx.Client, payload: Any, fields: set[str]) -> None:
    r = post(client, payload)
    assert r.status_code == 422, r.text
    out = r.json()
    assert out["error"] == "validation_failed"
    assert {e["field"] for e in out["errors"]} == fields
    assert all(e["message"] for e in out["errors"])
    assert client.get("/api/v1/invoices").json()["total"] == 0


def test_not_json_is_422(client: httpx.Client) -> None:
    r = client.post(IMPORT_PATH, content=b"{oops", headers={"Authorization": f"Bearer {token()}"})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "body"


def test_null_invoice_number_is_accepted(client: httpx.Client) -> None:
    assert post(client, body(invoice_number=None)).json()["action"] == "created"
    assert client.get("/api/v1/invoices").json()["invoices"][0]["invoice_number"] is None


# ------------------------------------------------------------------------------------------------- faults
def test_unavailable_for_n_calls(client: httpx.Client) -> None:
    client.post("/_sim/faults", json={"unavailable_calls": 2}).raise_for_status()
    for _ in range(2):
        r = post(client, body())
        assert r.status_code == 503 and r.json()["error"] == "unavailable" and "retry-after" in r.headers
    assert post(client, body()).json()["action"] == "created"
    assert client.get("/_sim/calls").json()["by_outcome"] == {"unavailable": 2, "created": 1}


def test_unavailable_for_seconds(client: httpx.Client) -> None:
    client.post("/_sim/faults", json={"unavailable_seconds": 0.5})
    assert post(client, body()).status_code == 503
    assert client.get("/_sim/faults").json()["unavailable_seconds"] > 0
    deadline = time.monotonic() + 5
    while post(client, body()).status_code == 503:
        assert time.monotonic() < deadline
    assert client.get("/api/v1/invoices").json()["total"] == 1


def test_server_errors_and_slow_answers(client: httpx.Client) -> None:
    client.post("/_sim/faults", json={"server_errors": 1, "slow_ms": 200})
    t0 = time.monotonic()
    r = post(client, body())
    assert r.status_code == 500 and time.monotonic() - t0 >= 0.2
    assert post(client, body()).status_code == 200
    client.delete("/_sim/faults")
    assert client.get("/_sim/faults").json() == {
        "unavailable_calls": 0,
        "unavailable_seconds": 0,
        "slow_ms": 0,
        "server_errors": 0,
        "rate_limited_calls": 0,
        "retry_after_s": 1,
    }
    assert client.post("/_sim/faults", json={"unavailable_calls": -1}).status_code == 422
    assert client.post("/_sim/faults", json={"what": 1}).status_code == 422


def test_rate_limited_calls_answer_429_with_retry_after(client: httpx.Client) -> None:
    client.post("/_sim/faults", json={"rate_limited_calls": 2, "retry_after_s": 0}).raise_for_status()
    for _ in range(2):
        r = post(client, body())
        assert r.status_code == 429 and r.headers["retry-after"] == "0" and r.json()["error"] == "rate_limited"
    assert post(client, body()).json()["action"] == "created"
    assert client.get("/_sim/calls").json()["by_outcome"] == {"rate_limited": 2, "created": 1}


def test_faults_come_before_auth(client: httpx.Client) -> None:
    client.post("/_sim/faults", json={"unavailable_calls": 1})
    assert client.post(IMPORT_PATH, json=body()).status_code == 503
    assert client.post(IMPORT_PATH, json=body()).status_code == 401
