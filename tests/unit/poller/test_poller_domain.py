"""Pure poller logic: events from DigitalOcean JSON, invoice periods, resources, tombstones, schedules."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.poller import domain
from services.poller.schedule import Schedule, ScheduleError
from shared.events import decode, encode, event_id_for

BAL = {
    "month_to_date_balance": "23.44",
    "account_balance": "12.23",
    "month_to_date_usage": "11.21",
    "generated_at": "2019-07-09T15:01:12Z",
}


def test_balance_event_in_minor_units() -> None:
    ev = domain.balance_event(BAL)
    assert (ev.month_to_date_balance_minor, ev.account_balance_minor, ev.month_to_date_usage_minor) == (
        2344,
        1223,
        1121,
    )
    assert ev.generated_at == datetime(2019, 7, 9, 15, 1, 12, tzinfo=UTC)
    assert ev.raw["account_balance"] == "12.23"


def test_balance_ignores_non_string_extras_and_rejects_bad_amounts() -> None:
    ev = domain.balance_event(BAL | {"extra": {"nested": 1}})
    assert "extra" not in ev.raw
    with pytest.raises(domain.BadEntry):
        domain.balance_event(BAL | {"account_balance": "12,3.4"})
    with pytest.raises(domain.BadEntry):
        domain.balance_event({k: v for k, v in BAL.items() if k != "generated_at"})


def test_same_data_same_event_id_whatever_the_poll_time() -> None:
    a = domain.balance_event(dict(BAL))
    b = domain.balance_event(dict(BAL))
    e1, _ = decode(encode(a, "acme", occurred_at=datetime(2026, 1, 1, tzinfo=UTC)))
    e2, _ = decode(encode(b, "acme", occurred_at=datetime(2026, 5, 5, tzinfo=UTC)))
    assert e1.event_id == e2.event_id
    assert event_id_for(a, "acme") != event_id_for(a, "other-account")
    changed = domain.balance_event(BAL | {"month_to_date_usage": "11.22"})
    assert event_id_for(changed, "acme") != event_id_for(a, "acme")


HIST_INVOICE = {
    "description": "Invoice for May 2018",
    "amount": "12.34",
    "invoice_id": "123",
    "invoice_uuid": "example-uuid",
    "date": "2018-06-01T08:44:38Z",
    "type": "Invoice",
}
HIST_PAYMENT = {
    "description": "Payment (MC 2018)",
    "amount": "-12.34",
    "date": "2018-06-02T08:44:38Z",
    "type": "Payment",
}


def test_history_entries() -> None:
    inv = domain.history_entry(HIST_INVOICE)
    pay = domain.history_entry(HIST_PAYMENT)
    assert inv.amount_minor == 1234 and inv.invoice_uuid == "example-uuid" and domain.is_invoice(inv)
    assert pay.amount_minor == -1234 and pay.invoice_uuid is None and not domain.is_invoice(pay)
    with pytest.raises(domain.BadEntry):
        domain.history_entry(HIST_PAYMENT | {"type": None})
    with pytest.raises(domain.BadEntry):
        domain.history_entry(HIST_PAYMENT | {"date": "yesterday"})


def test_invoice_discovered_period_sources_in_order() -> None:
    entry = domain.history_entry(HIST_INVOICE)
    assert domain.invoice_discovered(entry, "2018-05").period == "2018-05-01"  # listing
    assert domain.invoice_discovered(entry).period == "2018-05-01"  # description
    plain = domain.history_entry(HIST_INVOICE | {"description": "Invoice"})
    assert domain.invoice_discovered(plain).period == "2018-05-01"  # month before the date
    ev = domain.invoice_discovered(entry, "2018-05")
    assert (ev.invoice_uuid, ev.invoice_id, ev.amount_minor) == ("example-uuid", "123", 1234)


def test_invoice_entry_without_uuid_is_a_bad_entry() -> None:
    entry = domain.history_entry({k: v for k, v in HIST_INVOICE.items() if k != "invoice_uuid"})
    with pytest.raises(domain.BadEntry, match="invoice_uuid"):
        domain.invoice_discovered(entry)


@pytest.mark.parametrize(
    ("text", "period"),
    [
        ("Invoice for May 2018", "2018-05-01"),
        ("invoice for DECEMBER 2014", "2014-12-01"),
        ("Invoice for Sept 2020", "2020-09-01"),
        ("Invoice for Jan. 2021", "2021-01-01"),
        ("Invoice for Maytember 2018", None),
        ("Payment (MC 2018)", None),
        ("", None),
    ],
)
def test_period_from_description(text: str, period: str | None) -> None:
    assert domain.period_from_description(text) == period


@pytest.mark.parametrize(
    ("value", "period"),
    [("2026-04", "2026-04-01"), ("2026-04-01", "2026-04-01"), ("2026-13", None), ("April", None), (None, None)],
)
def test_period_from_listing(value, period) -> None:
    assert domain.period_from_listing(value) == period


@given(st.dates(min_value=date(1971, 1, 1), max_value=date(2200, 12, 31)))
def test_period_before_is_the_first_of_the_previous_month(d: date) -> None:
    p = date.fromisoformat(domain.period_before(d))
    assert p.day == 1
    assert p < d.replace(day=1)
    assert (d.year * 12 + d.month) - (p.year * 12 + p.month) == 1


@given(st.integers(1970, 2999), st.integers(1, 12), st.booleans())
def test_description_round_trip(year: int, month: int, short: bool) -> None:
    name = date(2000, month, 1).strftime("%b" if short else "%B")
    assert domain.period_from_description(f"Invoice for {name} {year}") == f"{year:04d}-{month:02d}-01"


@given(st.text(max_size=60))
def test_description_parser_never_crashes(text: str) -> None:
    out = domain.period_from_description(text)
    assert out is None or (len(out) == 10 and out.endswith("-01"))


# ------------------------------------------------------------------------------------------ resources
@pytest.mark.parametrize(
    ("kind", "raw", "rid", "name", "region"),
    [
        (
            "droplet",
            {"id": 123, "name": "web-01", "size_slug": "s-1vcpu-1gb", "region": {"slug": "nyc3"}},
            "123",
            "web-01",
            "nyc3",
        ),
        (
            "volume",
            {"id": "v-uuid", "name": "volume-sfo2-01", "region": {"slug": "sfo2"}},
            "v-uuid",
            "volume-sfo2-01",
            "sfo2",
        ),
        ("database", {"id": "db-uuid", "name": "db-pg", "engine": "pg", "region": "fra1"}, "db-uuid", "db-pg", "fra1"),
        ("load_balancer", {"id": "lb", "name": "lb-prod", "region": {"slug": "ams3"}}, "lb", "lb-prod", "ams3"),
        ("kubernetes_cluster", {"id": "k", "name": "k8s-prod", "region": "nyc1"}, "k", "k8s-prod", "nyc1"),
        ("app", {"id": "a", "spec": {"name": "my-app"}, "region": {"slug": "ams"}}, "a", "my-app", "ams"),
        (
            "snapshot",
            {"id": "s", "name": "web-01-1712000000", "regions": ["nyc3", "ams3"]},
            "s",
            "web-01-1712000000",
            "ams3,nyc3",
        ),
        ("floating_ip", {"ip": "1.1.1.1", "droplet": None, "region": {"slug": "nyc3"}}, "1.1.1.1", "1.1.1.1", "nyc3"),
        ("reserved_ip", {"ip": "1.2.3.4", "droplet": {"id": 9}}, "1.2.3.4", "1.2.3.4", ""),
        ("registry", {"name": "acme-reg", "region": "fra1"}, "acme-reg", "acme-reg", "fra1"),
    ],
)
def test_resource_identity_per_kind(kind, raw, rid, name, region) -> None:
    r = domain.resource_from(kind, raw)
    assert (r.kind, r.resource_id, r.name, r.region) == (kind, rid, name, region)


def test_volatile_fields_do_not_change_the_resource_id() -> None:
    a = {"id": 1, "name": "web", "size_slug": "s", "status": "active", "locked": False, "networks": {"v4": ["x"]}}
    b = a | {"status": "off", "locked": True, "networks": {"v4": ["y"]}, "memory": 1}
    assert event_id_for(domain.resource_from("droplet", a), "acc") == event_id_for(
        domain.resource_from("droplet", b), "acc"
    )
    c = a | {"size_slug": "s-2"}
    assert event_id_for(domain.resource_from("droplet", c), "acc") != event_id_for(
        domain.resource_from("droplet", a), "acc"
    )
    reg = {"name": "r", "storage_usage_bytes": 1}
    assert domain.resource_from("registry", reg) == domain.resource_from("registry", reg | {"storage_usage_bytes": 99})
    k8s = {"id": "k", "name": "k", "node_pools": [{"name": "b", "size": "s", "count": 3}, {"name": "a", "size": "s"}]}
    assert domain.resource_from("kubernetes_cluster", k8s) == domain.resource_from(
        "kubernetes_cluster", k8s | {"node_pools": [{"name": "a", "size": "s"}, {"name": "b", "size": "s", "count": 5}]}
    )


@pytest.mark.parametrize(
    ("kind", "raw"),
    [("droplet", {"name": "x"}), ("droplet", {"id": 1}), ("floating_ip", {}), ("registry", {}), ("app", {"id": "a"})],
)
def test_unusable_resources_are_bad_entries(kind, raw) -> None:
    with pytest.raises(domain.BadEntry):
        domain.resource_from(kind, raw)


def test_tombstones_only_for_listed_kinds() -> None:
    prev = {"droplet": {"1", "2"}, "volume": {"v1"}, "app": {"a"}}
    cur = {"droplet": {"1", "3"}, "volume": set()}
    gone = domain.tombstones(prev, cur, listed_kinds={"droplet"})  # volume listing failed, app not listed
    assert gone == [domain.Gone("droplet", "2")]
    assert domain.tombstones(prev, cur, {"droplet", "volume"}) == [
        domain.Gone("droplet", "2"),
        domain.Gone("volume", "v1"),
    ]
    assert domain.tombstones({}, cur, {"droplet"}) == []
    assert domain.resource_key("acme", "droplet", "2") == "acme:droplet:2"


# ------------------------------------------------------------------------------------------ schedule
def test_schedule_next_ticks_and_shared_ticks() -> None:
    now = datetime(2026, 4, 1, 2, 0, 30, tzinfo=UTC)
    s = Schedule({"balance": "7 * * * *", "history": "23 2 * * *", "resources": "*/30 * * * *"}, now)
    tick, jobs = s.next_due()
    assert (tick, jobs) == (datetime(2026, 4, 1, 2, 7, tzinfo=UTC), ["balance"])
    s.advance(jobs, tick, tick)
    assert s.next_due() == (datetime(2026, 4, 1, 2, 23, tzinfo=UTC), ["history"])
    s2 = Schedule({"balance": "0 * * * *", "resources": "*/30 * * * *"}, now)
    assert s2.next_due() == (datetime(2026, 4, 1, 2, 30, tzinfo=UTC), ["resources"])
    s2.advance(["resources"], datetime(2026, 4, 1, 2, 30, tzinfo=UTC), datetime(2026, 4, 1, 2, 31, tzinfo=UTC))
    assert s2.next_due() == (datetime(2026, 4, 1, 3, 0, tzinfo=UTC), ["balance", "resources"])


def test_schedule_skips_ticks_missed_during_a_long_poll() -> None:
    t0 = datetime(2026, 4, 1, 0, 0, tzinfo=UTC)
    s = Schedule({"balance": "*/5 * * * *"}, t0)
    tick, jobs = s.next_due()
    s.advance(jobs, tick, datetime(2026, 4, 1, 0, 17, tzinfo=UTC))  # the poll took 12 minutes
    assert s.next_due()[0] == datetime(2026, 4, 1, 0, 20, tzinfo=UTC)


def test_schedule_seconds_field_and_invalid_cron() -> None:
    s = Schedule({"balance": "* * * * * */2"}, datetime(2026, 4, 1, 0, 0, 1, tzinfo=UTC))
    assert s.next_due()[0] == datetime(2026, 4, 1, 0, 0, 2, tzinfo=UTC)
    with pytest.raises(ScheduleError, match="history"):
        Schedule({"history": "every day"}, datetime(2026, 4, 1, tzinfo=UTC))


def test_previous_tick_is_what_a_catch_up_makes_up_for() -> None:
    s = Schedule({"balance": "7 * * * *", "history": "23 2 * * *"}, datetime(2026, 5, 14, 10, 0, tzinfo=UTC))
    assert s.previous("history", datetime(2026, 5, 14, 10, 0, tzinfo=UTC)) == datetime(2026, 5, 14, 2, 23, tzinfo=UTC)
    assert s.previous("history", datetime(2026, 5, 14, 1, 0, tzinfo=UTC)) == datetime(2026, 5, 13, 2, 23, tzinfo=UTC)
    assert s.previous("balance", datetime(2026, 5, 14, 10, 6)) == datetime(2026, 5, 14, 9, 7, tzinfo=UTC)  # naive: UTC
