"""The DigitalOcean client against httpx.MockTransport: pagination, retries and waits, errors, secrecy."""

from __future__ import annotations

import logging
from collections.abc import Callable

import httpx
import pytest
from pydantic import SecretStr

from shared.digitalocean import (
    RESOURCE_KINDS,
    DigitalOceanAuthError,
    DigitalOceanClient,
    DigitalOceanError,
    DigitalOceanNotFound,
    DigitalOceanUnavailable,
)

TOKEN = "dop_v1_" + "f00dcafe" * 8
BASE = "https://api.example.test"


class Recorder:
    """A MockTransport whose handler also records every request it saw."""

    def __init__(self, handler: Callable[[httpx.Request], httpx.Response]) -> None:
        self.requests: list[httpx.Request] = []
        self._handler = handler
        self.transport = httpx.MockTransport(self._handle)

    def _handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self._handler(request)


def make_client(handler, *, sleeps: list[float] | None = None, now: float = 1_000_000.0, **kw):
    rec = Recorder(handler)
    waits = sleeps if sleeps is not None else []
    client = DigitalOceanClient(
        BASE,
        SecretStr(TOKEN),
        transport=rec.transport,
        sleep=waits.append,
        clock=lambda: now,
        rng=lambda: 0.5,
        **kw,
    )
    return client, rec, waits


def history_pages(n_pages: int, per_page: int, *, style: str = "absolute", host: str = BASE):
    """A handler serving `n_pages` billing-history pages whose `next` link has the given style."""

    def handler(request: httpx.Request) -> httpx.Response:
        page = int(request.url.params.get("page", "1"))
        items = [{"description": f"e{page}-{i}", "amount": "1.00", "type": "Payment"} for i in range(per_page)]
        body: dict = {"billing_history": items, "meta": {"total": n_pages * per_page}}
        pages: dict = {}
        if page < n_pages:
            q = f"page={page + 1}&per_page={per_page}"
            pages["next"] = {
                "absolute": f"{host}/v2/customers/my/billing_history?{q}",
                "relative": f"/v2/customers/my/billing_history?{q}",
            }[style]
        body["links"] = {"pages": pages}
        return httpx.Response(200, json=body)

    return handler


# ------------------------------------------------------------------------------------------ pagination
@pytest.mark.parametrize("style", ["absolute", "relative"])
def test_pagination_follows_next_until_absent(style: str) -> None:
    client, rec, _ = make_client(history_pages(4, 3, style=style), per_page=3)
    entries = list(client.billing_history())
    assert len(entries) == 12
    assert [r.url.params.get("page") for r in rec.requests] == ["1", "2", "3", "4"]
    assert rec.requests[0].url.params["per_page"] == "3"
    assert all(r.url.host == "api.example.test" for r in rec.requests)


def test_next_link_on_another_host_is_rebased_so_the_token_stays_home() -> None:
    client, rec, _ = make_client(history_pages(2, 2, host="https://api.digitalocean.com"), per_page=2)
    assert len(list(client.billing_history())) == 4
    assert {r.url.host for r in rec.requests} == {"api.example.test"}
    assert rec.requests[1].url.path == "/v2/customers/my/billing_history"
    assert rec.requests[1].url.params["page"] == "2"


def test_missing_links_and_meta_is_one_page() -> None:
    client, rec, _ = make_client(lambda r: httpx.Response(200, json={"billing_history": [{"a": 1}]}))
    assert list(client.billing_history()) == [{"a": 1}]
    assert len(rec.requests) == 1


def test_empty_pages_object_ends_the_walk() -> None:
    client, rec, _ = make_client(
        lambda r: httpx.Response(200, json={"invoices": [{"invoice_uuid": "u"}], "links": {"pages": {}}})
    )
    assert list(client.invoices()) == [{"invoice_uuid": "u"}]
    assert len(rec.requests) == 1


def test_without_links_meta_total_drives_page_numbers() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        page = int(request.url.params["page"])
        items = [{"id": page * 10 + i} for i in range(2 if page < 3 else 1)]
        return httpx.Response(200, json={"droplets": items, "meta": {"total": 5}})

    client, rec, _ = make_client(handler, per_page=2)
    assert [d["id"] for d in client.list_resources("droplet")] == [10, 11, 20, 21, 30]
    assert len(rec.requests) == 3


def test_pagination_loop_is_an_error_not_a_hang() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200, json={"droplets": [{"id": 1}], "links": {"pages": {"next": f"{BASE}/v2/droplets?page=2"}}}
        )

    client, _, _ = make_client(handler)
    with pytest.raises(DigitalOceanError, match="pagination loops"):
        list(client.list_resources("droplet"))


def test_invoice_items_are_paginated() -> None:
    client, rec, _ = make_client(
        lambda r: httpx.Response(
            200,
            json={"invoice_items": [{"product": "Droplets"}] * 2, "links": {"pages": {}}, "meta": {"total": 2}},
        )
    )
    assert len(list(client.invoice_items("abc-123"))) == 2
    assert rec.requests[0].url.path == "/v2/customers/my/invoices/abc-123"


def test_invoice_uuid_cannot_escape_its_path_segment() -> None:
    client, _, _ = make_client(lambda r: httpx.Response(200, text=""))
    with pytest.raises(ValueError):
        client.invoice_csv("../balance")


# ------------------------------------------------------------------------------------------ resources
@pytest.mark.parametrize("kind", RESOURCE_KINDS)
def test_every_resource_kind_lists(kind: str) -> None:
    paths = {
        "droplet": ("/v2/droplets", "droplets"),
        "volume": ("/v2/volumes", "volumes"),
        "database": ("/v2/databases", "databases"),
        "load_balancer": ("/v2/load_balancers", "load_balancers"),
        "kubernetes_cluster": ("/v2/kubernetes/clusters", "kubernetes_clusters"),
        "app": ("/v2/apps", "apps"),
        "snapshot": ("/v2/snapshots", "snapshots"),
        "floating_ip": ("/v2/floating_ips", "floating_ips"),
        "reserved_ip": ("/v2/reserved_ips", "reserved_ips"),
        "registry": ("/v2/registries", "registries"),
    }
    path, key = paths[kind]
    client, rec, _ = make_client(lambda r: httpx.Response(200, json={key: [{"id": "x"}]}))
    assert list(client.list_resources(kind)) == [{"id": "x"}]
    assert rec.requests[0].url.path == path
    paginated = kind not in ("database", "registry")
    assert ("page" in rec.requests[0].url.params) is paginated


def test_null_database_list_is_empty_and_missing_registry_is_empty() -> None:
    client, _, _ = make_client(lambda r: httpx.Response(200, json={"databases": None}))
    assert list(client.list_resources("database")) == []
    client, _, _ = make_client(lambda r: httpx.Response(404, json={"id": "not_found", "message": "no registry"}))
    assert list(client.list_resources("registry")) == []


def test_unknown_kind_is_rejected() -> None:
    client, _, _ = make_client(lambda r: httpx.Response(200, json={}))
    with pytest.raises(ValueError, match="unknown resource kind"):
        client.list_resources("spaces")


# ------------------------------------------------------------------------------------------ CSV
def test_csv_is_raw_text_never_json_decoded() -> None:
    csv_text = 'product,description,USD\nDroplets,"web-01 (s-1vcpu-1gb), x",$1.00\n'

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.headers["accept"] == "text/csv"
        return httpx.Response(200, content=csv_text.encode(), headers={"content-type": "text/csv; charset=utf-8"})

    client, rec, _ = make_client(handler)
    assert client.invoice_csv("inv-1") == csv_text
    assert rec.requests[0].url.path == "/v2/customers/my/invoices/inv-1/csv"


def test_csv_that_looks_like_json_is_still_returned_verbatim() -> None:
    client, _, _ = make_client(lambda r: httpx.Response(200, text="[1, 2]", headers={"content-type": "text/csv"}))
    assert client.invoice_csv("inv-1") == "[1, 2]"


def test_balance_and_summary() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/balance"):
            return httpx.Response(200, json={"account_balance": "1.00"})
        return httpx.Response(200, json={"invoice_uuid": "u", "amount": "2.00"})

    client, _, _ = make_client(handler)
    assert client.balance() == {"account_balance": "1.00"}
    assert client.invoice_summary("u")["amount"] == "2.00"


# ------------------------------------------------------------------------------------------ retries
def flaky(statuses: list[tuple[int, dict[str, str]]], final: httpx.Response):
    """Answer the given (status, headers) in order, then `final` forever."""
    queue = list(statuses)

    def handler(request: httpx.Request) -> httpx.Response:
        if queue:
            status, headers = queue.pop(0)
            return httpx.Response(status, headers=headers, json={"id": "too_many_requests", "message": "slow down"})
        return final

    return handler


OK = httpx.Response(200, json={"account_balance": "1.00"})


def test_429_honours_retry_after_seconds_case_insensitively() -> None:
    client, rec, waits = make_client(flaky([(429, {"Retry-After": "7"}), (429, {"RETRY-AFTER": "2"})], OK))
    assert client.balance() == {"account_balance": "1.00"}
    assert waits == [7.0, 2.0]
    assert len(rec.requests) == 3


def test_429_without_retry_after_waits_until_ratelimit_reset() -> None:
    now = 1_000_000.0
    client, _, waits = make_client(flaky([(429, {"RateLimit-Reset": str(int(now) + 12)})], OK), now=now)
    client.balance()
    assert waits == [12.0]


def test_retry_after_wins_over_ratelimit_reset() -> None:
    now = 1_000_000.0
    client, _, waits = make_client(
        flaky([(429, {"retry-after": "3", "ratelimit-reset": str(int(now) + 50)})], OK), now=now
    )
    client.balance()
    assert waits == [3.0]


def test_ratelimit_reset_in_the_past_waits_zero_and_waits_are_capped() -> None:
    now = 1_000_000.0
    client, _, waits = make_client(
        flaky([(429, {"ratelimit-reset": str(int(now) - 5)}), (429, {"retry-after": "3600"})], OK),
        now=now,
        max_wait_s=60.0,
    )
    client.balance()
    assert waits == [0.0, 60.0]


def test_429_without_headers_backs_off() -> None:
    client, _, waits = make_client(flaky([(429, {})], OK))
    client.balance()
    assert waits == [0.75]  # base 1 s, attempt 0: ceiling 1, equal jitter with rng 0.5


def test_5xx_capped_exponential_backoff_with_jitter() -> None:
    client, rec, waits = make_client(
        flaky([(500, {}), (502, {}), (503, {}), (504, {}), (500, {})], OK),
        backoff_base_s=1.0,
        backoff_cap_s=5.0,
        max_retries=5,
    )
    client.balance()
    # ceilings 1, 2, 4, 5 (capped), 5; equal jitter with rng=0.5 → 3/4 of each ceiling
    assert waits == [0.75, 1.5, 3.0, 3.75, 3.75]
    assert len(rec.requests) == 6


def test_jitter_stays_within_half_to_full_ceiling() -> None:
    for r in (0.0, 0.999):
        rec = Recorder(flaky([(500, {})] * 3, OK))
        waits: list[float] = []
        c = DigitalOceanClient(BASE, TOKEN, transport=rec.transport, sleep=waits.append, rng=lambda r=r: r)
        c.balance()
        for attempt, w in enumerate(waits):
            ceiling = min(30.0, 2.0**attempt)
            assert ceiling / 2 <= w <= ceiling


def test_timeouts_and_connection_errors_are_retried() -> None:
    calls = {"n": 0}

    def handler(request: httpx.Request) -> httpx.Response:
        calls["n"] += 1
        if calls["n"] == 1:
            raise httpx.ReadTimeout("slow", request=request)
        if calls["n"] == 2:
            raise httpx.ConnectError("refused", request=request)
        return OK

    client, _, waits = make_client(handler)
    assert client.balance() == {"account_balance": "1.00"}
    assert len(waits) == 2


def test_exhaustion_names_the_call_and_the_last_failure() -> None:
    client, rec, waits = make_client(flaky([(503, {})] * 10, OK), max_retries=3)
    with pytest.raises(DigitalOceanUnavailable) as ei:
        client.balance()
    text = str(ei.value)
    assert "GET /v2/customers/my/balance" in text
    assert "gave up after 4 attempts" in text
    assert "HTTP 503" in text
    assert len(rec.requests) == 4
    assert len(waits) == 3  # no pointless sleep after the last try


def test_exhaustion_on_a_later_page_names_that_listing() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.params.get("page") == "2":
            return httpx.Response(500, json={"id": "server_error", "message": "boom"})
        return httpx.Response(
            200,
            json={
                "billing_history": [{}],
                "links": {"pages": {"next": f"{BASE}/v2/customers/my/billing_history?page=2"}},
            },
        )

    client, _, _ = make_client(handler, max_retries=1)
    with pytest.raises(DigitalOceanUnavailable, match=r"GET /v2/customers/my/billing_history"):
        list(client.billing_history())


def test_timeout_exhaustion() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectTimeout("timed out", request=request)

    client, _, _ = make_client(handler, max_retries=2)
    with pytest.raises(DigitalOceanUnavailable, match="timeout"):
        client.balance()


# ------------------------------------------------------------------------------------------ errors
@pytest.mark.parametrize("status", [401, 403])
def test_auth_error_is_immediate_and_clear(status: int) -> None:
    client, rec, waits = make_client(
        lambda r: httpx.Response(status, json={"id": "unauthorized", "message": "Unable to authenticate you"})
    )
    with pytest.raises(DigitalOceanAuthError) as ei:
        client.balance()
    assert len(rec.requests) == 1 and waits == []
    text = str(ei.value)
    assert "GET /v2/customers/my/balance" in text and f"HTTP {status}" in text
    assert "Unable to authenticate you" in text


def test_empty_token_is_an_auth_error_without_a_request() -> None:
    rec = Recorder(lambda r: OK)
    client = DigitalOceanClient(BASE, "", transport=rec.transport)
    with pytest.raises(DigitalOceanAuthError, match="no DigitalOcean token"):
        client.balance()
    assert rec.requests == []


def test_404_is_not_found_and_other_4xx_are_not_retried() -> None:
    client, _, _ = make_client(lambda r: httpx.Response(404, json={"id": "not_found", "message": "nope"}))
    with pytest.raises(DigitalOceanNotFound, match="nope"):
        client.invoice_csv("missing")
    client, rec, _ = make_client(
        lambda r: httpx.Response(422, json={"id": "unprocessable_entity"}, headers={"x-request-id": "req-9"})
    )
    with pytest.raises(DigitalOceanError, match="req-9") as ei:
        client.balance()
    assert type(ei.value) is DigitalOceanError
    assert len(rec.requests) == 1


def test_non_json_answer_is_a_clear_error() -> None:
    client, _, _ = make_client(lambda r: httpx.Response(200, text="<html>"))
    with pytest.raises(DigitalOceanError, match="not JSON"):
        client.balance()


# ------------------------------------------------------------------------------------------ secrecy
def test_token_is_sent_as_bearer() -> None:
    client, rec, _ = make_client(lambda r: OK)
    client.balance()
    assert rec.requests[0].headers["authorization"] == f"Bearer {TOKEN}"


def test_token_never_in_errors_or_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)

    def echo_token(request: httpx.Request) -> httpx.Response:
        # a hostile/buggy server echoing the Authorization header back in its error message
        return httpx.Response(401, json={"id": "unauthorized", "message": request.headers["authorization"]})

    texts: list[str] = []
    for handler in (
        echo_token,
        flaky([(503, {})] * 10, OK),
        flaky([(429, {"retry-after": "1"})] * 10, OK),
    ):
        client, _, _ = make_client(handler, max_retries=2)
        with pytest.raises(DigitalOceanError) as ei:
            client.balance()
        texts += [str(ei.value), repr(ei.value), repr(client)]

    def boom(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError(f"failed with {request.headers['authorization']}", request=request)

    client, _, _ = make_client(boom, max_retries=1)
    with pytest.raises(DigitalOceanUnavailable) as ei:
        client.balance()
    texts.append(str(ei.value))
    assert ei.value.__cause__ is None or TOKEN not in str(ei.value.__cause__)

    # a successful walk logs nothing secret either (httpx would log request lines at INFO)
    client, _, _ = make_client(history_pages(2, 2), per_page=2)
    list(client.billing_history())

    assert caplog.records, "expected retry warnings to be logged"
    for text in texts + [r.getMessage() for r in caplog.records] + [caplog.text]:
        assert TOKEN not in text
        assert "f00dcafe" not in text
    assert logging.getLogger("httpx").getEffectiveLevel() >= logging.WARNING


def test_token_accepted_as_plain_string() -> None:
    rec = Recorder(lambda r: OK)
    c = DigitalOceanClient(BASE, "plain-token", transport=rec.transport)
    with c:
        c.balance()
    assert rec.requests[0].headers["authorization"] == "Bearer plain-token"
    assert "plain-token" not in repr(c)
