"""Exact attribution of April 2026, end to end through the real stages (issue 17's "done when").

The DigitalOcean simulator serves `april-2026`: first its past inventory (`resources_past.json`: droplets
destroyed since, one renamed, two sharing a name, a GPU droplet listed only under `type=gpus`, the deleted
Kubernetes cluster), then the current one, so the poller turns what disappeared into history records. Then the
billing data: the ingester joins the April CSV to its items (ids on some lines), the matcher (its own faust
process) attributes, the projector serves, and the admin API answers:

- 6 of 33 lines attributed to resources that exist now (the seed's figure, `matched_count`), 30 attributed at all;
- all 24 destroyed droplet lines (21 droplets, 3 nodes of the deleted cluster) attributed through history and items;
- the renamed droplet and the two droplets named `loadtest-01` attributed by id; the GPU droplet's line attributed;
- the attribution table (`/rollups?by=rule`), a destroyed droplet's cost over months, and the invoice pushed
  with the same money as before (net 7902, tax 790, gross 8692).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from services.api import main as api_main
from services.api.cli import mint_token
from services.finance_pusher import main as pusher_main
from services.ingester import main as ingester_main
from services.matcher.app import inventory_read
from services.poller import main as poller_main
from services.projector import main as projector
from shared.db import connect
from shared.kafka import StopSignal
from shared.settings import Settings
from sims.do.app import create_app as do_app
from sims.finance.app import create_app as finance_app
from sims.scenario import APRIL_2026_INVOICE_UUID, load_scenario
from sims.server import run_in_thread
from tests.helpers import ServiceProcess, wait_until

API_SECRET = "attrib-api-secret-0123456789abcdef-0123456789abcdef-0123456789ab"
FINANCE_SECRET = "attrib-finance-secret-0123456789abcdef-0123456789abcdef-0123456789abcdef"
DO_TOKEN = "dop_v1_" + "cd" * 32

# The attribution table of April 2026: (rule, exists now) → lines.
TABLE = {
    ("resource_id", True): 6,
    ("resource_id", False): 7,
    ("item_resource_id", False): 14,
    ("name_period_history", False): 3,
    (None, None): 3,
}


@pytest.fixture
def pipeline(settings: Settings, tmp_path: Path) -> Iterator[Settings]:
    do = run_in_thread(do_app(load_scenario("april-2026")))
    finance = run_in_thread(finance_app(settings.database_url, FINANCE_SECRET, algorithm="HS512"))
    s = settings.model_copy(
        update={
            "digitalocean_api_url": do.url,
            "digitalocean_token": SecretStr(DO_TOKEN),
            "skyai_finance_url": finance.url,
            "skyai_finance_jwt_secret": SecretStr(FINANCE_SECRET),
            "api_jwt_secret": SecretStr(API_SECRET),
        }
    )
    threads: list[tuple[threading.Thread, StopSignal]] = []

    def start(target: Callable[..., None]) -> None:
        stop = StopSignal()
        t = threading.Thread(target=target, args=(s, stop), daemon=True)
        t.start()
        threads.append((t, stop))

    matcher = ServiceProcess("matcher", s, tmp_path).start()
    try:
        for target in (projector.run, ingester_main.run, pusher_main.run):
            start(target)
        poller, close = poller_main.build(s)
        sim = httpx.Client(base_url=do.url, timeout=10)
        try:
            # An earlier sync saw the resources destroyed since; the next one sees them gone (history records).
            assert sim.put("/_sim/inventory", json={"inventory": "past"}).status_code == 200
            results = poller.poll("resources")
            assert sim.put("/_sim/inventory", json={"inventory": "current"}).status_code == 200
            results += poller.poll("resources")
            wait_until(lambda: inventory_read(s), timeout=90, what="matcher read the inventory and its history")
            results += poller.poll("balance") + poller.poll("history")
        finally:
            sim.close()
            close()
        assert not [r for r in results if r.failed], results
        assert results[1].detail["gone"] == 8 and results[1].detail["tombstones"] == 0, results[1].detail
        yield s
    finally:
        for _, stop in threads:
            stop.set()
        for t, _ in threads:
            t.join(30)
        matcher.stop()
        do.stop()
        finance.stop()


def _april_pushed(s: Settings) -> bool:
    with connect(s) as c:
        if c.execute("SELECT to_regclass('readmodel.invoices') AS t").fetchone()["t"] is None:
            return False
        row = c.execute(
            "SELECT status_rank FROM readmodel.invoices WHERE invoice_uuid = %s", (APRIL_2026_INVOICE_UUID,)
        ).fetchone()
    return bool(row) and row["status_rank"] == 4


def test_april_2026_exact_attribution(pipeline: Settings) -> None:
    s = pipeline
    wait_until(lambda: _april_pushed(s), timeout=300, interval=1.0, what="april invoice pushed and projected")
    headers = {"Authorization": f"Bearer {mint_token(s, ['platform_admin'], 300, 'attribution')}"}
    with TestClient(api_main.create_app(s)) as client:

        def get(path: str) -> dict:
            r = client.get(path, headers=headers)
            assert r.status_code == 200, (path, r.text)
            return r.json()

        april = get(f"/api/v1/billing/invoices/{APRIL_2026_INVOICE_UUID}")
        lines = april["lines"]
        # The money is the CSV's, unchanged by the items.
        assert (april["amount_net_minor"], april["amount_tax_minor"], april["amount_gross_minor"]) == (7902, 790, 8692)
        assert april["status"] == "pushed" and len(lines) == 33
        assert all(x["item_join"] == "exact" for x in lines)

        # The seed's figure next to attribution at all.
        assert (april["lines_count"], april["matched_count"], april["attributed_count"]) == (33, 6, 30)
        table: dict[tuple[str | None, bool | None], int] = {}
        for x in lines:
            key = (x["attributed_by"], x["still_exists"])
            table[key] = table.get(key, 0) + 1
        print("April 2026 attribution table (rule, exists now) -> lines:", dict(sorted(table.items(), key=str)))
        assert table == TABLE

        destroyed = [x for x in lines if x["product"] == "Droplets" and x["resource_id"] and not x["still_exists"]]
        assert len(destroyed) == 24  # 21 droplets + 3 nodes of the deleted k8s-staging: at least the 21

        by_desc: dict[str, list[dict]] = {}
        for x in lines:
            by_desc.setdefault(x["description"], []).append(x)
        [renamed] = by_desc["staging-web-01 (s-1vcpu-1gb)"]
        assert (renamed["resource_id"], renamed["name"], renamed["attributed_by"]) == (
            "512000010",
            "staging-web",
            "resource_id",
        )
        assert [(x["resource_id"], x["attributed_by"]) for x in by_desc["loadtest-01 (c-2)"]] == [
            ("512000001", "resource_id"),
            ("512000002", "resource_id"),
        ]
        [gpu] = by_desc["ml-train-gpu-01 (gpu-4000adax1-20gb)"]
        assert (gpu["kind"], gpu["resource_id"], gpu["attributed_by"], gpu["still_exists"]) == (
            "gpu_droplet",
            "512000020",
            "name_period_history",
            False,
        )
        [web] = by_desc["web-01 (s-1vcpu-1gb)"]
        assert (web["resource_id"], web["attributed_by"], web["still_exists"], web["item_resource_id"]) == (
            "401112201",
            "resource_id",
            True,
            "401112201",
        )
        assert all(x["resource_id"] is None and x["attributed_by"] is None for x in lines if x["is_tax"])

        # The attribution table through the API, and the other rollups add up to the invoice.
        rules = get("/api/v1/billing/rollups?period=2026-04-01&by=rule")["rows"]
        assert {r["key"]: r["lines_count"] for r in rules} == {
            "resource_id": 13,
            "item_resource_id": 14,
            "name_period_history": 3,
            "unattributed:kind_not_inventoried": 2,
            "unattributed:tax_line": 1,
        }
        assert sum(r["current_count"] for r in rules) == 6 and sum(r["attributed_count"] for r in rules) == 30
        for by in ("product", "kind", "project", "resource"):
            rows = get(f"/api/v1/billing/rollups?period=2026-04-01&by={by}")["rows"]
            assert sum(r["amount_minor"] for r in rows) == 8692, by
        by_resource = {r["key"]: r for r in get("/api/v1/billing/rollups?period=2026-04-01&by=resource")["rows"]}
        assert by_resource["droplet:401112201"]["amount_minor"] == 600
        assert by_resource["droplet:401112201"]["current_count"] == 1

        # A destroyed, renamed droplet's cost over months, and what the history knows of it.
        costs = get("/api/v1/billing/resources/512000010/costs")
        assert (costs["kind"], costs["name"], costs["still_exists"]) == ("droplet", "staging-web", False)
        assert costs["names_on_invoices"] == ["staging-web"] and costs["last_seen"] is not None
        assert [(m["period"], m["amount_minor"], m["rules"]) for m in costs["months"]] == [
            ("2026-04-01", 86, ["resource_id"])
        ]
        assert client.get("/api/v1/billing/resources/no-such-id/costs", headers=headers).status_code == 404

        lines_page = get("/api/v1/billing/cost-lines?period=2026-04-01&kind=gpu_droplet")["items"]
        assert [x["resource_id"] for x in lines_page] == ["512000020"]
