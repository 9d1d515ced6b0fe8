"""Contract tests of the DigitalOcean simulator: shapes, pagination, CSV bytes, auth, rate-limit headers, faults."""

from __future__ import annotations

import time
from decimal import Decimal
from typing import Any

import httpx
import pytest

from sims.do.app import create_app
from sims.scenario import APRIL_2026_INVOICE_UUID, Scenario
from sims.server import run_in_thread

from .conftest import TOKEN

BALANCE = "/v2/customers/my/balance"
HISTORY = "/v2/customers/my/billing_history"
INVOICES = "/v2/customers/my/invoices"
APRIL_CSV = f"{INVOICES}/{APRIL_2026_INVOICE_UUID}/csv"


def walk(client: httpx.Client, path: str, key: str, per_page: int) -> tuple[list[dict[str, Any]], list[dict]]:
    """Follow links.pages.next to the end as a client would; returns items and every page body."""
    items: list[dict[str, Any]] = []
    bodies = []
    url: str | None = f"{path}?per_page={per_page}"
    while url:
        r = client.get(url)
        assert r.status_code == 200, r.text
        body = r.json()
        bodies.append(body)
        items += body[key]
        url = body["links"]["pages"].get("next")
        assert len(bodies) < 10_000
    return items, bodies


def all_strings(obj: dict[str, Any], fields: list[str]) -> None:
    for f in fields:
        if f in obj:
            assert isinstance(obj[f], str), (f, obj)


# ------------------------------------------------------------------------------------------------ shapes
def test_balance_is_strings_and_series_ends_on_latest(do_server, april: Scenario) -> None:
    with httpx.Client(base_url=do_server.url, headers={"Authorization": f"Bearer {TOKEN}"}) as c:
        seen = [c.get(BALANCE).json() for _ in range(len(april.balances) + 2)]
    for b in seen:
        assert set(b) == {"month_to_date_balance", "account_balance", "month_to_date_usage", "generated_at"}
        all_strings(b, list(b))
        assert Decimal(b["month_to_date_balance"]) == Decimal(b["account_balance"]) + Decimal(b["month_to_date_usage"])
    # Whatever position the shared server's series is at, it never goes backwards and ends on the latest.
    times = [b["generated_at"] for b in seen]
    assert times == sorted(times)
    assert seen[-1] == april.balances[-1] == seen[-2]


def test_billing_history_entry_shapes(do_client: httpx.Client) -> None:
    body = do_client.get(HISTORY, params={"per_page": 200}).json()
    assert set(body) == {"billing_history", "links", "meta"}
    for e in body["billing_history"]:
        all_strings(e, ["description", "amount", "invoice_id", "invoice_uuid", "date", "type"])
        if e["type"] == "Payment":
            assert "invoice_uuid" not in e and "invoice_id" not in e
            assert e["amount"].startswith("-")
        if e["type"] == "Invoice":
            assert e["invoice_uuid"] and e["invoice_id"]


def test_invoices_list_has_preview_and_string_money(do_client: httpx.Client) -> None:
    body = do_client.get(INVOICES).json()
    assert len(body["invoices"]) == 20 and body["meta"]["total"] == 137
    for inv in body["invoices"]:
        assert set(inv) >= {"invoice_uuid", "invoice_id", "amount", "invoice_period"}
        all_strings(inv, list(inv))
    prev = body["invoice_preview"]
    all_strings(prev, ["invoice_uuid", "amount", "invoice_period", "updated_at"])
    assert prev["invoice_period"] == "2026-05"


def test_invoice_items_and_summary_shapes(do_client: httpx.Client) -> None:
    items, _ = walk(do_client, f"{INVOICES}/{APRIL_2026_INVOICE_UUID}", "invoice_items", per_page=10)
    assert len(items) == 33
    for it in items:
        all_strings(it, list(it))
    assert sum(Decimal(it["amount"]) for it in items) == Decimal("86.92")
    s = do_client.get(f"{INVOICES}/{APRIL_2026_INVOICE_UUID}/summary").json()
    assert s["invoice_uuid"] == APRIL_2026_INVOICE_UUID and s["billing_period"] == "2026-04"
    assert s["amount"] == "86.92" and s["taxes"]["amount"] == "7.90"
    assert s["product_charges"]["amount"] == "79.02"
    for item in s["product_charges"]["items"]:
        all_strings(item, ["name", "amount", "count"])
    preview = do_client.get(f"{INVOICES}/preview").json()
    assert preview["invoice_items"] == [] and preview["meta"]["total"] == 0


def test_resource_listings(do_client: httpx.Client, april: Scenario) -> None:
    paths = {
        "droplets": "/v2/droplets",
        "volumes": "/v2/volumes",
        "load_balancers": "/v2/load_balancers",
        "kubernetes_clusters": "/v2/kubernetes/clusters",
        "apps": "/v2/apps",
        "snapshots": "/v2/snapshots",
        "floating_ips": "/v2/floating_ips",
        "reserved_ips": "/v2/reserved_ips",
    }
    for key, path in paths.items():
        items, bodies = walk(do_client, path, key, per_page=1)
        assert items == april.resources[key], key
        assert bodies[-1]["meta"]["total"] == len(april.resources[key])
    # Not paginated in DigitalOcean's API: no links/meta.
    assert do_client.get("/v2/databases").json() == {"databases": april.resources["databases"]}
    assert do_client.get("/v2/registries").json() == {"registries": []}
    assert do_client.get("/v2/registry").status_code == 404
    assert isinstance(do_client.get("/v2/droplets").json()["droplets"][0]["id"], int)


def test_unknown_invoice_and_path_are_404_in_do_shape(do_client: httpx.Client) -> None:
    for path in (f"{INVOICES}/nope/csv", f"{INVOICES}/nope", f"{INVOICES}/nope/summary", "/v2/nothing"):
        r = do_client.get(path)
        assert r.status_code == 404
        assert r.json()["id"] == "not_found" and r.json()["message"]


# -------------------------------------------------------------------------------------------- pagination
@pytest.mark.parametrize("per_page", [1, 7, 20, 137, 200, 500])
def test_history_pagination_walked_to_the_end(do_client: httpx.Client, april: Scenario, per_page: int) -> None:
    items, bodies = walk(do_client, HISTORY, "billing_history", per_page)
    assert items == april.billing_history
    effective = min(per_page, 200)
    assert len(bodies) == -(-len(april.billing_history) // effective)
    for i, body in enumerate(bodies, start=1):
        pages = body["links"]["pages"]
        assert body["meta"]["total"] == len(april.billing_history)
        assert ("prev" in pages) == ("first" in pages) == (i > 1)
        assert ("next" in pages) == ("last" in pages) == (i < len(bodies))
        for url in pages.values():
            assert url.startswith(str(do_client.base_url).rstrip("/") + HISTORY + "?page=")
            assert f"per_page={effective}" in url


def test_single_page_has_empty_pages_and_defaults(do_client: httpx.Client) -> None:
    body = do_client.get("/v2/droplets").json()
    assert body["links"] == {"pages": {}} and body["meta"]["total"] == len(body["droplets"])
    body = do_client.get(HISTORY).json()
    assert len(body["billing_history"]) == 20  # default per_page
    assert body["links"]["pages"]["next"].endswith("page=2&per_page=20")
    last = body["links"]["pages"]["last"]
    assert last.endswith("page=14&per_page=20")  # 278 entries


def test_page_past_the_end_is_empty_with_first_and_prev(do_client: httpx.Client) -> None:
    body = do_client.get(INVOICES, params={"page": 99, "per_page": 50}).json()
    assert body["invoices"] == [] and body["meta"]["total"] == 137
    assert set(body["links"]["pages"]) == {"first", "prev"}
    assert body["links"]["pages"]["prev"].endswith("page=3&per_page=50")


@pytest.mark.parametrize("query", ["page=0", "per_page=-1", "page=abc"])
def test_bad_pagination_is_400(do_client: httpx.Client, query: str) -> None:
    r = do_client.get(f"{HISTORY}?{query}")
    assert r.status_code == 400 and r.json()["id"] == "bad_request"


# ---------------------------------------------------------------------------------------------------- CSV
def test_csv_served_byte_for_byte(do_client: httpx.Client, april: Scenario) -> None:
    for inv in [*april.invoices[:: max(1, len(april.invoices) // 12)], april.invoice(APRIL_2026_INVOICE_UUID)]:
        assert inv is not None
        r = do_client.get(f"{INVOICES}/{inv['invoice_uuid']}/csv")
        assert r.status_code == 200
        assert r.content == (april.root / "invoices" / f"{inv['invoice_uuid']}.csv").read_bytes()
        assert r.headers["content-type"] == "text/csv"


def test_csv_content_disposition(do_client: httpx.Client) -> None:
    r = do_client.get(APRIL_CSV)
    cd = r.headers["content-disposition"]
    assert cd.startswith('attachment; filename="DigitalOcean Invoice 2026 Apr (9217394-') and cd.endswith(').csv"')


# --------------------------------------------------------------------------------------------------- auth
@pytest.mark.parametrize("header", [None, "", "Bearer", "Basic abc", "token abc"])
def test_missing_or_bad_auth_is_401(do_server, header: str | None) -> None:
    headers = {} if header is None else {"Authorization": header}
    r = httpx.get(do_server.url + HISTORY, headers=headers)
    assert r.status_code == 401
    assert r.json() == {"id": "unauthorized", "message": "Unable to authenticate you"}
    assert "ratelimit-limit" in r.headers


def test_configured_tokens_only(april: Scenario) -> None:
    with run_in_thread(create_app(april, tokens=["good"])) as srv:
        assert httpx.get(srv.url + BALANCE, headers={"Authorization": "Bearer good"}).status_code == 200
        assert httpx.get(srv.url + BALANCE, headers={"Authorization": "Bearer other"}).status_code == 401
        assert httpx.get(srv.url + BALANCE, headers={"Authorization": "bearer good"}).status_code == 200


def test_admin_endpoints_need_no_token_and_log_has_no_token(do_client: httpx.Client, do_server) -> None:
    do_client.get(HISTORY, params={"page": 2})
    log = httpx.get(do_server.url + "/_sim/requests").json()
    assert log["total"] == 1
    entry = log["requests"][0]
    assert entry["path"] == HISTORY and entry["query"] == "page=2" and entry["status"] == 200
    assert isinstance(entry["time"], float)
    assert TOKEN not in str(log)


# --------------------------------------------------------------------------------------------- rate limit
def test_ratelimit_headers_on_every_response(do_client: httpx.Client) -> None:
    r1 = do_client.get(BALANCE)
    r2 = do_client.get(APRIL_CSV)
    r3 = do_client.get("/v2/nothing")
    for r in (r1, r2, r3):
        assert r.headers["ratelimit-limit"] == "5000"
        assert int(r.headers["ratelimit-reset"]) >= int(time.time())
    assert int(r2.headers["ratelimit-remaining"]) == int(r1.headers["ratelimit-remaining"]) - 1


# ------------------------------------------------------------------------------------------------- faults
def test_injected_429_with_retry_after(do_client: httpx.Client) -> None:
    do_client.post("/_sim/faults", json={"rate_limit": 2, "retry_after": 3}).raise_for_status()
    r = do_client.get(HISTORY)
    assert r.status_code == 429
    assert r.json()["id"] == "too_many_requests"
    assert r.headers["retry-after"] == "3"
    assert r.headers["ratelimit-remaining"] == "0"
    assert int(r.headers["ratelimit-reset"]) - int(time.time()) in (2, 3, 4)
    assert do_client.get(HISTORY).status_code == 429
    assert do_client.get(HISTORY).status_code == 200
    statuses = [e["status"] for e in do_client.get("/_sim/requests").json()["requests"]]
    assert statuses == [429, 429, 200]


def test_injected_429_with_reset_only(do_client: httpx.Client) -> None:
    do_client.post("/_sim/faults", json={"rate_limit_reset_only": 1, "retry_after": 2})
    r = do_client.get(BALANCE)
    assert r.status_code == 429 and "retry-after" not in r.headers
    assert r.headers["ratelimit-remaining"] == "0" and int(r.headers["ratelimit-reset"]) > time.time()
    assert do_client.get(BALANCE).status_code == 200


@pytest.mark.parametrize("status", [500, 502, 503])
def test_injected_server_errors(do_client: httpx.Client, status: int) -> None:
    do_client.post("/_sim/faults", json={"server_errors": 1, "server_error_status": status})
    r = do_client.get(INVOICES)
    assert r.status_code == status and r.json()["id"] == "server_error"
    assert "ratelimit-limit" in r.headers
    assert do_client.get(INVOICES).status_code == 200


def test_faults_limited_to_a_path_prefix(do_client: httpx.Client) -> None:
    do_client.post("/_sim/faults", json={"server_errors": 1, "paths": "/v2/droplets"})
    assert do_client.get(BALANCE).status_code == 200
    assert do_client.get("/v2/droplets").status_code == 500
    assert do_client.get("/_sim/faults").json()["server_errors"] == 0


def test_faults_need_auth_first(do_client: httpx.Client, do_server) -> None:
    do_client.post("/_sim/faults", json={"server_errors": 1})
    assert httpx.get(do_server.url + BALANCE).status_code == 401
    assert do_client.get(BALANCE).status_code == 500


def test_slow_answers(do_client: httpx.Client) -> None:
    do_client.post("/_sim/faults", json={"slow_ms": 250})
    t0 = time.monotonic()
    assert do_client.get(BALANCE).status_code == 200
    assert time.monotonic() - t0 >= 0.25
    entry = do_client.get("/_sim/requests").json()["requests"][-1]
    assert entry["duration_ms"] >= 250
    do_client.delete("/_sim/faults")
    t0 = time.monotonic()
    do_client.get(BALANCE)
    assert time.monotonic() - t0 < 0.25


def test_slow_answer_times_out_a_client(do_server) -> None:
    with httpx.Client(base_url=do_server.url, headers={"Authorization": f"Bearer {TOKEN}"}) as c:
        c.post("/_sim/faults", json={"slow_ms": 600})
        with pytest.raises(httpx.ReadTimeout):
            c.get(BALANCE, timeout=0.1)
        c.delete("/_sim/faults")


def test_truncated_csv_body(do_client: httpx.Client, april: Scenario) -> None:
    full = april.csv_bytes(APRIL_2026_INVOICE_UUID)
    do_client.post("/_sim/faults", json={"truncate_csv": 1})
    r = do_client.get(APRIL_CSV)
    assert r.status_code == 200
    assert full.startswith(r.content) and len(r.content) < len(full)
    assert not r.content.endswith(b"\n")  # cut mid-line
    assert do_client.get(APRIL_CSV).content == full


def test_truncated_csv_rows_stops_after_a_whole_row(do_client: httpx.Client, april: Scenario) -> None:
    full = april.csv_bytes(APRIL_2026_INVOICE_UUID)
    do_client.post("/_sim/faults", json={"truncate_csv": 1, "truncate_mode": "rows"})
    cut = do_client.get(APRIL_CSV).content
    assert full.startswith(cut) and cut.endswith(b"\n") and len(cut) <= len(full) // 2
    assert do_client.get(APRIL_CSV).content == full


def test_a_csv_replaced_at_runtime_is_served_with_its_items_and_summary(
    do_client: httpx.Client, april: Scenario
) -> None:
    full = april.csv_bytes(APRIL_2026_INVOICE_UUID)
    other = full.replace(b"GST (10%),,2026-04-01 00:00:00 +0000,2026-04-30 23:59:59 +0000,$7.90", b"GST (10%),,,,$7.00")
    assert other != full
    assert do_client.put(f"/_sim/invoices/{APRIL_2026_INVOICE_UUID}/csv", content=other).json()["replaced"]
    assert do_client.get(APRIL_CSV).content == other
    summary = do_client.get(f"/v2/customers/my/invoices/{APRIL_2026_INVOICE_UUID}/summary").json()
    assert summary["taxes"]["amount"] == "7.00"
    bad = do_client.put(f"/_sim/invoices/{APRIL_2026_INVOICE_UUID}/csv", content=b"product,USD\ncaf\xe9,$1\n").json()
    assert "not UTF-8" in bad["warning"]
    assert do_client.get(APRIL_CSV).content == b"product,USD\ncaf\xe9,$1\n"  # byte for byte, never re-encoded
    do_client.delete(f"/_sim/invoices/{APRIL_2026_INVOICE_UUID}/csv")
    assert do_client.get(APRIL_CSV).content == full
    assert do_client.put("/_sim/invoices/not-an-invoice/csv", content=b"x").status_code == 404


def test_truncated_csv_connection(do_client: httpx.Client, april: Scenario) -> None:
    do_client.post("/_sim/faults", json={"truncate_csv": 1, "truncate_mode": "connection"})
    with pytest.raises(httpx.RemoteProtocolError):
        do_client.get(APRIL_CSV)
    assert do_client.get(APRIL_CSV).content == april.csv_bytes(APRIL_2026_INVOICE_UUID)


def test_faults_admin_endpoint_validates_and_merges(do_client: httpx.Client) -> None:
    assert do_client.post("/_sim/faults", json={"rate_limit": -1}).status_code == 422
    assert do_client.post("/_sim/faults", json={"bogus": 1}).status_code == 422
    assert do_client.post("/_sim/faults", json=[1]).status_code == 422
    do_client.post("/_sim/faults", json={"rate_limit": 1})
    merged = do_client.post("/_sim/faults", json={"slow_ms": 5}).json()
    assert merged["rate_limit"] == 1 and merged["slow_ms"] == 5
    cleared = do_client.delete("/_sim/faults").json()
    assert cleared["rate_limit"] == 0 and cleared["slow_ms"] == 0


def test_faults_at_start(april: Scenario) -> None:
    app = create_app(april, faults={"rate_limit": 1, "retry_after": 7})
    with run_in_thread(app) as srv:
        r = httpx.get(srv.url + BALANCE, headers={"Authorization": "Bearer t"})
        assert r.status_code == 429 and r.headers["retry-after"] == "7"
        assert httpx.get(srv.url + BALANCE, headers={"Authorization": "Bearer t"}).status_code == 200


def test_scenario_by_name_or_path(april: Scenario) -> None:
    for ref in ("april-2026", april.root, str(april.root)):
        with run_in_thread(create_app(ref)) as srv:
            r = httpx.get(srv.url + HISTORY, headers={"Authorization": "Bearer x"})
            assert r.json()["meta"]["total"] == len(april.billing_history)
