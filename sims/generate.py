"""Synthetic scenarios of any size (benchmarks, load tests): deterministic for a given seed.

`generate(out, invoices=N, lines=M, resources=R, seed=S)` writes a scenario folder the DigitalOcean simulator
serves: N monthly invoices (ending April 2026) of M CSV lines each (the last one GST), an inventory of R
resources of several kinds in DigitalOcean's object shapes, and a billing history with a payment per
invoice. Lines use the real description shapes; about half of the non-tax lines name a current resource,
the rest are destroyed droplets and Spaces (never inventoried). The oldest quarter of invoices uses the
8-column CSV format.
"""

from __future__ import annotations

import calendar
import csv
import io
import json
import random
import shutil
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

COLS_9 = ["product", "group_description", "description", "hours", "start", "end", "USD", "project_name", "category"]
COLS_8 = COLS_9[:-1]
REGIONS = ["nyc3", "sfo3", "ams3", "fra1", "sgp1", "syd1", "lon1", "tor1", "blr1"]
DROPLET_SIZES = ["s-1vcpu-1gb", "s-1vcpu-2gb", "s-2vcpu-2gb", "s-2vcpu-4gb", "s-4vcpu-8gb", "c-2", "g-2vcpu-8gb"]
DB_SIZES = ["db-s-1vcpu-1gb", "db-s-1vcpu-2gb", "db-s-2vcpu-4gb"]
# kind -> share of the inventory
KIND_WEIGHTS = {
    "droplets": 45,
    "volumes": 15,
    "databases": 8,
    "load_balancers": 8,
    "kubernetes_clusters": 5,
    "apps": 7,
    "snapshots": 7,
    "reserved_ips": 5,
}
CENT = Decimal("0.01")
LAST_PERIOD = (2026, 4)


class GenerateError(ValueError):
    """Bad generator arguments or an output folder that is not safe to write."""


@dataclass
class _Res:
    kind: str
    obj: dict[str, Any]
    name: str
    product: str
    description: str
    group: str = ""


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _iso(d: datetime) -> str:
    return d.strftime("%Y-%m-%dT%H:%M:%SZ")


def _ts(d: datetime) -> str:
    return d.strftime("%Y-%m-%d %H:%M:%S +0000")


def _usd(d: Decimal) -> str:
    return f"-${-d}" if d < 0 else f"${d}"


def _resource(rng: random.Random, kind: str, i: int) -> _Res:
    region = rng.choice(REGIONS)
    created = _iso(datetime(2023, 1, 1, tzinfo=UTC) + timedelta(minutes=rng.randint(0, 1_500_000)))
    if kind == "droplets":
        size = rng.choice(DROPLET_SIZES)
        name = f"node-{i:05d}"
        obj = {
            "id": 300_000_000 + i,
            "name": name,
            "memory": 1024,
            "vcpus": 1,
            "disk": 25,
            "locked": False,
            "status": "active",
            "created_at": created,
            "size_slug": size,
            "size": {"slug": size},
            "region": {"slug": region, "name": region.upper()},
            "image": {"slug": "ubuntu-24-04-x64", "distribution": "Ubuntu"},
            "networks": {"v4": [], "v6": []},
            "tags": [rng.choice(["prod", "staging", "ci"])],
        }
        return _Res(kind, obj, name, "Droplets", f"{name} ({size})")
    if kind == "volumes":
        gb = rng.choice([10, 50, 100, 250, 500])
        name = f"vol-{region}-{i:05d}"
        obj = {
            "id": _uuid(rng),
            "name": name,
            "size_gigabytes": gb,
            "region": {"slug": region},
            "droplet_ids": [],
            "created_at": created,
            "filesystem_type": "ext4",
            "tags": [],
        }
        return _Res(kind, obj, name, "Volumes", f"{name} ({region}) {gb}GB")
    if kind == "databases":
        size = rng.choice(DB_SIZES)
        name = f"db-postgresql-{region}-{10000 + i}"
        obj = {
            "id": _uuid(rng),
            "name": name,
            "engine": "pg",
            "version": "16",
            "size": size,
            "region": region,
            "num_nodes": 1,
            "status": "online",
            "created_at": created,
            "tags": [],
        }
        return _Res(kind, obj, name, "Managed Databases", f"{name} ({size})")
    if kind == "load_balancers":
        name = f"lb-{i:05d}"
        obj = {
            "id": _uuid(rng),
            "name": name,
            "size": "lb-small",
            "status": "active",
            "created_at": created,
            "region": {"slug": region},
            "droplet_ids": [],
        }
        return _Res(kind, obj, name, "Load Balancers", f"{name} (lb-small)")
    if kind == "kubernetes_clusters":
        name = f"k8s-{i:05d}"
        obj = {
            "id": _uuid(rng),
            "name": name,
            "region": region,
            "version": "1.31.1-do.0",
            "created_at": created,
            "node_pools": [{"id": _uuid(rng), "name": f"{name}-pool", "size": "s-2vcpu-4gb", "count": 2}],
        }
        return _Res(kind, obj, name, "Kubernetes Clusters", "HA control plane", group=name)
    if kind == "apps":
        name = f"app-{i:05d}"
        obj = {"id": _uuid(rng), "spec": {"name": name, "region": region}, "created_at": created, "tier_slug": "basic"}
        return _Res(kind, obj, name, "App Platform", f"{name} (basic-xxs)")
    if kind == "snapshots":
        name = f"snap-{i:05d}-{1_700_000_000 + i}"
        gb = rng.choice(["1.5", "2.5", "4.2"])
        obj = {
            "id": str(150_000_000 + i),
            "name": name,
            "regions": [region],
            "created_at": created,
            "resource_type": "droplet",
            "resource_id": str(300_000_000 + i),
            "size_gigabytes": float(gb),
        }
        return _Res(kind, obj, name, "Snapshots", f"{name} ({region}) {gb}GB")
    if kind == "reserved_ips":
        ip = f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"
        obj = {"ip": ip, "region": {"slug": region}, "droplet": None, "locked": False}
        return _Res(kind, obj, ip, "Reserved IPs", f"Unused Reserved IP - {ip}")
    raise GenerateError(f"unknown kind {kind}")  # pragma: no cover


def _periods(n: int) -> list[tuple[int, int]]:
    y, m = LAST_PERIOD
    out = []
    for _ in range(n):
        out.append((y, m))
        y, m = (y, m - 1) if m > 1 else (y - 1, 12)
    return out[::-1]


def generate(
    out: Path | str, *, invoices: int, lines: int, resources: int, seed: int = 1, force: bool = False
) -> dict[str, int]:
    """Write the scenario folder; returns counts. Same arguments, same bytes."""
    out = Path(out)
    if invoices < 1 or lines < 1 or resources < 0:
        raise GenerateError("--invoices and --lines must be >= 1, --resources >= 0")
    if invoices > 1200:
        raise GenerateError("--invoices at most 1200 (a century of months)")
    if out.exists() and any(out.iterdir()):
        if not force:
            raise GenerateError(f"{out} is not empty (use --force to overwrite)")
        shutil.rmtree(out)
    (out / "invoices").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)

    kinds = list(KIND_WEIGHTS)
    res_list = [_resource(rng, rng.choices(kinds, weights=list(KIND_WEIGHTS.values()))[0], i) for i in range(resources)]
    inventory: dict[str, list[dict[str, Any]]] = {k: [] for k in kinds}
    for r in res_list:
        inventory[r.kind].append(r.obj)

    history: list[dict[str, Any]] = []
    periods = _periods(invoices)
    old_cutoff = len(periods) // 4
    for k, (y, m) in enumerate(periods):
        days = calendar.monthrange(y, m)[1]
        start = datetime(y, m, 1, tzinfo=UTC)
        end = start + timedelta(days=days)
        full = days * 24
        rows: list[dict[str, str]] = []
        net = Decimal("0")
        for j in range(lines - 1):
            roll = rng.random()
            hours, s, e = full, start, end
            group = ""
            if res_list and roll < 0.5:
                r = res_list[rng.randrange(len(res_list))]
                product, desc, group = r.product, r.description, r.group
                amount = Decimal(rng.randint(100, 6000)) * CENT
            elif roll < 0.55:
                product, desc = "Spaces Subscription", "Spaces Subscription"
                amount = Decimal("5.00")
            else:
                size = rng.choice(DROPLET_SIZES)
                product, desc = "Droplets", f"gone-{k:04d}-{j:06d} ({size})"
                hours = rng.randint(1, full - 1)
                s = start + timedelta(hours=rng.randint(0, full - hours))
                e = s + timedelta(hours=hours)
                amount = (Decimal(rng.randint(1, 400)) * CENT).quantize(CENT)
            net += amount
            rows.append(
                {
                    "product": product,
                    "group_description": group,
                    "description": desc,
                    "hours": str(hours),
                    "start": _ts(s),
                    "end": _ts(e if rng.random() < 0.5 else e - timedelta(seconds=1)),
                    "USD": _usd(amount),
                    "project_name": rng.choice(["", "Default", "Platform, Core"]),
                    "category": "paas"
                    if product in ("Managed Databases", "App Platform", "Load Balancers")
                    else "iaas",
                }
            )
        gst = (net * Decimal("0.10")).quantize(CENT, rounding=ROUND_HALF_UP)
        rows.append(
            {
                "product": "Taxes",
                "group_description": "",
                "description": "GST (10%)",
                "hours": "",
                "start": _ts(start),
                "end": _ts(end - timedelta(seconds=1)),
                "USD": _usd(gst),
                "project_name": "",
                "category": "iaas",
            }
        )
        total = net + gst
        inv_uuid = _uuid(rng)
        buf = io.StringIO()
        w = csv.DictWriter(
            buf, fieldnames=COLS_8 if k < old_cutoff else COLS_9, lineterminator="\n", extrasaction="ignore"
        )
        w.writeheader()
        w.writerows(rows)
        (out / "invoices" / f"{inv_uuid}.csv").write_bytes(buf.getvalue().encode())
        issued = end + timedelta(hours=8, minutes=rng.randint(0, 59), seconds=rng.randint(0, 59))
        history.append(
            {
                "description": f"Invoice for {calendar.month_name[m]} {y}",
                "amount": f"{total}",
                "invoice_id": str(1_000_000 + k * 1000 + rng.randint(0, 999)),
                "invoice_uuid": inv_uuid,
                "date": _iso(issued),
                "type": "Invoice",
            }
        )
        history.append(
            {
                "description": "Payment (Visa 4242)",
                "amount": f"-{total}",
                "date": _iso(issued + timedelta(days=rng.randint(1, 4))),
                "type": "Payment",
            }
        )
    history.sort(key=lambda h: h["date"], reverse=True)

    usage = Decimal(rng.randint(1000, 90000)) * CENT
    balances = [
        {
            "month_to_date_balance": f"{usage + i * Decimal('0.11')}",
            "account_balance": "0.00",
            "month_to_date_usage": f"{usage + i * Decimal('0.11')}",
            "generated_at": f"2026-05-14T{7 + i:02d}:07:00Z",
        }
        for i in range(3)
    ]
    (out / "billing_history.json").write_text(json.dumps(history, indent=1) + "\n")
    (out / "balance.json").write_text(json.dumps(balances, indent=1) + "\n")
    (out / "resources.json").write_text(json.dumps(inventory, indent=1) + "\n")
    return {"invoices": invoices, "lines": lines, "resources": resources, "history_entries": len(history)}
