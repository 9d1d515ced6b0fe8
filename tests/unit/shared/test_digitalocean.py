"""The DigitalOcean client against httpx.MockTransport: pagination, retries and waits, errors, secrecy."""

from __future__ import annotations

import logging
from collections.abc import Callable
from decimal import Decimal

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


@pytest.mark.parametrize("links", [{"pages": {}}, {"pages": {"prev": f"{BASE}/v2/droplets?page=1"}}, {}])
def test_a_listing_cut_short_of_its_meta_total_is_never_taken_for_the_whole_list(links: dict) -> None:
    """`links` without `next` while `meta.total` says more: the walk used to end there and the poller
    tombstoned every resource it had not seen. An incomplete listing is a transient failure instead."""
    client, rec, _ = make_client(
        lambda r: httpx.Response(200, json={"droplets": [{"id": 1}, {"id": 2}], "links": links, "meta": {"total": 5}})
    )
    with pytest.raises(DigitalOceanUnavailable, match="2 of 5"):
        list(client.list_resources("droplet"))
    assert len(rec.requests) == 1


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
        "gpu_droplet": ("/v2/droplets", "droplets"),
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
    # GPU droplets are listed only with type=gpus; the plain listing never asks for them.
    assert rec.requests[0].url.params.get("type") == ("gpus" if kind == "gpu_droplet" else None)


def test_gpu_listing_keeps_its_type_on_page_number_fallback() -> None:
    pages = iter([{"droplets": [{"id": 1}], "meta": {"total": 2}}, {"droplets": [{"id": 2}], "meta": {"total": 2}}])
    client, rec, _ = make_client(lambda r: httpx.Response(200, json=next(pages)))
    assert [d["id"] for d in client.list_resources("gpu_droplet")] == [1, 2]
    assert [r.url.params.get("type") for r in rec.requests] == ["gpus", "gpus"]
    assert [r.url.params.get("page") for r in rec.requests] == ["1", "2"]


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
def test_csv_is_raw_bytes_never_decoded() -> None:
    # Not valid UTF-8 (latin-1 é): httpx would have replaced it; the parser must see the byte itself.
    csv_bytes = b'product,description,USD\nDroplets,"caf\xe9-01 (s-1vcpu-1gb), x",$1.00\n'

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.headers["accept"] == "text/csv"
        return httpx.Response(200, content=csv_bytes, headers={"content-type": "text/csv; charset=utf-8"})

    client, rec, _ = make_client(handler)
    assert client.invoice_csv("inv-1") == csv_bytes
    assert rec.requests[0].url.path == "/v2/customers/my/invoices/inv-1/csv"


def test_csv_that_looks_like_json_is_still_returned_verbatim() -> None:
    client, _, _ = make_client(lambda r: httpx.Response(200, text="[1, 2]", headers={"content-type": "text/csv"}))
    assert client.invoice_csv("inv-1") == b"[1, 2]"


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


def test_ratelimit_reset_in_the_past_backs_off_and_waits_are_capped() -> None:
    now = 1_000_000.0
    client, _, waits = make_client(
        flaky([(429, {"ratelimit-reset": str(int(now) - 5)}), (429, {"retry-after": "3600"})], OK),
        now=now,
        max_wait_s=60.0,
    )
    client.balance()
    assert waits == [0.75, 60.0]  # a reset in the past is no reason to retry at once: the backoff applies


@pytest.mark.parametrize(
    "headers",
    [
        {"retry-after": "0"},
        {"retry-after": "Thu, 01 Jan 1970 00:00:00 GMT"},  # a date in the past (the fake clock is in 1970)
        {"ratelimit-reset": "0"},
    ],
)
def test_retry_after_zero_or_past_never_retries_at_once_and_keeps_backing_off(headers: dict[str, str]) -> None:
    """`Retry-After: 0` used to give zero-delay retries (a busy loop wherever retries are many): every wait is
    floored and the exponential backoff keeps growing under the server's hint."""
    client, rec, waits = make_client(flaky([(429, headers)] * 4, OK), backoff_base_s=1.0, backoff_cap_s=30.0)
    client.balance()
    assert len(rec.requests) == 5
    assert all(w >= 0.5 for w in waits), waits
    assert waits == sorted(waits) and waits[-1] >= 4 * waits[0], waits


@pytest.mark.parametrize("status", [408, 409, 425, 429, 500, 501, 503, 507, 599])
def test_transient_statuses_are_retried(status: int) -> None:
    client, rec, waits = make_client(flaky([(status, {})], OK))
    assert client.balance() == {"account_balance": "1.00"}
    assert len(rec.requests) == 2 and len(waits) == 1


@pytest.mark.parametrize("status", [400, 404, 405, 410, 413, 422])
def test_permanent_statuses_are_not_retried(status: int) -> None:
    client, rec, waits = make_client(lambda r: httpx.Response(status, json={"id": "x", "message": "no"}))
    with pytest.raises(DigitalOceanError) as ei:
        client.balance()
    assert not isinstance(ei.value, DigitalOceanUnavailable)
    assert len(rec.requests) == 1 and waits == []


def test_a_body_that_does_not_decode_is_transient_and_retried() -> None:
    """A 200 cut short (or an HTML error page from a proxy) is a transient failure, not a bad invoice."""
    answers = iter([httpx.Response(200, text='{"account_balance": "1.'), httpx.Response(200, text="<html>"), OK])
    client, rec, waits = make_client(lambda r: next(answers))
    assert client.balance() == {"account_balance": "1.00"}
    assert len(rec.requests) == 3 and len(waits) == 2
    client, _, _ = make_client(lambda r: httpx.Response(200, text="<html>"), max_retries=2)
    with pytest.raises(DigitalOceanUnavailable, match="not a JSON object"):
        client.balance()


def test_retries_stay_within_the_request_budget() -> None:
    """A consumer calling DigitalOcean must stay well inside max.poll.interval.ms: a retry that would end past
    the budget is not taken (waits + per-request timeout)."""
    clock = {"t": 0.0}
    waits: list[float] = []

    def sleep(s: float) -> None:
        waits.append(s)
        clock["t"] += s

    rec = Recorder(lambda r: httpx.Response(429, headers={"retry-after": "20"}))
    c = DigitalOceanClient(
        BASE,
        TOKEN,
        transport=rec.transport,
        sleep=sleep,
        clock=lambda: clock["t"],
        max_retries=10,
        timeout_s=10,
        retry_budget_s=60,
    )
    with pytest.raises(DigitalOceanUnavailable, match="budget"):
        c.balance()
    assert sum(waits) + 10 <= 60
    assert len(rec.requests) == len(waits) + 1


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
    with pytest.raises(DigitalOceanUnavailable, match="not a JSON object"):
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


def test_json_money_is_read_exactly_never_through_a_float() -> None:
    # 0.1 + 0.2 as floats is 0.30000000000000004; a number with 17 significant digits loses its cents as a float.
    body = b'{"invoices": [{"invoice_uuid": "u", "amount": 12345678901234.57}], "links": {}, "meta": {"total": 1}}'
    client, _, _ = make_client(
        lambda r: httpx.Response(200, content=body, headers={"content-type": "application/json"})
    )
    (inv,) = list(client.invoices())
    assert inv["amount"] == Decimal("12345678901234.57")
    client, _, _ = make_client(lambda r: httpx.Response(200, content=b'{"amount": NaN}'))
    with pytest.raises(DigitalOceanUnavailable, match="not a JSON object"):
        client.balance()
