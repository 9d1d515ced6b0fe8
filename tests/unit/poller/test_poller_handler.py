"""The handler (one poll tick per job) and the Poller's orchestration with a MockTransport client, a fake store and a
fake producer."""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from services.poller import handler
from services.poller.domain import Known
from services.poller.poller import Poller
from shared.digitalocean import (
    RESOURCE_ENDPOINTS,
    DigitalOceanAuthError,
    DigitalOceanClient,
    DigitalOceanInterrupted,
    interruptible_sleep,
)
from shared.events import decode
from shared.kafka import DeliveryError, StopSignal
from shared.kafka.records import Out
from shared.settings import DigitalOceanAccount, Settings

BASE = "https://api.example.test"

HISTORY = [
    {
        "description": "Invoice for May 2018",
        "amount": "12.34",
        "invoice_id": "1",
        "invoice_uuid": "u-may",
        "date": "2018-06-01T08:44:38Z",
        "type": "Invoice",
    },
    {"description": "Payment", "amount": "-12.34", "date": "2018-06-02T08:44:38Z", "type": "Payment"},
    {
        "description": "Invoice",
        "amount": "1.00",
        "invoice_uuid": "u-jun",
        "date": "2018-07-01T00:00:00Z",
        "type": "Invoice",
    },
    {"description": "broken", "amount": "lots", "date": "2018-07-02T00:00:00Z", "type": "Credit"},
]
RESOURCES = {
    "droplets": [{"id": 1, "name": "web-01", "region": {"slug": "nyc3"}}, {"id": 2, "name": "web-02"}],
    "volumes": [{"id": "v1", "name": "vol"}],
    "registries": [{"name": "reg"}],
}


def do_handler(*, invoices_status: int = 200, fail_paths: Mapping[str, int] | None = None, resources=None):
    resources = RESOURCES if resources is None else resources

    def handle(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        for prefix, status in (fail_paths or {}).items():
            if path.startswith(prefix):
                return httpx.Response(status, json={"id": "x", "message": "nope"})
        if path == "/v2/customers/my/billing_history":
            return httpx.Response(200, json={"billing_history": HISTORY, "links": {"pages": {}}})
        if path == "/v2/customers/my/invoices":
            if invoices_status != 200:
                return httpx.Response(invoices_status, json={"id": "not_found"})
            return httpx.Response(200, json={"invoices": [{"invoice_uuid": "u-jun", "invoice_period": "2018-06"}]})
        if path == "/v2/customers/my/balance":
            return httpx.Response(
                200,
                json={
                    "month_to_date_balance": "1.00",
                    "account_balance": "0.50",
                    "month_to_date_usage": "0.50",
                    "generated_at": "2026-05-01T00:00:00Z",
                },
            )
        for ep in RESOURCE_ENDPOINTS.values():
            if path == ep.path:
                listed = resources.get(ep.key, [])
                if ep.key == "droplets":  # as DigitalOcean: GPU droplets only with type=gpus
                    gpus = request.url.params.get("type") == "gpus"
                    listed = [d for d in listed if str(d.get("size_slug", "")).startswith("gpu-") is gpus]
                return httpx.Response(200, json={ep.key: listed})
        return httpx.Response(404, json={"id": "not_found"})

    return handle


def client(handler) -> DigitalOceanClient:
    return DigitalOceanClient(BASE, "tok", transport=httpx.MockTransport(handler), max_retries=0)


def decoded(outs: list[Out]):
    return [(o.topic, o.key, decode(o.value)[1] if o.value is not None else None) for o in outs]


# ------------------------------------------------------------------------------------------ handler
def test_poll_history_events_periods_and_bad_entries() -> None:
    out = handler.poll_history(client(do_handler()), "acme", "p.", "USD")
    got = decoded(out.outs)
    history = [d for t, _, d in got if t == "p.billing.history.v1"]
    discovered = {k: d for t, k, d in got if t == "p.billing.invoice-discovered.v1"}
    assert len(history) == 3  # the unreadable entry is skipped, and reported
    assert set(discovered) == {"u-may", "u-jun"}
    assert discovered["u-may"].period == "2018-05-01"  # from the description
    assert discovered["u-jun"].period == "2018-06-01"  # from the /invoices listing
    assert out.partial and out.detail["skipped_count"] == 1 and "amount" in out.detail["skipped"][0]


def test_poll_history_without_invoices_listing_derives_periods() -> None:
    out = handler.poll_history(client(do_handler(invoices_status=404)), "acme", "", "USD")
    discovered = {k: d for t, k, d in decoded(out.outs) if t.endswith("invoice-discovered.v1")}
    assert discovered["u-jun"].period == "2018-06-01"  # the month before 2018-07-01


def test_a_resource_gone_is_sent_as_history_not_forgotten() -> None:
    """Known from a previous sync: a record with exists=False and its seen times (same event when re-sent)."""
    t1, t2 = datetime(2026, 4, 2, tzinfo=UTC), datetime(2026, 4, 20, tzinfo=UTC)
    last = {
        "kind": "droplet",
        "resource_id": "3",
        "name": "old-box",
        "region": "syd1",
        "attributes": {"created_at": "2026-04-01T00:00:00Z"},
    }
    known = {"droplet": {"3": Known("old-box", t1, t2, last)}, "registry": {"old": Known("old", t1, t2, None)}}
    out = handler.poll_resources(client(do_handler()), "acme", "", known)
    gone = {k: d for _, k, d in decoded(out.outs) if d is not None and not d.exists}
    r = gone["acme:droplet:3"]
    assert (r.name, r.region, r.first_seen, r.last_seen, r.attributes["created_at"]) == (
        "old-box",
        "syd1",
        t1,
        t2,
        "2026-04-01T00:00:00Z",
    )
    assert gone["acme:registry:old"].name == "old"  # stored before history: its name and seen times
    again = handler.poll_resources(client(do_handler()), "acme", "", known)
    ids = [decode(o.value)[0].event_id for o in out.outs if o.value is not None]
    assert [decode(o.value)[0].event_id for o in again.outs if o.value is not None] == ids  # the same events
    assert not any(o.value is None for o in out.outs)  # no tombstone


def test_gpu_droplets_are_inventoried_from_their_own_listing() -> None:
    gpu = {"id": 77, "name": "gpu-box", "size_slug": "gpu-h100x1-80gb", "region": {"slug": "tor1"}}
    resources = {**RESOURCES, "droplets": [*RESOURCES.get("droplets", []), gpu]}
    out = handler.poll_resources(client(do_handler(resources=resources)), "acme", "", {})
    keys = [k for _, k, d in decoded(out.outs) if d is not None]
    assert "acme:gpu_droplet:77" in keys and "acme:droplet:77" not in keys


def test_poll_resources_tombstones_partial_failure_and_bad_entries() -> None:
    previous = {"droplet": {"1", "2", "3"}, "volume": {"v1", "v0"}, "registry": {"old"}}
    out = handler.poll_resources(client(do_handler(fail_paths={"/v2/volumes": 500})), "acme", "", previous)
    got = decoded(out.outs)
    tombstones = [k for _, k, d in got if d is None]
    assert tombstones == ["acme:droplet:3", "acme:registry:old"]  # none for volumes: the listing failed
    assert {k for _, k, d in got if d is not None} == {"acme:droplet:1", "acme:droplet:2", "acme:registry:reg"}
    assert out.partial and set(out.detail["failed_kinds"]) == {"volume"}
    assert "volume" not in out.listed_kinds and "droplet" in out.listed_kinds

    bad = dict(RESOURCES, droplets=[{"id": 1, "name": "web-01"}, {"name": "no-id"}])
    out = handler.poll_resources(client(do_handler(resources=bad)), "acme", "", previous)
    assert "droplet" not in out.listed_kinds  # incomplete listing: no tombstones for droplets
    assert [k for _, k, d in decoded(out.outs) if d is None] == ["acme:registry:old", "acme:volume:v0"]


def test_a_listing_cut_short_of_its_total_tombstones_nothing_of_its_kind() -> None:
    """Page 1 of droplets with `links` but no `next` while meta.total says 3: droplet 2 was only not listed,
    it is not gone. (The walk used to stop there and tombstone droplet 2.)"""
    base = do_handler()

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v2/droplets":
            page = [{"id": 1, "name": "web-01"}]
            return httpx.Response(200, json={"droplets": page, "links": {"pages": {}}, "meta": {"total": 3}})
        return base(request)

    previous = {"droplet": {"1", "2"}, "registry": {"reg"}}
    out = handler.poll_resources(client(handle), "acme", "", previous)
    tombstones = [k for _, k, d in decoded(out.outs) if d is None]
    assert "acme:droplet:2" not in tombstones
    assert "droplet" not in out.listed_kinds and out.partial
    assert "1 of 3" in out.detail["failed_kinds"]["droplet"]


def test_poll_resources_all_kinds_failing_raises_the_first_error() -> None:
    with pytest.raises(DigitalOceanAuthError):
        handler.poll_resources(client(do_handler(fail_paths={"/v2/": 401})), "acme", "", {})


# ------------------------------------------------------------------------------------------ orchestration
class FakeStore:
    def __init__(self, *, locked: bool = False) -> None:
        self.locked = locked
        self.finished: list[tuple] = []
        self.claimed: set[tuple] = set()
        self.inventory: dict[str, Any] = {}
        self.log: list[str] = []

    @contextmanager
    def lock(self, job: str, account: str, *, wait_s: float | None = None):
        yield not self.locked

    def claim(self, job, account, tick, replica) -> bool:
        if tick is not None and (job, account, tick) in self.claimed:
            return False
        self.claimed.add((job, account, tick))
        return True

    def finish(self, job, account, status, *, events, detail, error=None) -> None:
        self.log.append(f"finish:{status}")
        self.finished.append((job, account, status, events, error))

    def previous_inventory(self, account):
        return {}

    def known_inventory(self, account):
        return {}

    def save_inventory(self, account, current, listed) -> None:
        self.log.append("save_inventory")
        self.inventory[account] = {k: set(v) for k, v in current.items()}


class FakeProducer:
    def __init__(self, store: FakeStore, *, fail: bool = False) -> None:
        self.store, self.fail, self.outs = store, fail, []

    def produce_many(self, outs) -> None:
        self.outs.extend(outs)

    def flush(self, timeout: float = 30.0) -> None:
        self.store.log.append("flush")
        if self.fail:
            from confluent_kafka import KafkaError

            raise DeliveryError(KafkaError(KafkaError._MSG_TIMED_OUT))


def make_poller(store: FakeStore, producer=None, **handler_kw) -> Poller:
    settings = Settings(
        _env_file=None,
        digitalocean_accounts=[
            DigitalOceanAccount(name="broken", token=SecretStr("bad")),
            DigitalOceanAccount(name="acme", token=SecretStr("good")),
        ],
    )

    def factory(account: DigitalOceanAccount) -> DigitalOceanClient:
        if account.name == "broken":
            return client(do_handler(fail_paths={"/v2/": 401}))
        return client(do_handler(**handler_kw))

    return Poller(settings, producer or FakeProducer(store), store, factory, replica="r1")


def test_one_failing_account_does_not_stop_the_others_and_flush_precedes_success() -> None:
    store = FakeStore()
    poller = make_poller(store)
    results = poller.poll("all")
    status = {(r.job, r.account): r.status for r in results}
    assert status == {
        ("balance", "broken"): "failed",
        ("history", "broken"): "failed",
        ("resources", "broken"): "failed",
        ("balance", "acme"): "ok",
        ("history", "acme"): "partial",  # one unreadable history entry
        ("resources", "acme"): "ok",
    }
    assert all("HTTP 401" in r.error for r in results if r.failed)
    # resources: flushed, then inventory saved, then recorded
    i = store.log.index("save_inventory")
    assert store.log[i - 1] == "flush" and store.log[i + 1] == "finish:ok"
    assert store.inventory["acme"]["droplet"] == {"1", "2"}


def test_delivery_failure_is_a_failed_poll_and_no_inventory_is_saved() -> None:
    store = FakeStore()
    poller = make_poller(store, FakeProducer(store, fail=True))
    [result] = poller.poll("resources", account="acme")
    assert result.failed and "DeliveryError" in result.error
    assert "save_inventory" not in store.log


def test_locked_or_already_claimed_ticks_are_skipped() -> None:
    from datetime import UTC, datetime

    assert {r.status for r in make_poller(FakeStore(locked=True)).poll("balance")} == {"skipped"}
    store = FakeStore()
    poller = make_poller(store)
    tick = datetime(2026, 1, 1, tzinfo=UTC)
    assert [r.status for r in poller.poll("balance", account="acme", tick=tick)] == ["ok"]
    assert [r.status for r in poller.poll("balance", account="acme", tick=tick)] == ["skipped"]


def test_unknown_job_and_account() -> None:
    poller = make_poller(FakeStore())
    with pytest.raises(ValueError, match="unknown poll job"):
        poller.poll("everything")
    with pytest.raises(ValueError, match="no DigitalOcean account named 'x'"):
        poller.poll("balance", account="x")


def test_stop_interrupts_retry_waits() -> None:
    stop = StopSignal()
    sleep = interruptible_sleep(stop)
    sleep(0.0)  # not stopping: returns
    stop.set()
    with pytest.raises(DigitalOceanInterrupted):
        sleep(30.0)
