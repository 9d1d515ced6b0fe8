"""The simulator serves what exact attribution needs: items with ids on some lines, GPU droplets only under
`type=gpus`, and a past inventory to switch to (an inventory's history)."""

from __future__ import annotations

from decimal import Decimal

import httpx

from sims.scenario import APRIL_2026_INVOICE_UUID


def _all(client: httpx.Client, url: str, key: str) -> list[dict]:
    out: list[dict] = []
    next_url: str | None = url
    while next_url:
        body = client.get(next_url).json()
        out += body[key]
        next_url = body["links"]["pages"].get("next")
    return out


def test_april_items_have_ids_on_some_lines_and_the_csvs_amounts(do_client: httpx.Client) -> None:
    items = _all(do_client, f"/v2/customers/my/invoices/{APRIL_2026_INVOICE_UUID}?per_page=7", "invoice_items")
    assert len(items) == 33
    assert sum(Decimal(i["amount"]) for i in items) == Decimal("86.92")
    with_ids = [i for i in items if i.get("resource_id") or i.get("resource_uuid")]
    assert len(with_ids) == 27  # not on Spaces, tax, nor three destroyed droplets
    assert not any(
        i.get("resource_id") or i.get("resource_uuid")
        for i in items
        if i["product"] != "Droplets" and i["product"] not in ("Volumes", "Managed Databases", "Load Balancers")
    )
    loadtests = sorted(i["resource_id"] for i in items if i["description"] == "loadtest-01 (c-2)")
    assert loadtests == ["512000001", "512000002"]  # two droplets, one name


def test_gpu_droplets_only_under_type_gpus_and_the_past_inventory(do_client: httpx.Client) -> None:
    assert do_client.get("/_sim/inventory").json() == {"inventory": "current", "has_past": True}
    try:
        assert do_client.put("/_sim/inventory", json={"inventory": "past"}).json() == {"inventory": "past"}
        plain = _all(do_client, "/v2/droplets", "droplets")
        gpus = _all(do_client, "/v2/droplets?type=gpus", "droplets")
        assert [d["name"] for d in gpus] == ["ml-train-gpu-01"]
        assert "ml-train-gpu-01" not in {d["name"] for d in plain}
        assert {"loadtest-01", "staging-web", "web-01"} <= {d["name"] for d in plain}
        clusters = _all(do_client, "/v2/kubernetes/clusters", "kubernetes_clusters")
        assert [c["name"] for c in clusters] == ["k8s-staging"]
    finally:
        assert do_client.put("/_sim/inventory", json={"inventory": "current"}).status_code == 200
    assert "staging-web" not in {d["name"] for d in _all(do_client, "/v2/droplets", "droplets")}
    assert _all(do_client, "/v2/droplets?type=gpus", "droplets") == []
    assert do_client.put("/_sim/inventory", json={"inventory": "yesterday"}).status_code == 422
