"""Build the `april-2026` scenario folder (deterministic: same files on every run).

The original system's account, as its change notes describe it: 137 invoices going back to 2014 (plus the
payments and a few credits/adjustments of a real history), the April 2026 invoice with 33 CSV lines
totalling $86.92 of which GST is $7.90 (10% on $79.02), and a resource inventory such that exactly 6 of
those 33 lines match a current resource by (kind, name), case-insensitively.

Run: `.venv/bin/python -m sims.scenarios.build_april_2026` (writes sims/scenarios/april-2026/).
"""

from __future__ import annotations

import calendar
import csv
import io
import json
import random
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

from sims.scenario import APRIL_2026_INVOICE_ID, APRIL_2026_INVOICE_UUID

OUT = Path(__file__).resolve().parent / "april-2026"
NS = uuid.UUID("0b5c3f7e-61d4-4c55-8f0a-4a1f2d9e7c31")
CENT = Decimal("0.01")
COLS_9 = ["product", "group_description", "description", "hours", "start", "end", "USD", "project_name", "category"]
COLS_8 = COLS_9[:-1]
# Some 2017 invoices came out with a shifted column order (parsers must go by header name).
COLS_8_SHIFTED = ["product", "description", "group_description", "USD", "hours", "start", "end", "project_name"]
COLS_9_SHIFTED = [
    "product",
    "group_description",
    "description",
    "hours",
    "start",
    "end",
    "USD",
    "category",
    "project_name",
]
PROJECT = "Arcadia, Production"  # a quoted field with a comma, as DigitalOcean writes it

HOURLY = {
    "s-1vcpu-1gb": Decimal("0.00893"),
    "s-1vcpu-2gb": Decimal("0.01786"),
    "s-2vcpu-2gb": Decimal("0.02679"),
    "s-2vcpu-4gb": Decimal("0.03571"),
    "s-4vcpu-8gb": Decimal("0.07143"),
    "c-2": Decimal("0.06250"),
    "gpu-4000adax1-20gb": Decimal("0.76000"),
}


def money(d: Decimal) -> str:
    """`$12.34` / `-$2.00` as the CSV's USD column writes it."""
    d = d.quantize(CENT)
    return f"-${-d}" if d < 0 else f"${d}"


def ts(d: datetime) -> str:
    return d.strftime("%Y-%m-%d %H:%M:%S +0000")


@dataclass
class Line:
    product: str
    description: str
    amount: Decimal
    start: datetime
    end: datetime
    hours: int | None
    group_description: str = ""
    project_name: str = ""
    category: str = "iaas"
    why: str = ""  # README: why it matches or not

    def row(self) -> dict[str, str]:
        return {
            "product": self.product,
            "group_description": self.group_description,
            "description": self.description,
            "hours": "" if self.hours is None else str(self.hours),
            "start": ts(self.start),
            "end": ts(self.end),
            "USD": money(self.amount),
            "project_name": self.project_name,
            "category": self.category,
        }


def write_csv(path: Path, lines: list[Line], cols: list[str]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n", extrasaction="ignore")
    w.writeheader()
    for line in lines:
        w.writerow(line.row())
    path.write_bytes(buf.getvalue().encode())


def gst_line(net: Decimal, start: datetime, end: datetime) -> Line:
    gst = (net * Decimal("0.10")).quantize(CENT, rounding=ROUND_HALF_UP)
    return Line("Taxes", "GST (10%)", gst, start, end, None, why="tax line (GST)")


# ------------------------------------------------------------------------------------------- April 2026
APR_START = datetime(2026, 4, 1, tzinfo=UTC)
APR_END = datetime(2026, 5, 1, tzinfo=UTC)
APR_END_59 = datetime(2026, 4, 30, 23, 59, 59, tzinfo=UTC)

# Droplets that ran in April 2026 and were destroyed before the inventory was taken (CI runners, a load
# test, a deleted staging Kubernetes cluster's nodes, a retired box): (name, size, start, hours, group).
HISTORIC_DROPLETS = [
    ("ci-runner-0401a", "s-2vcpu-4gb", (1, 2, 5, 11), 19, ""),
    ("ci-runner-0402b", "s-2vcpu-4gb", (2, 3, 1, 40), 22, ""),
    ("ci-runner-0404a", "s-2vcpu-4gb", (4, 8, 12, 3), 14, ""),
    ("ci-runner-0407c", "s-2vcpu-4gb", (7, 6, 30, 55), 17, ""),
    ("ci-runner-0409a", "s-2vcpu-4gb", (9, 9, 0, 0), 21, ""),
    ("ci-runner-0411b", "s-2vcpu-4gb", (11, 4, 44, 19), 12, ""),
    ("ci-runner-0414a", "s-2vcpu-4gb", (14, 7, 15, 2), 16, ""),
    ("ci-runner-0416d", "s-2vcpu-4gb", (16, 10, 2, 33), 18, ""),
    ("ci-runner-0418a", "s-2vcpu-4gb", (18, 1, 59, 12), 13, ""),
    ("ci-runner-0421b", "s-2vcpu-4gb", (21, 5, 20, 41), 20, ""),
    ("ci-runner-0423a", "s-2vcpu-4gb", (23, 8, 8, 8), 15, ""),
    ("ci-runner-0425c", "s-2vcpu-4gb", (25, 3, 33, 27), 11, ""),
    ("ci-runner-0428a", "s-2vcpu-4gb", (28, 6, 47, 50), 19, ""),
    ("loadtest-01", "c-2", (10, 13, 0, 0), 9, ""),
    # Two droplets sharing a name (started 4 s apart): only the items' ids tell them apart.
    ("loadtest-01", "c-2", (10, 13, 0, 4), 9, ""),
    ("k8s-staging-pool-7x2kq", "s-2vcpu-4gb", (5, 0, 0, 0), 30, "k8s-staging"),
    ("k8s-staging-pool-7x2kr", "s-2vcpu-4gb", (5, 0, 0, 0), 30, "k8s-staging"),
    ("k8s-staging-pool-7x2ks", "s-2vcpu-4gb", (5, 0, 0, 0), 28, "k8s-staging"),
    ("web-01-old", "s-1vcpu-1gb", (1, 0, 0, 0), 50, ""),
    ("staging-web-01", "s-1vcpu-1gb", (1, 0, 0, 0), 96, ""),
    ("staging-api-01", "s-1vcpu-2gb", (1, 0, 0, 0), 96, ""),
    ("migration-test", "s-1vcpu-2gb", (12, 14, 5, 9), 26, ""),
    ("debug-box", "s-1vcpu-1gb", (19, 22, 10, 0), 31, ""),
    # A GPU droplet (listed only with type=gpus); hours/amount set to close the total.
    ("ml-train-gpu-01", "gpu-4000adax1-20gb", (24, 2, 0, 0), 0, ""),
]

MATCHED_TOTAL = Decimal("56.00")
SPACES_TOTAL = Decimal("6.30")
NET_TOTAL = Decimal("79.02")


def _historic_lines() -> list[Line]:
    """April's lines of droplets gone by mid-May; the last one's hours close the invoice's net total exactly."""
    historic: list[Line] = []
    for name, size, (day, h, m, s), hours, group in HISTORIC_DROPLETS:
        start = datetime(2026, 4, day, h, m, s, tzinfo=UTC)
        why = (
            f"worker node of Kubernetes cluster `{group}`, deleted (no such cluster in the inventory)"
            if group
            else f"droplet `{name}` no longer exists (destroyed before the inventory was taken)"
        )
        amount = (HOURLY[size] * hours).quantize(CENT, rounding=ROUND_HALF_UP)
        historic.append(
            Line(
                "Droplets",
                f"{name} ({size})",
                amount,
                start,
                start + timedelta(hours=hours),
                hours,
                group_description=group,
                why=why,
            )
        )
    rest = NET_TOTAL - MATCHED_TOTAL - SPACES_TOTAL - sum(x.amount for x in historic[:-1])
    last = historic[-1]
    hours = int((rest / HOURLY[HISTORIC_DROPLETS[-1][1]]).to_integral_value(rounding=ROUND_HALF_UP))
    assert rest > 0 and hours > 0, rest
    last.amount, last.hours, last.end = rest, hours, last.start + timedelta(hours=hours)
    return historic


# Long on purpose: the April invoice's matched and Spaces lines are a literal table, one Line (and its why) each.
def april_lines() -> list[Line]:
    full = 720
    matched = [
        Line(
            "Droplets",
            "web-01 (s-1vcpu-1gb)",
            Decimal("6.00"),
            APR_START,
            APR_END,
            full,
            project_name=PROJECT,
            why="droplet `web-01` is in the inventory",
        ),
        Line(
            "Droplets",
            "API-01 (s-1vcpu-2gb)",
            Decimal("12.00"),
            APR_START,
            APR_END,
            full,
            project_name=PROJECT,
            why="droplet `api-01` is in the inventory (name differs only in letter case)",
        ),
        Line(
            "Droplets",
            "worker-01 (s-1vcpu-1gb)",
            Decimal("6.00"),
            APR_START,
            APR_END_59,
            full,
            project_name=PROJECT,
            why="droplet `worker-01` is in the inventory",
        ),
        Line(
            "Volumes",
            "vol-data-syd1 (syd1) 50GB",
            Decimal("5.00"),
            APR_START,
            APR_END,
            full,
            project_name=PROJECT,
            why="volume `vol-data-syd1` is in the inventory",
        ),
        Line(
            "Managed Databases",
            "db-postgresql-syd1-11111 (db-s-1vcpu-1gb)",
            Decimal("15.00"),
            APR_START,
            APR_END_59,
            full,
            project_name=PROJECT,
            category="paas",
            why="database `db-postgresql-syd1-11111` is in the inventory",
        ),
        Line(
            "Load Balancers",
            "lb-prod (lb-small)",
            Decimal("12.00"),
            APR_START,
            APR_END,
            full,
            project_name=PROJECT,
            category="paas",
            why="load balancer `lb-prod` is in the inventory",
        ),
    ]
    assert sum(x.amount for x in matched) == MATCHED_TOTAL
    spaces = [
        Line(
            "Spaces Subscription",
            "Spaces Subscription",
            Decimal("5.00"),
            APR_START,
            APR_END,
            full,
            category="paas",
            why="Spaces buckets are not inventoried (not in the v2 REST API)",
        ),
        Line(
            "Spaces Subscription",
            "Spaces (sgp1) 250GB",
            Decimal("1.30"),
            APR_START,
            APR_END_59,
            full,
            category="paas",
            why="Spaces buckets are not inventoried (not in the v2 REST API)",
        ),
    ]
    assert sum(x.amount for x in spaces) == SPACES_TOTAL
    historic = _historic_lines()
    # Interleave as DigitalOcean does (grouped by product, then by name).
    lines = matched[:3] + sorted(historic, key=lambda x: x.description.lower()) + matched[3:] + spaces
    net = sum((x.amount for x in lines), Decimal(0))
    assert net == NET_TOTAL, net
    lines.append(gst_line(net, APR_START, APR_END_59))
    assert lines[-1].amount == Decimal("7.90")
    assert len(lines) == 33 and sum(x.amount for x in lines) == Decimal("86.92")
    return lines


def _droplet(did: int, name: str, size: str, created: str, vcpus: int, mem: int, disk: int) -> dict[str, Any]:
    """A droplet of the Sydney production account, in the API's object shape."""
    return {
        "id": did,
        "name": name,
        "memory": mem,
        "vcpus": vcpus,
        "disk": disk,
        "locked": False,
        "status": "active",
        "kernel": None,
        "created_at": created,
        "features": ["monitoring", "ipv6"],
        "backup_ids": [],
        "next_backup_window": None,
        "snapshot_ids": [],
        "image": {
            "id": 163_511_021,
            "name": "24.04 (LTS) x64",
            "distribution": "Ubuntu",
            "slug": "ubuntu-24-04-x64",
        },
        "volume_ids": [],
        "size": {"slug": size, "memory": mem, "vcpus": vcpus, "disk": disk, "transfer": 1.0},
        "size_slug": size,
        "networks": {"v4": [], "v6": []},
        "region": {"name": "Sydney 1", "slug": "syd1", "available": True},
        "tags": ["prod"],
        "vpc_uuid": "5a4b8a0e-7c9e-4bde-9d3b-3f3b0b9c1e01",
    }


# Long on purpose: the inventory is one literal, shaped as DigitalOcean's listings answer, easiest to read whole.
def april_resources() -> dict[str, list[dict[str, Any]]]:
    """Current inventory (taken mid-May 2026): what ran all April and survived, plus a few newer things."""

    return {
        "droplets": [
            _droplet(401_112_201, "web-01", "s-1vcpu-1gb", "2024-02-11T03:12:44Z", 1, 1024, 25),
            _droplet(401_112_202, "api-01", "s-1vcpu-2gb", "2024-02-11T03:15:09Z", 1, 2048, 50),
            _droplet(455_870_113, "worker-01", "s-1vcpu-1gb", "2025-09-30T22:41:17Z", 1, 1024, 25),
            # Created after April: not on the April invoice, so it matches nothing there.
            _droplet(498_003_517, "web-02", "s-1vcpu-1gb", "2026-05-06T09:20:00Z", 1, 1024, 25),
        ],
        "volumes": [
            {
                "id": "7c1d6a3e-2b7f-11ef-9a1c-0a58ac14a2b1",
                "region": {"name": "Sydney 1", "slug": "syd1"},
                "droplet_ids": [455_870_113],
                "name": "vol-data-syd1",
                "description": "worker data",
                "size_gigabytes": 50,
                "created_at": "2025-10-01T01:02:03Z",
                "filesystem_type": "ext4",
                "filesystem_label": "data",
                "tags": [],
            }
        ],
        "databases": [
            {
                "id": "9cc10173-e9ea-4176-9dbc-a4cee4c4ff30",
                "name": "db-postgresql-syd1-11111",
                "engine": "pg",
                "version": "16",
                "connection": {"host": "db-postgresql-syd1-11111-do-user-1-0.db.ondigitalocean.com", "port": 25060},
                "users": None,
                "db_names": None,
                "num_nodes": 1,
                "region": "syd1",
                "status": "online",
                "created_at": "2024-03-02T10:00:00Z",
                "maintenance_window": {"day": "sunday", "hour": "03:00:00", "pending": False},
                "size": "db-s-1vcpu-1gb",
                "tags": ["prod"],
                "private_network_uuid": "5a4b8a0e-7c9e-4bde-9d3b-3f3b0b9c1e01",
                "project_id": "b6f3c2a1-0d4e-4f5a-8b9c-7d6e5f4a3b21",
            }
        ],
        "load_balancers": [
            {
                "id": "4de7ac8b-495b-4884-9a69-1050c6793cd6",
                "name": "lb-prod",
                "ip": "170.64.128.10",
                "size_unit": 1,
                "size": "lb-small",
                "algorithm": "round_robin",
                "status": "active",
                "created_at": "2024-02-11T04:00:00Z",
                "forwarding_rules": [
                    {"entry_protocol": "https", "entry_port": 443, "target_protocol": "http", "target_port": 80}
                ],
                "region": {"name": "Sydney 1", "slug": "syd1"},
                "droplet_ids": [401_112_201, 401_112_202],
                "tag": "",
                "vpc_uuid": "5a4b8a0e-7c9e-4bde-9d3b-3f3b0b9c1e01",
            }
        ],
        "kubernetes_clusters": [],
        "apps": [],
        "snapshots": [
            {
                "id": "172004518",
                "name": "web-02-pre-release-1747300000",
                "regions": ["syd1"],
                "created_at": "2026-05-15T09:06:40Z",
                "resource_id": "498003517",
                "resource_type": "droplet",
                "min_disk_size": 25,
                "size_gigabytes": 1.9,
                "tags": [],
            }
        ],
        "floating_ips": [],
        # Assigned to web-01 (an assigned reserved IP is free: it has no invoice line).
        "reserved_ips": [
            {
                "ip": "170.64.130.21",
                "region": {"name": "Sydney 1", "slug": "syd1"},
                "droplet": {"id": 401_112_201, "name": "web-01"},
                "locked": False,
                "project_id": "b6f3c2a1-0d4e-4f5a-8b9c-7d6e5f4a3b21",
            }
        ],
        "registries": [],
    }


# ------------------------------------------------------------------------------- April 2026: items and history
K8S_STAGING_ID = "6f1e2d3c-4b5a-4978-8a6b-5c4d3e2f1a0b"
# Invoice items' ids per CSV description (DigitalOcean gives ids on some lines, not on others). The values are
# (resource_id, resource_uuid). Lines absent here have items without ids.
ITEM_IDS: dict[str, tuple[str | None, str | None]] = {
    "web-01 (s-1vcpu-1gb)": ("401112201", str(uuid.uuid5(NS, "droplet:401112201"))),
    "API-01 (s-1vcpu-2gb)": ("401112202", str(uuid.uuid5(NS, "droplet:401112202"))),
    "worker-01 (s-1vcpu-1gb)": ("455870113", str(uuid.uuid5(NS, "droplet:455870113"))),
    # Volumes, databases, load balancers: the uuid is the resource's id; resource_id is an internal number.
    "vol-data-syd1 (syd1) 50GB": ("61230001", "7c1d6a3e-2b7f-11ef-9a1c-0a58ac14a2b1"),
    "db-postgresql-syd1-11111 (db-s-1vcpu-1gb)": (None, "9cc10173-e9ea-4176-9dbc-a4cee4c4ff30"),
    "lb-prod (lb-small)": (None, "4de7ac8b-495b-4884-9a69-1050c6793cd6"),
    "staging-web-01 (s-1vcpu-1gb)": ("512000010", None),  # known to the history as `staging-web` (renamed)
    "web-01-old (s-1vcpu-1gb)": ("512000030", None),
    "debug-box (s-1vcpu-1gb)": ("511000099", None),  # never inventoried: its own id only
}
# Node droplets of the deleted k8s-staging cluster: the node's id and the cluster's uuid.
for _i, _n in enumerate(("7x2kq", "7x2kr", "7x2ks")):
    ITEM_IDS[f"k8s-staging-pool-{_n} (s-2vcpu-4gb)"] = (str(511500001 + _i), K8S_STAGING_ID)
for _i, (_name, _size, *_rest) in enumerate(HISTORIC_DROPLETS):
    if _name.startswith("ci-runner"):  # created and destroyed between two inventory syncs: ids from the items only
        ITEM_IDS[f"{_name} ({_size})"] = (str(511000001 + _i), str(uuid.uuid5(NS, f"droplet:{_name}")))
LOADTEST_IDS = ("512000001", "512000002")  # the two `loadtest-01`, in CSV order


def april_items(lines: list[Line]) -> list[dict[str, Any]]:
    """`GET /v2/customers/my/invoices/{uuid}` items of April 2026: the CSV's charges, ids on some, in DigitalOcean's
    own order (not the CSV's: the ingester joins them by content)."""
    loadtest = iter(LOADTEST_IDS)
    items = []
    for x in lines:
        rid, ruuid = ITEM_IDS.get(x.description, (None, None))
        if x.description == "loadtest-01 (c-2)":
            rid = next(loadtest)
        item = {
            "product": x.product,
            "group_description": x.group_description,
            "description": x.description,
            "amount": f"{x.amount.quantize(CENT)}",
            "duration": "" if x.hours is None else str(x.hours),
            "duration_unit": "" if x.hours is None else "Hours",
            "start_time": iso(x.start),
            "end_time": iso(x.end),
            "project_name": x.project_name,
            "category": x.category,
        }
        if rid:
            item["resource_id"] = rid
        if ruuid:
            item["resource_uuid"] = ruuid
        items.append(item)
    random.Random(17).shuffle(items)
    return items


def april_resources_past() -> dict[str, list[dict[str, Any]]]:
    """What earlier inventory syncs in April listed (for brevity one file): today's resources that existed then,
    and droplets destroyed since. Served by the simulator after `PUT /_sim/inventory {"inventory": "past"}`."""
    now = april_resources()
    template = now["droplets"][0]

    def gone(did: int, name: str, size: str, created: str) -> dict[str, Any]:
        return {
            **template,
            "id": did,
            "name": name,
            "size_slug": size,
            "created_at": created,
            "tags": ["ci"],
            "size": {**template["size"], "slug": size},
        }

    return {
        **now,
        "droplets": [d for d in now["droplets"] if d["name"] != "web-02"]
        + [
            gone(512000001, "loadtest-01", "c-2", "2026-04-10T13:00:00Z"),
            gone(512000002, "loadtest-01", "c-2", "2026-04-10T13:00:04Z"),
            gone(512000010, "staging-web", "s-1vcpu-1gb", "2026-04-01T00:00:00Z"),  # renamed before destroyed
            gone(512000011, "staging-api-01", "s-1vcpu-2gb", "2026-04-01T00:00:00Z"),
            gone(512000012, "migration-test", "s-1vcpu-2gb", "2026-04-12T14:05:09Z"),
            gone(512000030, "web-01-old", "s-1vcpu-1gb", "2026-03-02T10:00:00Z"),
            # A GPU droplet: DigitalOcean lists it only under /v2/droplets?type=gpus.
            gone(512000020, "ml-train-gpu-01", "gpu-4000adax1-20gb", "2026-04-24T02:00:00Z"),
        ],
        "kubernetes_clusters": [
            {
                "id": K8S_STAGING_ID,
                "name": "k8s-staging",
                "region": "syd1",
                "version": "1.30.4-do.0",
                "created_at": "2026-04-05T00:00:00Z",
                "node_pools": [{"id": "np-1", "name": "k8s-staging-pool", "size": "s-2vcpu-4gb", "count": 3}],
                "tags": [],
            }
        ],
        "snapshots": [],
    }


# ------------------------------------------------------------------------------------------ older months
def periods() -> list[tuple[int, int]]:
    """2014-11 .. 2026-04 without 2016-02 (an idle month: no usage, no invoice): 137 invoices."""
    out = []
    y, m = 2014, 11
    while (y, m) <= (2026, 4):
        if (y, m) != (2016, 2):
            out.append((y, m))
        y, m = (y, m + 1) if m < 12 else (y + 1, 1)
    return out


def _platform_lines(
    era: tuple[int, int], start: datetime, full: int, proj: str, period_end: Callable[[], datetime]
) -> list[Line]:
    """A past month's lines of the services the account took up over the years: Spaces, a load balancer, a
    database, a Kubernetes cluster for a while (`period_end` draws each line's end from the month's rng)."""
    out: list[Line] = []
    if era >= (2017, 10):
        out.append(
            Line(
                "Spaces Subscription",
                "Spaces Subscription",
                Decimal("5.00"),
                start,
                period_end(),
                full,
                category="paas",
            )
        )
    if era >= (2018, 6):
        out.append(
            Line(
                "Load Balancers",
                "lb-prod" if era < (2021, 1) else "lb-prod (lb-small)",
                Decimal("10.00") if era < (2022, 7) else Decimal("12.00"),
                start,
                period_end(),
                full,
                project_name=proj,
                category="paas",
            )
        )
    if era >= (2019, 3):
        product = "Databases" if era < (2020, 6) else "Managed Databases"
        out.append(
            Line(
                product,
                "db-postgresql-syd1-11111 (db-s-1vcpu-1gb)",
                Decimal("15.00"),
                start,
                period_end(),
                full,
                project_name=proj,
                category="paas",
            )
        )
    if era >= (2021, 5) and era < (2023, 9):
        for pool in ("a1b2c", "a1b2d"):
            out.append(
                Line(
                    "Droplets",
                    f"k8s-prod-pool-{pool} (s-2vcpu-4gb)",
                    Decimal("24.00"),
                    start,
                    period_end(),
                    full,
                    group_description="k8s-prod",
                    project_name=proj,
                )
            )
    return out


def old_lines(rng: random.Random, y: int, m: int) -> list[Line]:
    days = calendar.monthrange(y, m)[1]
    start = datetime(y, m, 1, tzinfo=UTC)
    end = start + timedelta(days=days)
    end_59 = end - timedelta(seconds=1)
    full = days * 24
    era = (y, m)
    cat = era >= (2020, 1)
    proj = PROJECT if era >= (2019, 1) else ""

    def period_end() -> datetime:
        return end if rng.random() < 0.5 else end_59

    def partial(price: Decimal) -> tuple[int, Decimal, datetime, datetime]:
        hours = rng.randint(3, full - 1)
        s = start + timedelta(hours=rng.randint(0, full - hours - 1), minutes=rng.randint(0, 59))
        return hours, (price * hours / full).quantize(CENT, rounding=ROUND_HALF_UP), s, s + timedelta(hours=hours)

    lines: list[Line] = []
    size, price = ("512mb", Decimal("5.00")) if era < (2018, 1) else ("s-1vcpu-1gb", Decimal("5.00"))
    if era >= (2022, 7):
        price = Decimal("6.00")
    for name in ["web-01", "api-01"] if era >= (2016, 6) else ["web-01"]:
        lines.append(Line("Droplets", f"{name} ({size})", price, start, period_end(), full, project_name=proj))
    for i in range(rng.randint(0, 4)):
        hours, amount, s, e = partial(Decimal("20.00"))
        nm = f"ci-runner-{y % 100:02d}{m:02d}{chr(97 + i)}" if era >= (2018, 1) else f"test-{m:02d}{i}"
        sz = "s-2vcpu-4gb" if era >= (2018, 1) else "2gb"
        lines.append(Line("Droplets", f"{nm} ({sz})", amount, s, e, hours, project_name=proj))
    if era >= (2016, 1):
        lines.append(Line("Volumes", "volume-syd1-01 (syd1) 50GB", Decimal("5.00"), start, period_end(), full))
    if era >= (2016, 6) and rng.random() < 0.4:
        lines.append(Line("Backups", f"web-01 ({size})", (price / 5).quantize(CENT), start, period_end(), full))
    if rng.random() < 0.3:
        hours, amount, s, e = partial(Decimal("0.75"))
        lines.append(Line("Snapshots", f"web-01-{int(s.timestamp())} (syd1) 1.5GB", amount, s, e, hours))
    if rng.random() < 0.15:
        hours, amount, s, e = partial(Decimal("4.00"))
        ip = f"103.253.{rng.randint(1, 254)}.{rng.randint(1, 254)}"
        product = "Floating IPs" if era < (2022, 6) else "Reserved IPs"
        kind = "Floating" if era < (2022, 6) else "Reserved"
        lines.append(Line(product, f"Unused {kind} IP - {ip}", amount, s, e, hours))
    lines += _platform_lines(era, start, full, proj, period_end)
    if (y, m) == (2021, 9):
        lines.append(Line("Credits", "Service credit - SYD1 network incident", Decimal("-2.00"), start, end_59, None))
    if not cat:
        for x in lines:
            x.category = ""
    if era >= (2017, 7):
        net = sum((x.amount for x in lines), Decimal(0))
        lines.append(gst_line(net, start, end_59))
    return lines


def columns_for(y: int, m: int) -> list[str]:
    if (2017, 3) <= (y, m) <= (2017, 6):
        return COLS_8_SHIFTED
    if (y, m) == (2023, 8):
        return COLS_9_SHIFTED
    return COLS_9 if (y, m) >= (2020, 1) else COLS_8


# --------------------------------------------------------------------------------------------- assembly
def iso(d: datetime) -> str:
    return d.strftime("%Y-%m-%dT%H:%M:%SZ")


# The account's entries besides invoices and payments: a promo code, credits, an adjustment, an expiry.
OTHER_HISTORY: list[dict[str, str]] = [
    {"description": "Promo code: SSDCLOUD10", "amount": "-10.00", "date": "2014-11-02T04:11:09Z", "type": "Credit"},
    {
        "description": "Service credit - SYD1 incident",
        "amount": "-5.00",
        "date": "2019-03-11T02:30:00Z",
        "type": "Credit",
    },
    {
        "description": "Billing adjustment - duplicate snapshot charge",
        "amount": "-1.25",
        "date": "2021-08-02T06:15:00Z",
        "type": "Adjustment",
    },
    {"description": "Credit expired", "amount": "0.00", "date": "2015-11-02T00:00:00Z", "type": "CreditExpiration"},
]


def _history_entries(
    rng: random.Random, period: tuple[int, int], total: Decimal, inv_id: str, inv_uuid: str
) -> list[dict[str, Any]]:
    """A month's invoice in the billing history, issued the next month's first morning, and its payment."""
    y, m = period
    issued = datetime(y + (m == 12), m % 12 + 1, 1, 8, rng.randint(0, 59), rng.randint(0, 59), tzinfo=UTC)
    month_name = calendar.month_name[m]
    invoice = {
        "description": f"Invoice for {month_name} {y}",
        "amount": f"{total}",
        "invoice_id": inv_id,
        "invoice_uuid": inv_uuid,
        "date": iso(issued),
        "type": "Invoice",
    }
    paid = issued + timedelta(days=rng.randint(1, 3), hours=rng.randint(0, 6))
    card = "Visa 4242" if y < 2021 else "MC 5454"
    payment = {"description": f"Payment ({card})", "amount": f"-{total}", "date": iso(paid), "type": "Payment"}
    return [invoice, payment]


def balances() -> list[dict[str, str]]:
    """Four hourly balance snapshots of mid-May 2026."""
    usage = [Decimal("38.41"), Decimal("38.52"), Decimal("38.64"), Decimal("38.75")]
    return [
        {
            "month_to_date_balance": f"{u}",
            "account_balance": "0.00",
            "month_to_date_usage": f"{u}",
            "generated_at": f"2026-05-14T{7 + i:02d}:07:00Z",
        }
        for i, u in enumerate(usage)
    ]


def build(out: Path = OUT) -> None:
    rng = random.Random(20260501)
    if out.exists():
        shutil.rmtree(out)
    (out / "invoices").mkdir(parents=True)
    history: list[dict[str, Any]] = []
    all_periods = periods()
    assert len(all_periods) == 137
    for k, (y, m) in enumerate(all_periods):
        if (y, m) == (2026, 4):
            inv_uuid, inv_id, lines, cols = APRIL_2026_INVOICE_UUID, APRIL_2026_INVOICE_ID, april_lines(), COLS_9
        else:
            inv_uuid = str(uuid.uuid5(NS, f"invoice:{y:04d}-{m:02d}"))
            inv_id = str(230_000 + k * 66_000 + rng.randint(0, 999))
            lines, cols = old_lines(rng, y, m), columns_for(y, m)
        write_csv(out / "invoices" / f"{inv_uuid}.csv", lines, cols)
        if inv_uuid == APRIL_2026_INVOICE_UUID:
            (out / "invoices" / f"{inv_uuid}.json").write_text(json.dumps(april_items(lines), indent=1) + "\n")
        total = sum((x.amount for x in lines), Decimal(0)).quantize(CENT)
        history += _history_entries(rng, (y, m), total, inv_id, inv_uuid)
    history += OTHER_HISTORY
    history.sort(key=lambda e: e["date"], reverse=True)  # newest first, as the API lists it
    (out / "billing_history.json").write_text(json.dumps(history, indent=1) + "\n")
    (out / "balance.json").write_text(json.dumps(balances(), indent=1) + "\n")
    (out / "resources.json").write_text(json.dumps(april_resources(), indent=1) + "\n")
    (out / "resources_past.json").write_text(json.dumps(april_resources_past(), indent=1) + "\n")
    (out / "README.md").write_text(readme(april_lines()))


def readme(lines: list[Line]) -> str:
    matched = [x for x in lines if x.why.endswith(("in the inventory", "letter case)"))]
    assert len(matched) == 6
    out = [
        "# Scenario `april-2026`",
        "",
        "Generated by `sims/scenarios/build_april_2026.py` (deterministic; do not edit by hand, re-run it).",
        "",
        "- `billing_history.json`: 137 `Invoice` entries (November 2014 to April 2026; February 2016 was an idle",
        "  month without an invoice), one `Payment` after each (negative amount, no invoice id/uuid), plus credits,",
        "  an adjustment and a credit expiration. Newest first.",
        "- `invoices/<uuid>.csv`: one per invoice. Before 2020 the 8-column format (no `category`); March-June",
        "  2017 and August 2023 with a shifted column order; GST (10%) from July 2017; project name",
        '  `"Arcadia, Production"` (a quoted field with a comma) from 2019; a negative credit line in September 2021.',
        f"- April 2026: invoice uuid `{APRIL_2026_INVOICE_UUID}` (`sims.scenario.APRIL_2026_INVOICE_UUID`),",
        f"  invoice id `{APRIL_2026_INVOICE_ID}`, dated 2026-05-01, 33 CSV lines totalling $86.92, GST $7.90",
        "  (10% on $79.02).",
        "- `resources.json`: the inventory taken mid-May 2026. `balance.json`: four hourly snapshots of May 2026.",
        "- `invoices/<April uuid>.json`: the April invoice's items as DigitalOcean serves them (its own order), with",
        "  resource ids on some lines and none on others (`ITEM_IDS` in the build script).",
        "- `resources_past.json`: what earlier inventory syncs in April listed (served after `PUT /_sim/inventory",
        '  {"inventory": "past"}`): droplets destroyed since, one of them renamed (`staging-web`, billed as',
        "  `staging-web-01`), two sharing the name `loadtest-01`, a GPU droplet (listed only with `type=gpus`) and the",
        "  deleted Kubernetes cluster `k8s-staging`. A poller that saw it, then the current inventory, keeps them as",
        '  history (docs/architecture.md, "Exact attribution").',
        "",
        "## April 2026: the 6 lines that match a current resource by (kind, name), case-insensitive",
        "",
        "`#` is the row number in the CSV after the header row.",
        "",
        "| # | product | description | amount | why |",
        "|---|---|---|---|---|",
    ]
    for i, x in enumerate(lines, start=1):
        if x in matched:
            out.append(f"| {i} | {x.product} | `{x.description}` | {money(x.amount)} | {x.why} |")
    out += [
        "",
        "## The 27 lines that do not match by (kind, name) against the current inventory",
        "",
        "| # | product | group | description | amount | why not |",
        "|---|---|---|---|---|---|",
    ]
    for i, x in enumerate(lines, start=1):
        if x not in matched:
            out.append(
                f"| {i} | {x.product} | {x.group_description} | `{x.description}` | {money(x.amount)} | {x.why} |"
            )
    out += [
        "",
        "Inventoried resources that are on no April line: droplet `web-02` (created 2026-05-06), the snapshot",
        "`web-02-pre-release-1747300000` (May), and reserved IP `170.64.130.21` (assigned to web-01, so free).",
        "",
    ]
    return "\n".join(out)


if __name__ == "__main__":
    build()
    print(f"wrote {OUT}")
