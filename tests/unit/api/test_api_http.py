"""The HTTP layer on a fake repository: the auth matrix, input validation (422), shapes, pagination."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from datetime import UTC, date, datetime, timedelta
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi.testclient import TestClient

from services.api.deps import get_repository
from services.api.domain import encode_cursor
from services.api.main import create_app
from services.api.queries import Page
from shared.auth import mint
from shared.settings import Settings

SECRET = "unit-test-secret-0123456789abcdef-0123456789abcdef-0123456789"
BILLING = [
    "/api/v1/billing/balance",
    "/api/v1/billing/balance/history",
    "/api/v1/billing/cost-lines?period=2026-04-01",
    "/api/v1/billing/invoices",
    "/api/v1/billing/invoices/u1",
    "/api/v1/billing/unmatched",
]
T0 = datetime(2026, 5, 1, 7, 7, tzinfo=UTC)


def line_row(i: int, uuid: str = "u1") -> dict[str, Any]:
    return {
        "invoice_uuid": uuid,
        "revision": 1,
        "line_index": i,
        "period": date(2026, 4, 1),
        "product": "Droplets",
        "group_description": "",
        "description": f"web-{i} (s-1vcpu-1gb)",
        "hours": 720,
        "start_at": T0,
        "end_at": T0,
        "amount_minor": 600,
        "currency": "USD",
        "project_name": "Default",
        "category": "iaas",
        "is_tax": False,
        "kind": "droplet",
        "name": f"web-{i}",
        "resource_id": str(i),
        "resource_key": f"a:droplet:{i}",
        "rule": "kind_name",
        "unmatched_reason": None,
    }


def invoice_row(uuid: str = "u1") -> dict[str, Any]:
    return {
        "invoice_uuid": uuid,
        "account": "default",
        "invoice_id": "42",
        "period": date(2026, 4, 1),
        "sort_period": date(2026, 4, 1),
        "invoice_date": date(2026, 5, 1),
        "description": "Invoice for April 2026",
        "currency": "USD",
        "amount_minor": 8692,
        "status_rank": 4,
        "status_revision": 1,
        "revision": 1,
        "ingested_revision": 1,
        "lines_count": 33,
        "matched_count": 6,
        "amount_net_minor": 7902,
        "amount_tax_minor": 790,
        "amount_gross_minor": 8692,
        "reconciliation_status": "unknown",
        "reconciliation_expected_minor": None,
        "reconciliation_difference_minor": None,
        "pushed_revision": 1,
        "pushed_to_finance_at": T0,
        "finance_invoice_id": "fin-1",
        "finance_action": "created",
    }


def held_row() -> dict[str, Any]:
    """The truncated April CSV: 8 of 33 lines, held."""
    checks = [
        {
            "source": "billing_history",
            "expected_minor": 8692,
            "actual_minor": 2733,
            "difference_minor": -5959,
            "ok": False,
        },
        {
            "source": "invoice_list",
            "expected_minor": 8692,
            "actual_minor": 2733,
            "difference_minor": -5959,
            "ok": False,
        },
    ]
    return invoice_row("held") | {
        "status_rank": 3,
        "held": True,
        "hold_reason": "billing history says 8692, the lines give 2733 (variance -5959)",
        "lines_count": 8,
        "amount_net_minor": 2733,
        "amount_tax_minor": 0,
        "amount_gross_minor": 2733,
        "reconciliation_status": "mismatch",
        "reconciliation_expected_minor": 8692,
        "reconciliation_actual_minor": 2733,
        "reconciliation_difference_minor": -5959,
        "reconciliation_tolerance_minor": 0,
        "reconciliation_reason": "billing history says 8692, the lines give 2733 (variance -5959)",
        "reconciliation_checks": checks,
        "pushed_revision": None,
        "pushed_to_finance_at": None,
        "finance_invoice_id": None,
        "finance_action": None,
    }


def refetch_action() -> dict[str, Any]:
    return {"action": "refetch", "revision": None, "actor": "ops", "reason": "DigitalOcean fixed it", "at": T0}


class FakeRepo:
    """Answers like ReadModelRepository and records what it was asked."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple]] = []

    def latest_balance(self, account: str | None) -> dict[str, Any] | None:
        self.calls.append(("latest_balance", (account,)))
        if account == "nobody":
            return None
        return {
            "account": "default",
            "generated_at": T0,
            "currency": "USD",
            "month_to_date_balance_minor": 2344,
            "account_balance_minor": 1223,
            "month_to_date_usage_minor": 1121,
        }

    def balance_history(self, start, end, account, limit) -> list[dict[str, Any]]:
        self.calls.append(("balance_history", (start, end, account, limit)))
        return [self.latest_balance(None)]

    def cost_lines(self, period, kind, after, limit) -> Page:
        self.calls.append(("cost_lines", (period, kind, after, limit)))
        start = after[1] + 1 if after else 0
        rows = [line_row(i) for i in range(start, min(start + limit, 5))]
        return Page(rows, start + limit < 5)

    def invoices(self, status, period, after, limit) -> Page:
        self.calls.append(("invoices", (status, period, after, limit)))
        return Page([invoice_row()], True)

    def invoice(self, uuid: str):
        self.calls.append(("invoice", (uuid,)))
        if uuid == "held":
            return held_row(), [line_row(0, uuid)], [refetch_action()]
        return (invoice_row(uuid), [line_row(0, uuid)], []) if uuid == "u1" else None

    def history(self, entry_type, start, end, account, after, limit) -> Page:
        self.calls.append(("history", (entry_type, start, end, account, after, limit)))
        row = {
            "event_id": "e1",
            "account": "default",
            "entry_type": entry_type or "Payment",
            "description": "Payment (MC 2026)",
            "amount_minor": -8692,
            "currency": "USD",
            "date": T0,
            "invoice_id": None,
            "invoice_uuid": None,
        }
        return Page([row], True)

    def dead_letters(self, topic, since, invoice, after, limit) -> Page:
        self.calls.append(("dead_letters", (topic, since, invoice, after, limit)))
        return Page([], False)

    def unmatched(self, period) -> list[dict[str, Any]]:
        self.calls.append(("unmatched", (period,)))
        return [
            {"reason": "no_such_resource", "kind": "droplet", "currency": "USD", "lines_count": 2, "amount_minor": 500},
            {"reason": "tax_line", "kind": None, "currency": "USD", "lines_count": 1, "amount_minor": 790},
        ]


def make_client(**overrides: Any) -> tuple[TestClient, FakeRepo]:
    settings = Settings(_env_file=None, api_jwt_secret=SECRET, kafka_bootstrap_servers="127.0.0.1:1", **overrides)
    app = create_app(settings)
    repo = FakeRepo()
    app.dependency_overrides[get_repository] = lambda: repo
    return TestClient(app), repo


@pytest.fixture(scope="module")
def client_repo() -> tuple[TestClient, FakeRepo]:
    return make_client()


@pytest.fixture
def client(client_repo: tuple[TestClient, FakeRepo]) -> TestClient:
    return client_repo[0]


def token(roles: list[str] | None = None, *, secret: str = SECRET, alg: str = "HS256", ttl: int = 300, **kw) -> str:
    return mint(
        secret, algorithm=alg, ttl_s=ttl, claims={"roles": roles if roles is not None else ["platform_admin"]}, **kw
    )


def auth(tok: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {tok}"}


def b64(obj: Any) -> str:
    raw = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def unsigned(alg: str = "none") -> str:
    exp = int((datetime.now(UTC) + timedelta(minutes=5)).timestamp())
    return f"{b64({'alg': alg, 'typ': 'JWT'})}.{b64({'roles': ['platform_admin'], 'exp': exp})}."


# ------------------------------------------------------------------------------------------------ auth matrix
@pytest.mark.parametrize("path", BILLING)
@pytest.mark.parametrize(
    ("case", "headers", "expected"),
    [
        ("no token", {}, 401),
        ("not bearer", {"Authorization": "Basic dXNlcjpwdw=="}, 401),
        ("malformed", {"Authorization": "Bearer not.a.jwt"}, 401),
        ("garbage", {"Authorization": "Bearer abc"}, 401),
        ("bad signature", "bad_signature", 401),
        ("expired", "expired", 401),
        ("alg none", "alg_none", 401),
        ("no exp", "no_exp", 401),
        ("wrong role", "wrong_role", 403),
        ("no roles", "no_roles", 403),
        ("right role", "ok", 200),
    ],
)
def test_auth_matrix(client: TestClient, path: str, case: str, headers: Any, expected: int) -> None:
    tokens = {
        "bad_signature": token(secret="another-secret-0123456789abcdef-0123456789abcdef-0123456789"),
        "expired": token(now=datetime.now(UTC) - timedelta(hours=2), ttl=60),
        "alg_none": unsigned(),
        "no_exp": jwt.encode({"roles": ["platform_admin"]}, SECRET, algorithm="HS256"),
        "wrong_role": token(["viewer"]),
        "no_roles": token([]),
        "ok": token(),
    }
    if isinstance(headers, str):
        headers = auth(tokens[headers])
    r = client.get(path, headers=headers)
    assert r.status_code == expected, (case, r.text)
    if expected == 401:
        assert r.headers["www-authenticate"].startswith("Bearer")
    if case == "expired":
        assert "expired" in r.json()["detail"]


def test_role_may_be_a_string_claim(client: TestClient) -> None:
    tok = mint(SECRET, algorithm="HS256", ttl_s=60, claims={"role": "platform_admin"})
    assert client.get("/api/v1/billing/balance", headers=auth(tok)).status_code == 200


def test_other_hmac_algorithm_is_refused_when_hs256_is_pinned(client: TestClient) -> None:
    tok = token(alg="HS512")
    assert client.get("/api/v1/billing/balance", headers=auth(tok)).status_code == 401


def test_no_secret_configured_answers_401_never_500() -> None:
    app = create_app(Settings(_env_file=None))
    app.dependency_overrides[get_repository] = FakeRepo
    r = TestClient(app).get("/api/v1/billing/balance", headers=auth(token()))
    assert r.status_code == 401


def test_token_never_echoed_in_errors(client: TestClient) -> None:
    tok = token(secret="another-secret-0123456789abcdef-0123456789abcdef-0123456789")
    r = client.get("/api/v1/billing/balance", headers=auth(tok))
    assert tok not in r.text and SECRET not in r.text


# ------------------------------------------------------------------------------------------------- RS256
@pytest.fixture(scope="module")
def rsa_keys() -> tuple[rsa.RSAPrivateKey, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return key, pem.decode()


def hs256_with_key(key_text: str) -> str:
    """The classic confusion attack: an HS256 token whose HMAC secret is the server's public key."""
    exp = int((datetime.now(UTC) + timedelta(minutes=5)).timestamp())
    signing_input = f"{b64({'alg': 'HS256', 'typ': 'JWT'})}.{b64({'roles': ['platform_admin'], 'exp': exp})}"
    sig = hmac.new(key_text.encode(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(sig)}"


def test_rs256_with_pem_public_key(rsa_keys: tuple[rsa.RSAPrivateKey, str]) -> None:
    key, pem = rsa_keys
    c, _ = make_client(api_jwt_algorithm="RS256", api_jwt_public_key=pem)
    good = jwt.encode(
        {"roles": ["platform_admin"], "exp": datetime.now(UTC) + timedelta(minutes=5)}, key, algorithm="RS256"
    )
    assert c.get("/api/v1/billing/balance", headers=auth(good)).status_code == 200
    # HS256 signed with the public key, the shared HS secret, alg none: all refused.
    assert c.get("/api/v1/billing/balance", headers=auth(hs256_with_key(pem))).status_code == 401
    assert c.get("/api/v1/billing/balance", headers=auth(token())).status_code == 401
    assert c.get("/api/v1/billing/balance", headers=auth(unsigned())).status_code == 401
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forged = jwt.encode(
        {"roles": ["platform_admin"], "exp": datetime.now(UTC) + timedelta(minutes=5)}, other, algorithm="RS256"
    )
    assert c.get("/api/v1/billing/balance", headers=auth(forged)).status_code == 401
    viewer = jwt.encode({"roles": ["viewer"], "exp": datetime.now(UTC) + timedelta(minutes=5)}, key, algorithm="RS256")
    assert c.get("/api/v1/billing/balance", headers=auth(viewer)).status_code == 403


def test_rs256_with_jwks(rsa_keys: tuple[rsa.RSAPrivateKey, str], monkeypatch: pytest.MonkeyPatch) -> None:
    key, _pem = rsa_keys
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key())) | {"kid": "k1", "use": "sig"}
    monkeypatch.setattr(jwt.PyJWKClient, "fetch_data", lambda self: {"keys": [jwk]})
    c, _ = make_client(api_jwt_algorithm="RS256", api_jwt_jwks_url="http://127.0.0.1:1/jwks.json")
    exp = datetime.now(UTC) + timedelta(minutes=5)
    good = jwt.encode({"roles": ["platform_admin"], "exp": exp}, key, algorithm="RS256", headers={"kid": "k1"})
    assert c.get("/api/v1/billing/balance", headers=auth(good)).status_code == 200
    unknown_kid = jwt.encode({"roles": ["platform_admin"], "exp": exp}, key, algorithm="RS256", headers={"kid": "k2"})
    assert c.get("/api/v1/billing/balance", headers=auth(unknown_kid)).status_code == 401
    assert c.get("/api/v1/billing/balance", headers=auth(unsigned())).status_code == 401


def test_jwks_unreachable_is_503_not_401() -> None:
    c, _ = make_client(api_jwt_algorithm="RS256", api_jwt_jwks_url="http://127.0.0.1:1/jwks.json")
    exp = datetime.now(UTC) + timedelta(minutes=5)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    tok = jwt.encode({"roles": ["platform_admin"], "exp": exp}, key, algorithm="RS256", headers={"kid": "k1"})
    assert c.get("/api/v1/billing/balance", headers=auth(tok)).status_code == 503


# -------------------------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    "query",
    [
        "",  # period is required
        "?period=2026-04",
        "?period=April",
        "?period=2026-02-30",
        "?period=2026-04-01&limit=0",
        "?period=2026-04-01&limit=1001",
        "?period=2026-04-01&limit=ten",
        "?period=2026-04-01&kind=DROP;--",
        "?period=2026-04-01&cursor=%%%",
        "?period=0",  # pydantic alone reads numbers as seconds since 1970
        "?period=20260401",
        "?period=2026-04-01T00:00:00",
    ],
)
def test_cost_lines_malformed_input_is_422(client: TestClient, query: str) -> None:
    r = client.get("/api/v1/billing/cost-lines" + query, headers=auth(token()))
    assert r.status_code == 422, r.text


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/billing/invoices?status=paid",
        "/api/v1/billing/invoices?period=yesterday",
        "/api/v1/billing/invoices?cursor=a+b",
        "/api/v1/billing/balance/history?from=soon",
        "/api/v1/billing/balance/history?to=0.5",
        "/api/v1/billing/balance/history?from=1714521600",
        "/api/v1/billing/unmatched?period=2026-4-1",
        "/api/v1/billing/unmatched?period=0",
    ],
)
def test_other_malformed_input_is_422(client: TestClient, path: str) -> None:
    assert client.get(path, headers=auth(token())).status_code == 422


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/billing/cost-lines?period=2026-04-01&cursor=" + encode_cursor(["u1"]),
        "/api/v1/billing/cost-lines?period=2026-04-01&cursor=abc",
        "/api/v1/billing/invoices?cursor=" + encode_cursor(["u1", 3]),
    ],
)
def test_a_cursor_of_the_right_alphabet_not_issued_here_is_400(client: TestClient, path: str) -> None:
    """The schema allows it (so not a 422), but it names no position in a listing."""
    r = client.get(path, headers=auth(token()))
    assert r.status_code == 400 and r.json()["detail"].startswith("invalid cursor")


# ---------------------------------------------------------------------------------------------- payloads
def test_balance_has_minor_units_and_decimal_strings(client: TestClient) -> None:
    body = client.get("/api/v1/billing/balance", headers=auth(token())).json()
    assert body["month_to_date_balance_minor"] == 2344 and body["month_to_date_balance"] == "23.44"
    assert body["account_balance"] == "12.23" and body["month_to_date_usage"] == "11.21"
    assert client.get("/api/v1/billing/balance?account=nobody", headers=auth(token())).status_code == 404


def test_balance_history_passes_the_range(client_repo: tuple[TestClient, FakeRepo]) -> None:
    client, repo = client_repo
    r = client.get("/api/v1/billing/balance/history?from=2026-04-01&to=2026-05-01T00:00:00Z", headers=auth(token()))
    assert r.status_code == 200 and len(r.json()["snapshots"]) == 1
    start, end, _account, limit = next(args for name, args in reversed(repo.calls) if name == "balance_history")
    assert start.date() == date(2026, 4, 1) and end.year == 2026 and limit == 1000


def test_cost_lines_cursor_pagination(client_repo: tuple[TestClient, FakeRepo]) -> None:
    client, repo = client_repo
    seen: list[int] = []
    url = "/api/v1/billing/cost-lines?period=2026-04-01&kind=droplet&limit=2"
    cursor = None
    for _ in range(5):
        r = client.get(url + (f"&cursor={cursor}" if cursor else ""), headers=auth(token()))
        assert r.status_code == 200
        body = r.json()
        seen += [x["line_index"] for x in body["items"]]
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert seen == [0, 1, 2, 3, 4]
    first = body["items"][0]
    for field in (
        "invoice_uuid",
        "line_index",
        "product",
        "description",
        "kind",
        "name",
        "amount_minor",
        "currency",
        "is_tax",
        "resource_id",
        "unmatched_reason",
        "project_name",
        "start",
        "end",
    ):
        assert field in first
    assert first["amount"] == "6.00"
    assert repo.calls[-1][1][:2] == (date(2026, 4, 1), "droplet")


def test_cost_lines_default_limit_is_100(client_repo: tuple[TestClient, FakeRepo]) -> None:
    client, repo = client_repo
    client.get("/api/v1/billing/cost-lines?period=2026-04-01", headers=auth(token()))
    assert repo.calls[-1] == ("cost_lines", (date(2026, 4, 1), None, None, 100))


def test_invoices_and_detail(client_repo: tuple[TestClient, FakeRepo]) -> None:
    client, repo = client_repo
    body = client.get("/api/v1/billing/invoices?status=pushed&period=2026-04-01", headers=auth(token())).json()
    inv = body["items"][0]
    assert inv["status"] == "pushed" and inv["reconciled"] is True and inv["amount_gross"] == "86.92"
    assert body["next_cursor"]
    client.get(f"/api/v1/billing/invoices?cursor={body['next_cursor']}", headers=auth(token()))
    assert repo.calls[-1][1][2] == (date(2026, 4, 1), "u1")
    detail = client.get("/api/v1/billing/invoices/u1", headers=auth(token())).json()
    assert detail["finance_invoice_id"] == "fin-1" and len(detail["lines"]) == 1
    assert client.get("/api/v1/billing/invoices/nope", headers=auth(token())).status_code == 404


def test_a_held_invoice_shows_expected_actual_and_variance(client_repo: tuple[TestClient, FakeRepo]) -> None:
    client, repo = client_repo
    detail = client.get("/api/v1/billing/invoices/held", headers=auth(token())).json()
    assert detail["status"] == "held" and detail["finance_invoice_id"] is None
    assert "variance -5959" in detail["hold_reason"]
    rec = detail["reconciliation"]
    assert (rec["status"], rec["expected_minor"], rec["actual_minor"], rec["difference_minor"]) == (
        "mismatch",
        8692,
        2733,
        -5959,
    )
    assert [c["source"] for c in rec["checks"]] == ["billing_history", "invoice_list"]
    assert detail["actions"] == [
        {
            "action": "refetch",
            "revision": None,
            "actor": "ops",
            "reason": "DigitalOcean fixed it",
            "at": T0.isoformat().replace("+00:00", "Z"),
        }
    ]
    client.get("/api/v1/billing/invoices?status=held", headers=auth(token()))
    assert repo.calls[-1] == ("invoices", ("held", None, None, 100))


def test_billing_history_by_type(client_repo: tuple[TestClient, FakeRepo]) -> None:
    client, repo = client_repo
    body = client.get("/api/v1/billing/history?type=payment&from=2026-05-01", headers=auth(token())).json()
    (item,) = body["items"]
    assert (item["entry_type"], item["amount_minor"], item["amount"]) == ("Payment", -8692, "-86.92")
    assert repo.calls[-1][1][:2] == ("Payment", datetime(2026, 5, 1, tzinfo=UTC))  # DigitalOcean's spelling
    client.get(f"/api/v1/billing/history?cursor={body['next_cursor']}", headers=auth(token()))
    assert repo.calls[-1][1][4] == (T0, "e1")
    assert (
        client.get("/api/v1/billing/history?type=Gift", headers=auth(token())).status_code == 422
    )  # not in the schema
    assert client.get("/api/v1/billing/history?type=PAYMENT", headers=auth(token())).status_code == 200
    # A cursor of the right alphabet this API never issued: 400, as on every listing.
    assert client.get("/api/v1/billing/history?cursor=WyJ4IiwieSJd", headers=auth(token())).status_code == 400
    assert client.get("/api/v1/billing/history").status_code == 401


def test_unmatched_totals(client: TestClient) -> None:
    body = client.get("/api/v1/billing/unmatched?period=2026-04-01", headers=auth(token())).json()
    assert body["total_minor"] == {"USD": 1290}
    assert {g["reason"] for g in body["groups"]} == {"no_such_resource", "tax_line"}


# ------------------------------------------------------------------------------------------- operations
def test_health_docs_metrics_need_no_token(client: TestClient) -> None:
    assert client.get("/healthz").json()["status"] == "ok"
    assert client.get("/docs").status_code == 200
    spec = client.get("/openapi.json").json()
    assert "examples" in spec["components"]["schemas"]["BalanceOut"]
    assert "examples" in spec["components"]["schemas"]["CostLineOut"]
    client.get("/api/v1/billing/balance", headers=auth(token()))
    metrics = client.get("/metrics")
    assert metrics.status_code == 200 and "cloudbill_api_requests_total" in metrics.text


def test_readyz_is_503_without_database_or_broker(client: TestClient) -> None:
    r = client.get("/readyz")
    assert r.status_code == 503
    assert r.json()["checks"]["database"].startswith("unavailable")
    assert r.json()["checks"]["broker"].startswith("unavailable")


# ------------------------------------------------------------------------------------------- token policy
def test_the_api_refuses_to_start_with_a_short_hmac_secret() -> None:
    from shared.settings import ConfigError

    with pytest.raises(ConfigError, match=r"API_JWT_SECRET is 31 bytes; HS256 needs at least 32"):
        create_app(Settings(_env_file=None, api_jwt_secret="s" * 31))
    create_app(Settings(_env_file=None, api_jwt_secret="s" * 32))  # the minimum is accepted


def test_tokens_living_longer_than_the_maximum_are_refused() -> None:
    c, _ = make_client(api_jwt_max_ttl_s=3600)
    assert c.get("/api/v1/billing/balance", headers=auth(token(ttl=3600))).status_code == 200
    long_lived = token(ttl=3600 + 120)
    r = c.get("/api/v1/billing/balance", headers=auth(long_lived))
    assert r.status_code == 401 and "lifetime" in r.json()["detail"]
    # Without iat, what is left of its life counts: a year-9999 expiry is refused.
    forever = jwt.encode({"roles": ["platform_admin"], "exp": 253402300799}, SECRET, algorithm="HS256")
    assert c.get("/api/v1/billing/balance", headers=auth(forever)).status_code == 401
    # The default maximum is 12 h.
    assert Settings(_env_file=None).api_jwt_max_ttl_s == 12 * 3600


def test_audience_and_issuer_are_enforced_only_when_set(client: TestClient) -> None:
    tok = token(audience="cloudbill-api", issuer="https://id.example")
    assert client.get("/api/v1/billing/balance", headers=auth(tok)).status_code == 200  # not configured: ignored
    c, _ = make_client(api_jwt_audience="cloudbill-api", api_jwt_issuer="https://id.example")
    assert c.get("/api/v1/billing/balance", headers=auth(tok)).status_code == 200
    for bad, why in (
        (token(), "lacks"),
        (token(audience="other", issuer="https://id.example"), "audience"),
        (token(audience="cloudbill-api", issuer="https://evil.example"), "issuer"),
    ):
        r = c.get("/api/v1/billing/balance", headers=auth(bad))
        assert r.status_code == 401 and why in r.json()["detail"], r.text


def test_unknown_key_ids_refetch_the_jwks_at_most_once_per_interval(rsa_keys: tuple[rsa.RSAPrivateKey, str]) -> None:
    from services.api.security import JwksKeys
    from shared.auth import TokenError

    key, _pem = rsa_keys
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key())) | {"kid": "k1", "use": "sig"}
    now = [1000.0]
    keys = JwksKeys("http://127.0.0.1:1/jwks.json", min_refresh_s=30, clock=lambda: now[0])
    served = [{"keys": [jwk]}]
    keys._client.fetch_data = lambda: served[0]  # type: ignore[method-assign]
    assert keys.key("k1") is not None and keys.fetches == 1
    for _ in range(50):  # a flood of made-up key ids
        with pytest.raises(TokenError):
            keys.key("made-up")
    assert keys.fetches == 1  # the set is younger than the interval: no request reached the provider
    now[0] += 31
    for _ in range(50):
        with pytest.raises(TokenError):
            keys.key("made-up")
    assert keys.fetches == 2  # one refetch per interval, however many misses
    # A rotated-in key is found by the next refetch allowed.
    served[0] = {"keys": [jwk, jwk | {"kid": "k2"}]}
    now[0] += 31
    assert keys.key("k2") is not None and keys.fetches == 3
    assert keys.key("k1") is not None and keys.fetches == 3


# ------------------------------------------------------------------------------------ bounded ops surface
def test_unknown_http_methods_fold_into_one_metric_label(client: TestClient) -> None:
    from prometheus_client import REGISTRY

    for method in ("FOO", "BAR", "X" * 40):
        client.request(method, "/healthz")
    labels = {
        s.labels["method"]
        for m in REGISTRY.collect()
        if m.name == "cloudbill_api_requests"
        for s in m.samples
        if s.name == "cloudbill_api_requests_total"
    }
    assert "OTHER" in labels and not labels & {"FOO", "BAR", "X" * 40}
    assert labels <= {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "OTHER"}


def test_readyz_checks_at_most_once_a_second() -> None:
    c, _ = make_client()
    readiness = c.app.state.readiness  # type: ignore[attr-defined]
    for _ in range(20):
        assert c.get("/readyz").status_code == 503
    assert readiness.rounds == 1
    readiness._at -= readiness.ttl_s  # a second later
    c.get("/readyz")
    assert readiness.rounds == 2


def test_docs_and_metrics_can_be_turned_off() -> None:
    c, _ = make_client(api_docs="off", api_metrics="off")
    for path in ("/docs", "/redoc", "/openapi.json", "/metrics"):
        assert c.get(path).status_code == 404, path
    assert c.get("/api/v1/billing/balance", headers=auth(token())).status_code == 200


def test_docs_and_metrics_can_move_to_the_operations_port() -> None:
    from services.api.main import create_ops_app

    settings = Settings(
        _env_file=None, api_jwt_secret=SECRET, api_docs="ops", api_metrics="ops", api_ops_port=9464, api_port=8000
    )
    api = create_app(settings)
    main, ops = TestClient(api), TestClient(create_ops_app(settings, api))  # type: ignore[arg-type]
    for path in ("/docs", "/openapi.json", "/metrics"):
        assert main.get(path).status_code == 404, path
        assert ops.get(path).status_code == 200, path
    assert "/api/v1/billing/cost-lines" in ops.get("/openapi.json").json()["paths"]
    assert main.get("/healthz").status_code == 200  # probes stay with the API


@pytest.mark.parametrize(
    ("overrides", "message"),
    [({"api_docs": "ops"}, "API_OPS_PORT is not set"), ({"api_ops_port": 8000}, "must differ")],
)
def test_operations_port_misconfigurations_are_refused(overrides: dict[str, Any], message: str) -> None:
    from shared.settings import ConfigError

    with pytest.raises(ConfigError, match=message):
        create_app(Settings(_env_file=None, api_jwt_secret=SECRET, **overrides))


def test_the_focus_file_name_survives_any_account_name() -> None:
    """Headers are latin-1: an account named `Ā` once turned the export into a 500 (found by schemathesis)."""
    from services.api.finops_routes import _attachment

    assert _attachment('focus-2026-04-Ā"x.csv') == (
        "attachment; filename=\"focus-2026-04-__x.csv\"; filename*=UTF-8''focus-2026-04-%C4%80%22x.csv"
    )
    _attachment("focus-2026-04-Ā.csv").encode("latin-1")  # what starlette does with a header
