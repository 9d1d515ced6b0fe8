"""DigitalOcean API v2 client (httpx, sync): billing, invoices, CSV and resource listings.

Why it looks like this:
- Every listing walks all pages by following `links.pages.next` until it is absent (a missing `links` or
  `meta` is tolerated). A `next` link that points at another host is re-based on our base URL, so the
  bearer token is only ever sent to the configured API. A listing that ends while its `meta.total` says
  there is more is *incomplete* (`DigitalOceanIncompleteListing`, transient): a caller never takes it for
  the whole list (the poller would tombstone every resource it missed).
- Transient answers (`shared.retry`: 408, 409, 425, 429, 5xx, timeouts, connection errors, a body that does
  not decode) are retried: the wait is the larger of `retry-after` (seconds or a date) / `ratelimit-reset`
  (epoch seconds) and a capped exponential backoff with jitter, never below a floor, so `retry-after: 0`
  is not a busy loop. Every request has a total budget (`retry_budget_s`): a retry that would end past it
  is not taken, so a Kafka consumer calling this stays well inside `max.poll.interval.ms`. After the last
  try `DigitalOceanUnavailable` names the call (method and path). 401/403 fail at once
  (`DigitalOceanAuthError`): retrying a bad token only burns the rate limit. Other 4xx are permanent.
- Waits are interruptible: `interruptible_sleep(stop)` ends a wait at once on SIGTERM and raises
  `DigitalOceanInterrupted` (a `DigitalOceanUnavailable`: the work is retried later, never dead-lettered).
- Money is read exactly: JSON bodies are decoded with `shared.money.loads_exact` (a JSON number becomes a
  Decimal, never a float), and the invoice CSV is returned as its raw bytes: decoding (strict UTF-8) and
  hashing are the parser's job, never httpx's guess with replacement characters.
- The token never reaches a log line or an exception text: it lives in a `SecretStr`, is added per
  request by an `httpx.Auth`, error texts are scrubbed, and httpx/httpcore logging stays at WARNING.
- `sleep`, `clock` and `rng` are injectable so tests assert the waits without sleeping.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from email.utils import parsedate_to_datetime
from typing import Any, Protocol

import httpx
from pydantic import SecretStr

from shared.logging import scrub
from shared.metrics import HTTP_CALLS, HTTP_LATENCY
from shared.money import MoneyError, loads_exact, money_from_json
from shared.retry import MIN_WAIT_S, backoff_s, http_class

log = logging.getLogger(__name__)

# httpx logs every request at INFO; keep both HTTP libraries quiet unless someone chose a level explicitly.
for _name in ("httpx", "httpcore"):
    if logging.getLogger(_name).level == logging.NOTSET:
        logging.getLogger(_name).setLevel(logging.WARNING)


class DigitalOceanError(Exception):
    """Base error: names the call (`GET /v2/...`), never the token."""

    def __init__(self, call: str, message: str, *, status: int | None = None, request_id: str | None = None) -> None:
        self.call = call
        self.status = status
        self.request_id = request_id
        self.message = message
        text = f"DigitalOcean {call}: {message}"
        if status is not None:
            text += f" (HTTP {status})"
        if request_id:
            text += f" [request_id {request_id}]"
        super().__init__(text)


class DigitalOceanAuthError(DigitalOceanError):
    """401/403: the token is missing, invalid, revoked or lacks the scope. Never retried."""


class DigitalOceanNotFound(DigitalOceanError):
    """404: no such invoice/resource (or endpoint)."""


class DigitalOceanUnavailable(DigitalOceanError):
    """Transient: retries exhausted (429, 5xx, timeouts, undecodable bodies...). Try again later."""


class DigitalOceanIncompleteListing(DigitalOceanUnavailable):
    """A listing ended (no `next` link) with fewer items than its `meta.total`: never trust it as the whole list."""


class DigitalOceanInterrupted(DigitalOceanUnavailable):
    """A retry wait was cut short because the service is stopping: the work is redone later."""


class Stoppable(Protocol):
    def wait(self, seconds: float) -> bool: ...


def interruptible_sleep(stop: Stoppable | None) -> Callable[[float], None]:
    """A retry wait that a stop (SIGTERM) ends at once, raising DigitalOceanInterrupted."""
    if stop is None:
        return time.sleep

    def sleep(seconds: float) -> None:
        if stop.wait(seconds):
            raise DigitalOceanInterrupted("retry wait", "stopping: request abandoned during a retry wait")

    return sleep


@dataclass(frozen=True)
class ResourceEndpoint:
    path: str
    key: str
    paginated: bool = True
    params: tuple[tuple[str, str], ...] = ()  # fixed query parameters (GPU droplets: type=gpus)


# Resource kinds (the project's shared vocabulary) → listing endpoint and top-level JSON key.
RESOURCE_ENDPOINTS: dict[str, ResourceEndpoint] = {
    "droplet": ResourceEndpoint("/v2/droplets", "droplets"),
    # GPU droplets are listed only with type=gpus (a plain listing leaves them out).
    "gpu_droplet": ResourceEndpoint("/v2/droplets", "droplets", params=(("type", "gpus"),)),
    "volume": ResourceEndpoint("/v2/volumes", "volumes"),
    "database": ResourceEndpoint("/v2/databases", "databases", paginated=False),
    "load_balancer": ResourceEndpoint("/v2/load_balancers", "load_balancers"),
    "kubernetes_cluster": ResourceEndpoint("/v2/kubernetes/clusters", "kubernetes_clusters"),
    "app": ResourceEndpoint("/v2/apps", "apps"),
    "snapshot": ResourceEndpoint("/v2/snapshots", "snapshots"),
    "floating_ip": ResourceEndpoint("/v2/floating_ips", "floating_ips"),
    "reserved_ip": ResourceEndpoint("/v2/reserved_ips", "reserved_ips"),
    "registry": ResourceEndpoint("/v2/registries", "registries", paginated=False),
}
RESOURCE_KINDS: tuple[str, ...] = tuple(RESOURCE_ENDPOINTS)

# Billing-history entry types, as DigitalOcean spells them.
HISTORY_TYPES: tuple[str, ...] = (
    "ACHFailure",
    "Adjustment",
    "AttemptFailed",
    "Chargeback",
    "Credit",
    "CreditExpiration",
    "Invoice",
    "Payment",
    "Refund",
    "Reversal",
)


class _BearerAuth(httpx.Auth):
    """Adds the token per request, so it is not part of the client's default headers."""

    def __init__(self, token: SecretStr) -> None:
        self._token = token

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = f"Bearer {self._token.get_secret_value()}"
        yield request


class DigitalOceanClient:
    """Synchronous DigitalOcean API client. Use as a context manager (closes the connection pool)."""

    def __init__(
        self,
        base_url: str,
        token: SecretStr | str,
        *,
        per_page: int = 200,
        max_retries: int = 5,
        timeout_s: float = 30.0,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.time,
        rng: Callable[[], float] = random.random,
        backoff_base_s: float = 1.0,
        backoff_cap_s: float = 30.0,
        max_wait_s: float = 60.0,
        min_wait_s: float = MIN_WAIT_S,
        retry_budget_s: float | None = None,
        service: str = "cloudbill",
    ) -> None:
        self._token = token if isinstance(token, SecretStr) else SecretStr(token)
        self.per_page = max(1, min(200, per_page))
        self.max_retries = max(0, max_retries)
        self._sleep = sleep
        self._clock = clock
        self._rng = rng
        self.backoff_base_s = backoff_base_s
        self.backoff_cap_s = backoff_cap_s
        self.max_wait_s = max_wait_s
        self.min_wait_s = min_wait_s
        # One request's attempts and waits together never take longer than this (None: only max_retries).
        self.retry_budget_s = retry_budget_s
        self._timeout_s = timeout_s
        self._service = service
        self._base = httpx.URL(base_url.rstrip("/") + "/")
        self._http = httpx.Client(
            base_url=self._base,
            auth=_BearerAuth(self._token),
            timeout=httpx.Timeout(timeout_s),
            transport=transport,
            headers={"Accept": "application/json", "User-Agent": "cloudbill/0.1"},
            follow_redirects=False,
        )

    def __repr__(self) -> str:
        return f"DigitalOceanClient({str(self._base)!r})"

    # ---------------------------------------------------------------------------------- lifecycle
    def __enter__(self) -> DigitalOceanClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # ---------------------------------------------------------------------------------- billing
    def balance(self) -> dict[str, Any]:
        return self._get_json("/v2/customers/my/balance")

    def billing_history(self) -> Iterator[dict[str, Any]]:
        """Every billing-history entry, all pages, oldest page order as DigitalOcean returns them."""
        return self._paginate("/v2/customers/my/billing_history", "billing_history")

    def invoices(self) -> Iterator[dict[str, Any]]:
        """Every finalized invoice (`invoice_uuid`, `invoice_id`, `amount`, `invoice_period`), all pages."""
        return self._paginate("/v2/customers/my/invoices", "invoices")

    def invoice_items(self, invoice_uuid: str) -> Iterator[dict[str, Any]]:
        return self._paginate(f"/v2/customers/my/invoices/{_segment(invoice_uuid)}", "invoice_items")

    def invoice_summary(self, invoice_uuid: str) -> dict[str, Any]:
        return self._get_json(f"/v2/customers/my/invoices/{_segment(invoice_uuid)}/summary")

    def invoice_csv(self, invoice_uuid: str) -> bytes:
        """The invoice CSV exactly as served (`text/csv`): the raw bytes, never decoded or JSON-parsed here."""
        path = f"/v2/customers/my/invoices/{_segment(invoice_uuid)}/csv"
        resp = self._request("GET", path, accept="text/csv")
        ctype = resp.headers.get("content-type", "")
        if "json" in ctype.lower():
            log.warning("DigitalOcean GET %s answered content type %r for a CSV", path, ctype)
        return resp.content

    # ---------------------------------------------------------------------------------- resources
    def list_resources(self, kind: str) -> Iterator[dict[str, Any]]:
        """Every resource of one kind (see RESOURCE_KINDS)."""
        try:
            ep = RESOURCE_ENDPOINTS[kind]
        except KeyError:
            raise ValueError(f"unknown resource kind {kind!r}; known: {', '.join(RESOURCE_KINDS)}") from None
        if ep.paginated:
            return self._paginate(ep.path, ep.key, dict(ep.params))
        return iter(self._unpaginated(ep, kind))

    def _unpaginated(self, ep: ResourceEndpoint, kind: str) -> list[dict[str, Any]]:
        try:
            body = self._get_json(ep.path)
        except DigitalOceanNotFound:
            if kind == "registry":  # DigitalOcean answers 404 when the account has no registry subscription
                return []
            raise
        items = body.get(ep.key)
        if items is None:  # DigitalOcean answers `{"databases": null}` for none
            return []
        if not isinstance(items, list):
            raise DigitalOceanError(f"GET {ep.path}", f"expected a list under {ep.key!r}")
        return items

    # ---------------------------------------------------------------------------------- plumbing
    def _get_json(self, path: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        return self._request_json(path, params=params)

    def _request_json(
        self, url: str | httpx.URL, *, params: dict[str, Any] | None = None, call: str | None = None
    ) -> dict[str, Any]:
        """GET a JSON object; a 2xx whose body is not one (cut short, an HTML page) is retried like a 5xx."""
        body: list[dict[str, Any]] = []

        def decode(resp: httpx.Response) -> bool:
            try:
                value = loads_exact(resp.content)
            except ValueError:
                return False
            if isinstance(value, dict):
                body.append(value)
                return True
            return False

        self._request("GET", url, params=params, call=call, accept_body=decode)
        return body[-1]

    def _paginate(self, path: str, key: str, fixed: Mapping[str, str] | None = None) -> Iterator[dict[str, Any]]:
        """Follow `links.pages.next` until absent; without `links`, fall back on `meta.total` page numbers.

        `fixed` query parameters go with every page number request (a `next` link carries its own query)."""
        call = f"GET {path}"
        url: str | httpx.URL = path
        params: dict[str, Any] | None = {**(fixed or {}), "page": 1, "per_page": self.per_page}
        page, seen, received = 1, set(), 0
        while True:
            body = self._request_json(url, params=params, call=call)
            items = body.get(key)
            if items is None:
                items = []
            if not isinstance(items, list):
                raise DigitalOceanError(call, f"expected a list under {key!r}")
            yield from items
            received += len(items)
            nxt = _next_link(body)
            if nxt:
                target = self._rebase(nxt)
                marker = str(target)
                if marker in seen:
                    raise DigitalOceanError(call, f"pagination loops (page link repeated: {_path_of(target)})")
                seen.add(marker)
                url, params = target, None
                page += 1
                continue
            total = _meta_total(body)
            if "links" not in body and total is not None and items and received < total:
                page += 1
                url, params = path, {**(fixed or {}), "page": page, "per_page": self.per_page}
                continue
            if total is not None and received < total:
                # `links` without `next` (or an empty page) while meta.total says more: the listing is cut.
                raise DigitalOceanIncompleteListing(
                    call, f"listing incomplete: {received} of {total} item(s) on {page} page(s), no next page"
                )
            return

    def _rebase(self, link: str) -> httpx.URL:
        """A `next` link on our API host is used as is; any other host is re-based (the token stays home)."""
        target = self._base.join(link)
        if (target.scheme, target.host, target.port) != (self._base.scheme, self._base.host, self._base.port):
            log.debug("re-basing pagination link for host %s onto the configured API", target.host)
            target = self._base.copy_with(path=target.path, query=target.query or None)
        return target

    def _request(
        self,
        method: str,
        url: str | httpx.URL,
        *,
        params: dict[str, Any] | None = None,
        accept: str | None = None,
        call: str | None = None,
        accept_body: Callable[[httpx.Response], bool] | None = None,
    ) -> httpx.Response:
        """One request with its retries. A 2xx whose body `accept_body` refuses is transient too."""
        call = call or f"{method} {_path_of(url)}"
        if not self._token.get_secret_value().strip():
            raise DigitalOceanAuthError(call, "no DigitalOcean token configured")
        if isinstance(url, str) and url.startswith("/"):
            url = url[1:]  # relative to the base URL (which may carry a path prefix)
        headers = {"Accept": accept} if accept else None
        last = "no attempt"
        began = self._clock()
        for attempt in range(self.max_retries + 1):
            started = time.monotonic()
            try:
                resp = self._http.request(method, url, params=params, headers=headers)
            except httpx.TimeoutException as e:
                last = f"timeout ({type(e).__name__})"
                self._count(call, "timeout", started)
                wait = self._backoff(attempt)
            except httpx.TransportError as e:
                last = f"connection error ({type(e).__name__}: {self._clean(str(e))})"
                self._count(call, "error", started)
                wait = self._backoff(attempt)
            else:
                self._count(call, str(resp.status_code), started)
                kind = http_class(resp.status_code)
                if kind == "ok":
                    if accept_body is None or accept_body(resp):
                        return resp
                    last = f"HTTP {resp.status_code} with a body that is not a JSON object"
                    wait = self._backoff(attempt)
                elif kind == "auth":
                    raise self._error(DigitalOceanAuthError, call, resp, hint="check the account's token and scope")
                elif resp.status_code == 404:
                    raise self._error(DigitalOceanNotFound, call, resp)
                elif kind == "permanent":
                    raise self._error(DigitalOceanError, call, resp)
                else:
                    last = f"HTTP {resp.status_code}"
                    wait = self._wait_for(resp, attempt)
            if attempt < self.max_retries:
                self._within_budget(call, attempt, began, wait, last)
                log.warning(
                    "DigitalOcean %s: %s, retry %d/%d in %.1fs", call, last, attempt + 1, self.max_retries, wait
                )
                self._sleep(wait)
        raise DigitalOceanUnavailable(call, f"gave up after {self.max_retries + 1} attempts, last: {last}")

    def _within_budget(self, call: str, attempt: int, began: float, wait: float, last: str) -> None:
        """Give up now when the next attempt, after `wait`, could end past the retry budget."""
        if self.retry_budget_s is None:
            return
        spent = self._clock() - began
        if spent + wait + self._timeout_s > self.retry_budget_s:
            raise DigitalOceanUnavailable(
                call,
                f"gave up after {attempt + 1} attempt(s) in {spent:.1f}s: the next one would end past "
                f"the {self.retry_budget_s:g}s budget, last: {last}",
            )

    def _wait_for(self, resp: httpx.Response, attempt: int) -> float:
        """`retry-after` (seconds or a date), else on a 429 `ratelimit-reset` (epoch): a lower bound on the
        backoff, never a licence to retry at once (a `0` or a past date is floored)."""
        h = resp.headers  # httpx headers are case-insensitive
        hint = _retry_after_seconds(h.get("retry-after"), self._clock)
        if hint is None and resp.status_code == 429:
            reset = _seconds_or_none(h.get("ratelimit-reset"))
            if reset is not None:
                hint = max(0.0, reset - self._clock())
        return self._backoff(attempt, hint)

    def _backoff(self, attempt: int, hint: float | None = None) -> float:
        """Capped exponential backoff with 'equal jitter' (half fixed, half random); a server's hint (capped at
        `max_wait_s`) is a lower bound; never below `min_wait_s`."""
        wait = backoff_s(attempt + 1, base=self.backoff_base_s, cap=self.backoff_cap_s, floor=0.0, rng=self._rng)
        if hint is not None:
            wait = max(wait, min(hint, self.max_wait_s))
        return max(self.min_wait_s, wait)

    def _error(
        self, cls: type[DigitalOceanError], call: str, resp: httpx.Response, *, hint: str = ""
    ) -> DigitalOceanError:
        msg, request_id = _error_details(resp)
        msg = self._clean(msg)
        if hint:
            msg = f"{msg}; {hint}" if msg else hint
        return cls(call, msg or resp.reason_phrase or "error", status=resp.status_code, request_id=request_id)

    def _clean(self, text: str) -> str:
        token = self._token.get_secret_value()
        if token:
            text = text.replace(token, "****")
        return scrub(text)

    def _count(self, call: str, status: str, started: float) -> None:
        target = "digitalocean"
        HTTP_CALLS.labels(self._service, target, status).inc()
        HTTP_LATENCY.labels(self._service, target).observe(time.monotonic() - started)


# -------------------------------------------------------------------------------------- helpers
@dataclass(frozen=True)
class Listed:
    """One invoice of the /invoices listing: its period and amount (None when unreadable: never guessed)."""

    period: str | None
    amount_minor: int | None


def invoice_listing(invoices: Iterable[Mapping[str, Any]], currency: str = "USD") -> dict[str, Listed]:
    """invoice uuid → (invoice_period, amount in minor units) from the /invoices listing."""
    out: dict[str, Listed] = {}
    for inv in invoices:
        uuid = inv.get("invoice_uuid")
        if not isinstance(uuid, str):
            continue
        period = inv.get("invoice_period")
        try:
            amount: int | None = money_from_json(inv.get("amount"), currency)
        except MoneyError:
            amount = None  # the ingester's reconciliation then holds the invoice: no listed amount to agree with
        out[uuid] = Listed(period if isinstance(period, str) else None, amount)
    return out


def _segment(value: str) -> str:
    """An invoice uuid as one path segment (no traversal, no query injection)."""
    if not value or any(c in value for c in "/?#%\\") or value in (".", ".."):
        raise ValueError(f"not a valid invoice uuid: {value!r}")
    return value


def _path_of(url: str | httpx.URL) -> str:
    return httpx.URL(str(url)).path if "://" in str(url) else str(url).split("?", 1)[0]


def _next_link(body: dict[str, Any]) -> str | None:
    links = body.get("links")
    pages = links.get("pages") if isinstance(links, dict) else None
    nxt = pages.get("next") if isinstance(pages, dict) else None
    return nxt if isinstance(nxt, str) and nxt.strip() else None


def _meta_total(body: dict[str, Any]) -> int | None:
    meta = body.get("meta")
    total = meta.get("total") if isinstance(meta, dict) else None
    try:
        return int(total) if total is not None else None
    except (TypeError, ValueError):
        return None


def _seconds_or_none(value: str | None) -> float | None:
    """A header number (`"3"`, `"1.5"`, `"1712000000"`) as seconds, or None when it is not a finite number."""
    if value is None:
        return None
    try:
        d = Decimal(value.strip())
    except InvalidOperation:
        return None
    if not d.is_finite():
        return None
    return int(d * 1000) / 1000  # millisecond precision is plenty for a wait


def _retry_after_seconds(value: str | None, clock: Callable[[], float]) -> float | None:
    """`retry-after` is seconds, or (rarely) an HTTP date."""
    if value is None:
        return None
    seconds = _seconds_or_none(value)
    if seconds is not None:
        return max(0.0, seconds)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - clock())


def _error_details(resp: httpx.Response) -> tuple[str, str | None]:
    """DigitalOcean errors are `{"id", "message", "request_id"}`; the request id may be a header instead."""
    request_id = resp.headers.get("x-request-id")
    msg = ""
    try:
        body = resp.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        ident, text = body.get("id"), body.get("message")
        msg = ": ".join(str(x) for x in (ident, text) if x)
        request_id = body.get("request_id") or request_id
    return msg[:500], request_id
