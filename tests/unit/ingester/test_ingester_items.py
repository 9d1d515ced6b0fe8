"""Joining CSV rows to DigitalOcean's invoice items: exact, period-relaxed, identical rows, no item; the ledger digest."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from services.ingester.csv_parser import parse_invoice_csv
from services.ingester.domain import build_events
from services.ingester.items import (
    content_sha256,
    evidence_part,
    items_sha256,
    join_items,
    keep_on_items_outage,
    parse_item,
)
from shared.events import InvoiceDiscovered

HEADER = "product,group_description,description,hours,start,end,USD,project_name,category\n"
CSV = HEADER + (
    "Droplets,,web-01 (s-1vcpu-1gb),720,2026-04-01 00:00:00 +0000,2026-05-01 00:00:00 +0000,$6.00,,iaas\n"
    "Droplets,,loadtest-01 (c-2),9,2026-04-10 13:00:00 +0000,2026-04-10 22:00:00 +0000,$0.56,,iaas\n"
    "Droplets,,loadtest-01 (c-2),9,2026-04-10 13:00:04 +0000,2026-04-10 22:00:04 +0000,$0.56,,iaas\n"
    "Droplets,k8s-staging,k8s-staging-pool-7x2kq (s-2vcpu-4gb),30,2026-04-05 00:00:00 +0000,"
    "2026-04-06 06:00:00 +0000,$1.07,,iaas\n"
    "Spaces Subscription,,Spaces Subscription,720,2026-04-01 00:00:00 +0000,2026-04-30 23:59:59 +0000,$5.00,,paas\n"
    "Taxes,,GST (10%),,2026-04-01 00:00:00 +0000,2026-04-30 23:59:59 +0000,$1.36,,iaas\n"
)


def item(description: str, amount: str, start: str, end: str, **kw: str) -> dict[str, str]:
    return {
        "product": kw.pop("product", "Droplets"),
        "group_description": kw.pop("group_description", ""),
        "description": description,
        "amount": amount,
        "start_time": start,
        "end_time": end,
        "duration": kw.pop("duration", ""),
        "duration_unit": "Hours",
        **kw,
    }


ITEMS = [
    # DigitalOcean's order need not be the CSV's.
    item("loadtest-01 (c-2)", "0.56", "2026-04-10T13:00:04Z", "2026-04-10T22:00:04Z", resource_id="512000002"),
    item("loadtest-01 (c-2)", "0.56", "2026-04-10T13:00:00Z", "2026-04-10T22:00:00Z", resource_id="512000001"),
    item(
        "web-01 (s-1vcpu-1gb)",
        "6.00",
        "2026-04-01T00:00:00Z",
        "2026-05-01T00:00:00Z",
        resource_id="401112201",
        resource_uuid="f0e1d2c3-0000-4000-8000-000000000001",
        duration="720",
        category="iaas",
    ),
    item(
        "k8s-staging-pool-7x2kq (s-2vcpu-4gb)",
        "1.07",
        "2026-04-05T00:00:00Z",
        "2026-04-06T06:00:00Z",
        group_description="k8s-staging",
        resource_uuid="c1a2",
    ),
    # A Spaces subscription item has no ids at all; its end is the next month's first second.
    item("Spaces Subscription", "5.00", "2026-04-01T00:00:00Z", "2026-05-01T00:00:00Z", product="Spaces Subscription"),
    item("GST (10%)", "1.36", "2026-04-01T00:00:00Z", "2026-04-30T23:59:59Z", product="Taxes"),
]


def parsed():
    return parse_invoice_csv(CSV.encode())


def test_each_row_gets_its_own_item_by_product_description_amount_and_period() -> None:
    rows = join_items(parsed().lines, [parse_item(i) for i in ITEMS])
    assert [r.join for r in rows] == ["exact"] * 6
    assert [r.item.resource_id if r.item else None for r in rows] == [
        "401112201",
        "512000001",  # two droplets sharing a name: told apart by their periods
        "512000002",
        None,
        None,
        None,
    ]
    assert rows[3].item is not None and rows[3].item.resource_uuid == "c1a2"
    assert rows[0].item is not None and (rows[0].item.duration, rows[0].item.duration_unit) == ("720", "Hours")


def test_a_differing_period_joins_only_when_one_item_is_left() -> None:
    moved = [dict(i) for i in ITEMS]
    moved[2]["start_time"] = "2026-04-01T00:00:01Z"
    rows = join_items(parsed().lines, [parse_item(i) for i in moved])
    assert rows[0].join == "period_relaxed" and rows[0].item is not None and rows[0].item.resource_id == "401112201"


def test_identical_rows_are_paired_in_order_and_say_so() -> None:
    same = [
        item("ci (s-1vcpu-1gb)", "0.10", "2026-04-01T00:00:00Z", "2026-04-01T10:00:00Z", resource_id="1"),
        item("ci (s-1vcpu-1gb)", "0.10", "2026-04-01T00:00:00Z", "2026-04-01T10:00:00Z", resource_id="2"),
    ]
    row = "Droplets,,ci (s-1vcpu-1gb),10,2026-04-01 00:00:00 +0000,2026-04-01 10:00:00 +0000,$0.10,,iaas\n"
    p = parse_invoice_csv((HEADER + row + row).encode())
    rows = join_items(p.lines, [parse_item(i) for i in same])
    assert [r.join for r in rows] == ["identical_rows"] * 2
    assert sorted(r.item.resource_id for r in rows if r.item) == ["1", "2"]


def test_a_row_without_its_item_keeps_no_ids_and_a_note() -> None:
    rows = join_items(parsed().lines, [parse_item(i) for i in ITEMS[:2]])
    assert rows[0].join == "no_item" and rows[0].item is None and "no item" in rows[0].note


def test_the_csv_stays_the_source_of_amounts_and_rows() -> None:
    p = parsed()
    wrong = [dict(i) for i in ITEMS]
    wrong[2]["amount"] = "999.00"  # an item disagreeing on the amount joins nothing and changes nothing
    joined = join_items(p.lines, [parse_item(i) for i in wrong])
    disc = InvoiceDiscovered(
        invoice_uuid="u", period="2026-04-01", amount_minor=1055, date=datetime(2026, 5, 1, tzinfo=UTC)
    )
    lines, end = build_events(disc, p, 1, None, joined)
    assert [ln.amount_minor for ln in lines] == [ln.amount_minor for ln in p.lines]
    assert end.amount_gross_minor == p.totals.gross_minor and lines[0].item_join == "no_item"
    assert (lines[1].resource_id, lines[1].item_join) == ("512000001", "exact")


def test_ledger_digest_keeps_the_reconciliation_readable() -> None:
    ev = "a" * 64
    items = [parse_item(i) for i in ITEMS]
    with_items = content_sha256(ev, items_sha256(items))
    assert content_sha256(ev, None) == ev and evidence_part(with_items) == ev and with_items != ev
    assert items_sha256(reversed(items)) == items_sha256(items)
    latest = {"csv_sha256": "c", "parser_version": "p", "state": "committed", "evidence_sha256": with_items}
    assert keep_on_items_outage(latest, "c", "p", ev)
    assert not keep_on_items_outage(latest, "c", "p", "b" * 64)  # the reconciliation moved: a new revision
    assert not keep_on_items_outage({**latest, "state": "pending"}, "c", "p", ev)
    assert not keep_on_items_outage(None, "c", "p", ev)


@given(st.permutations(list(range(len(ITEMS)))), st.integers(0, len(ITEMS)))
def test_property_the_join_never_depends_on_item_order_and_uses_each_item_once(order: list[int], drop: int) -> None:
    chosen = [ITEMS[i] for i in order][drop:]
    rows = join_items(parsed().lines, [parse_item(i) for i in chosen])
    assert len(rows) == 6
    used = [id(r.item) for r in rows if r.item is not None]
    assert len(used) == len(set(used)) <= len(chosen)
    ids = {r.item.description + (r.item.resource_id or "") for r in rows if r.item is not None and r.join == "exact"}
    full = {r.item.description + (r.item.resource_id or "") for r in join_items(parsed().lines, map(parse_item, ITEMS))}
    assert ids <= full
