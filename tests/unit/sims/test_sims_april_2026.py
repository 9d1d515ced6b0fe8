"""The original system's verification numbers, read through the DigitalOcean simulator's HTTP API.

137 Invoice entries back to 2014; the April 2026 CSV has 33 lines totalling 8692 cents with GST 790; exactly
6 lines match a current resource by (kind, name), case-insensitively (a matcher written here from the
description shapes in the conventions, independent of the project's matcher).
"""

from __future__ import annotations

import csv
import io
import re
from decimal import Decimal

import httpx

from sims.scenario import APRIL_2026_INVOICE_UUID

# CSV product -> (inventory listing key, how the name is taken from the line)
PRODUCT_KIND = {
    "Droplets": "droplets",
    "Backups": "droplets",
    "Volumes": "volumes",
    "Managed Databases": "databases",
    "Databases": "databases",
    "Load Balancers": "load_balancers",
    "Kubernetes Clusters": "kubernetes_clusters",
    "App Platform": "apps",
    "Snapshots": "snapshots",
    "Floating IPs": "floating_ips",
    "Reserved IPs": "reserved_ips",
    "Container Registry": "registries",
}


def cents(usd: str) -> int:
    neg = usd.startswith("-")
    return int(Decimal(usd.lstrip("-").lstrip("$")) * 100) * (-1 if neg else 1)


def line_key(row: dict[str, str]) -> tuple[str, str] | None:
    """(listing key, lower-case name) of a line, or None for lines that name no inventoried resource."""
    product, desc, group = row["product"], row["description"], row.get("group_description") or ""
    if product not in PRODUCT_KIND:
        return None  # Spaces, Taxes, credits...
    if group and product in ("Droplets", "Kubernetes Clusters"):
        return "kubernetes_clusters", group.lower()
    if m := re.match(r"^Unused (?:Floating|Reserved) IP - (\S+)$", desc):
        return PRODUCT_KIND[product], m.group(1).lower()
    return PRODUCT_KIND[product], desc.split(" (", 1)[0].strip().lower()


def inventory_names(client: httpx.Client) -> set[tuple[str, str]]:
    paths = {
        "droplets": "/v2/droplets",
        "volumes": "/v2/volumes",
        "databases": "/v2/databases",
        "load_balancers": "/v2/load_balancers",
        "kubernetes_clusters": "/v2/kubernetes/clusters",
        "apps": "/v2/apps",
        "snapshots": "/v2/snapshots",
        "floating_ips": "/v2/floating_ips",
        "reserved_ips": "/v2/reserved_ips",
        "registries": "/v2/registries",
    }
    out: set[tuple[str, str]] = set()
    for key, path in paths.items():
        url: str | None = f"{path}?per_page=200"
        while url:
            body = client.get(url).json()
            for r in body[key]:
                if key == "apps":
                    name = r["spec"]["name"]
                elif key in ("floating_ips", "reserved_ips"):
                    name = r["ip"]
                else:
                    name = r["name"]
                out.add((key, str(name).lower()))
            url = body.get("links", {}).get("pages", {}).get("next")
    return out


def test_137_invoices_back_to_2014(do_client: httpx.Client) -> None:
    entries = []
    url: str | None = "/v2/customers/my/billing_history?per_page=50"
    while url:
        body = do_client.get(url).json()
        entries += body["billing_history"]
        url = body["links"]["pages"].get("next")
    invoices = [e for e in entries if e["type"] == "Invoice"]
    assert len(invoices) == 137
    assert len({e["invoice_uuid"] for e in invoices}) == 137
    assert min(e["date"] for e in invoices).startswith("2014-")
    assert {e["type"] for e in entries} >= {"Invoice", "Payment", "Credit", "Adjustment"}
    april = [e for e in invoices if e["invoice_uuid"] == APRIL_2026_INVOICE_UUID]
    assert april and april[0]["amount"] == "86.92" and april[0]["date"].startswith("2026-05-01")


def test_april_2026_csv_totals(do_client: httpx.Client) -> None:
    r = do_client.get(f"/v2/customers/my/invoices/{APRIL_2026_INVOICE_UUID}/csv")
    assert r.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert len(rows) == 33
    assert sum(cents(x["USD"]) for x in rows) == 8692
    tax = [x for x in rows if "gst" in x["description"].lower() or "tax" in x["description"].lower()]
    assert sum(cents(x["USD"]) for x in tax) == 790
    assert sum(cents(x["USD"]) for x in rows if x not in tax) == 7902


def test_exactly_6_of_33_lines_match_current_resources(do_client: httpx.Client) -> None:
    rows = list(
        csv.DictReader(io.StringIO(do_client.get(f"/v2/customers/my/invoices/{APRIL_2026_INVOICE_UUID}/csv").text))
    )
    inventory = inventory_names(do_client)
    matched = [x for x in rows if (k := line_key(x)) is not None and k in inventory]
    assert len(matched) == 6, [x["description"] for x in matched]
    assert sorted(x["description"] for x in matched) == sorted(
        [
            "web-01 (s-1vcpu-1gb)",
            "API-01 (s-1vcpu-2gb)",
            "worker-01 (s-1vcpu-1gb)",
            "vol-data-syd1 (syd1) 50GB",
            "db-postgresql-syd1-11111 (db-s-1vcpu-1gb)",
            "lb-prod (lb-small)",
        ]
    )
    unmatched = [x for x in rows if x not in matched]
    assert {x["product"] for x in unmatched} == {"Droplets", "Spaces Subscription", "Taxes"}


def test_older_invoices_have_csvs_in_both_formats(do_client: httpx.Client, april) -> None:
    headers = set()
    quoted_comma = False
    for inv in april.invoices:
        text = do_client.get(f"/v2/customers/my/invoices/{inv['invoice_uuid']}/csv").text
        headers.add(text.split("\n", 1)[0])
        quoted_comma |= '"Arcadia, Production"' in text
        rows = list(csv.DictReader(io.StringIO(text)))
        assert sum(cents(x["USD"]) for x in rows) == cents(inv["amount"]), inv
    columns = [h.split(",") for h in headers]
    assert any(len(c) == 8 and "category" not in c for c in columns)
    assert any(len(c) == 9 and "category" in c for c in columns)
    assert len({tuple(c) for c in columns if len(c) == 8}) >= 2  # a shifted column order too
    assert quoted_comma
