"""Synthetic scenarios of any size (benchmarks, load tests): deterministic for a given seed.

`generate(out, invoices=N, lines=M, resources=R, seed=S)` writes a scenario folder the DigitalOcean simulator
serves: N monthly invoices (ending April 2026) of M CSV lines each (the last one GST), an inventory of R
resources of several kinds in DigitalOcean's object shapes, and a billing history with a payment per
invoice. `big_invoices=K, big_lines=L` adds K more invoices of L lines each, the most recent months (an
account that grew: real invoices reach tens of thousands of lines). A long run goes back as many months as
it needs (synthetic history; years stay four-digit). Lines use the real description shapes; about half of the non-tax lines name a current resource,
the rest are destroyed droplets and Spaces (never inventoried). The oldest quarter of invoices uses the
8-column CSV format.

Balance history for the forecast and the alerts (`Balances`): with `months` > 0 the balance file is a series
of snapshots every `step_hours` (at :07, like the poller) over the last `months` invoiced months, whose
month-to-date usage reaches exactly each month's invoice net amount at the month's end, then the current
month (May 2026) up to day `current_days`, accruing at the last month's daily rate. `trend` tilts each
month's days (the last day costs `1 + trend` times the first), `spike_day`/`spike_factor` multiply one day
of the current month, and `new_products` adds that many products, never billed before, to the last invoice
(each about a fifth of its net). Without these options the output is byte for byte what it always was.
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


# Products no earlier invoice of a generated scenario has (the matcher reports them as unknown products).
NEW_PRODUCTS = ("GPU Droplets", "Managed Kafka", "Functions", "Gradient AI Agents", "Cloudways")


@dataclass(frozen=True)
class Balances:
    """Options for the balance history (see the module docstring); `months` 0 keeps the three old snapshots."""

    months: int = 0
    step_hours: int = 1
    current_days: int = 14
    trend: float = 0.0
    spike_day: int | None = None
    spike_factor: float = 5.0
    new_products: int = 0


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


def _droplet(rng: random.Random, i: int, region: str, created: str) -> _Res:
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
    return _Res("droplets", obj, name, "Droplets", f"{name} ({size})")


def _volume(rng: random.Random, i: int, region: str, created: str) -> _Res:
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
    return _Res("volumes", obj, name, "Volumes", f"{name} ({region}) {gb}GB")


def _database(rng: random.Random, i: int, region: str, created: str) -> _Res:
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
    return _Res("databases", obj, name, "Managed Databases", f"{name} ({size})")


def _load_balancer(rng: random.Random, i: int, region: str, created: str) -> _Res:
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
    return _Res("load_balancers", obj, name, "Load Balancers", f"{name} (lb-small)")


def _kubernetes_cluster(rng: random.Random, i: int, region: str, created: str) -> _Res:
    name = f"k8s-{i:05d}"
    obj = {
        "id": _uuid(rng),
        "name": name,
        "region": region,
        "version": "1.31.1-do.0",
        "created_at": created,
        "node_pools": [{"id": _uuid(rng), "name": f"{name}-pool", "size": "s-2vcpu-4gb", "count": 2}],
    }
    return _Res("kubernetes_clusters", obj, name, "Kubernetes Clusters", "HA control plane", group=name)


def _app(rng: random.Random, i: int, region: str, created: str) -> _Res:
    name = f"app-{i:05d}"
    obj = {"id": _uuid(rng), "spec": {"name": name, "region": region}, "created_at": created, "tier_slug": "basic"}
    return _Res("apps", obj, name, "App Platform", f"{name} (basic-xxs)")


def _snapshot(rng: random.Random, i: int, region: str, created: str) -> _Res:
    name = f"snap-{i:05d}-{1_700_000_000 + i}"
    snap_gb = rng.choice(["1.5", "2.5", "4.2"])
    obj = {
        "id": str(150_000_000 + i),
        "name": name,
        "regions": [region],
        "created_at": created,
        "resource_type": "droplet",
        "resource_id": str(300_000_000 + i),
        "size_gigabytes": float(snap_gb),
    }
    return _Res("snapshots", obj, name, "Snapshots", f"{name} ({region}) {snap_gb}GB")


def _reserved_ip(rng: random.Random, i: int, region: str, created: str) -> _Res:
    ip = f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"
    obj = {"ip": ip, "region": {"slug": region}, "droplet": None, "locked": False}
    return _Res("reserved_ips", obj, ip, "Reserved IPs", f"Unused Reserved IP - {ip}")


# One builder per resource kind: each draws its own fields from the rng after the region and creation time.
_BUILDERS: dict[str, Callable[[random.Random, int, str, str], _Res]] = {
    "droplets": _droplet,
    "volumes": _volume,
    "databases": _database,
    "load_balancers": _load_balancer,
    "kubernetes_clusters": _kubernetes_cluster,
    "apps": _app,
    "snapshots": _snapshot,
    "reserved_ips": _reserved_ip,
}


def _resource(rng: random.Random, kind: str, i: int) -> _Res:
    region = rng.choice(REGIONS)
    created = _iso(datetime(2023, 1, 1, tzinfo=UTC) + timedelta(minutes=rng.randint(0, 1_500_000)))
    builder = _BUILDERS.get(kind)
    if builder is None:  # pragma: no cover
        raise GenerateError(f"unknown kind {kind}")
    return builder(rng, i, region, created)


def _periods(n: int) -> list[tuple[int, int]]:
    y, m = LAST_PERIOD
    out = []
    for _ in range(n):
        out.append((y, m))
        y, m = (y, m - 1) if m > 1 else (y - 1, 12)
    return out[::-1]


MAX_INVOICES = 12_000  # a thousand years of months: dates keep four-digit years


def _check(invoices: int, lines: int, resources: int, big_invoices: int, big_lines: int, bal: Balances) -> None:
    """Refuse bad arguments before anything is written."""
    if invoices < 1 or lines < 1 or resources < 0:
        raise GenerateError("--invoices and --lines must be >= 1, --resources >= 0")
    if bal.months < 0 or bal.months > invoices + big_invoices:
        raise GenerateError("--balance-months must be between 0 and --invoices")
    if bal.step_hours < 1 or 24 % bal.step_hours or not 1 <= bal.current_days <= 31:
        raise GenerateError("--balance-step-hours must divide 24, --current-days be 1..31")
    if bal.spike_day is not None and not 1 <= bal.spike_day <= bal.current_days:
        raise GenerateError("--spike-day must be a day of the current month up to --current-days")
    if bal.new_products < 0 or bal.new_products > len(NEW_PRODUCTS):
        raise GenerateError(f"--new-products at most {len(NEW_PRODUCTS)}")
    if big_invoices < 0 or (big_invoices and big_lines < 1):
        raise GenerateError("--big-invoices must be >= 0, and --big-lines >= 1 when there are big invoices")
    if invoices + big_invoices > MAX_INVOICES:
        raise GenerateError(f"at most {MAX_INVOICES} invoices in all (one per month, a thousand years)")


def _empty_folder(out: Path, force: bool) -> None:
    """An output folder with an empty `invoices/`: never overwrite a non-empty one unless forced."""
    if out.exists() and any(out.iterdir()):
        if not force:
            raise GenerateError(f"{out} is not empty (use --force to overwrite)")
        shutil.rmtree(out)
    (out / "invoices").mkdir(parents=True, exist_ok=True)


def _inventory(rng: random.Random, resources: int) -> tuple[list[_Res], dict[str, list[dict[str, Any]]]]:
    """`resources` resources of weighted kinds, and the inventory file's objects by kind."""
    kinds = list(KIND_WEIGHTS)
    res_list = [_resource(rng, rng.choices(kinds, weights=list(KIND_WEIGHTS.values()))[0], i) for i in range(resources)]
    inventory: dict[str, list[dict[str, Any]]] = {k: [] for k in kinds}
    for r in res_list:
        inventory[r.kind].append(r.obj)
    return res_list, inventory


def _cost_row(
    rng: random.Random, res_list: list[_Res], k: int, j: int, start: datetime, end: datetime
) -> tuple[dict[str, str], Decimal]:
    """Line `j` of invoice `k` and its amount: a current resource (about half), Spaces, or a destroyed droplet."""
    full = int((end - start).total_seconds()) // 3600  # the month's hours
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
    row = {
        "product": product,
        "group_description": group,
        "description": desc,
        "hours": str(hours),
        "start": _ts(s),
        "end": _ts(e if rng.random() < 0.5 else e - timedelta(seconds=1)),
        "USD": _usd(amount),
        "project_name": rng.choice(["", "Default", "Platform, Core"]),
        "category": "paas" if product in ("Managed Databases", "App Platform", "Load Balancers") else "iaas",
    }
    return row, amount


def _tax_row(gst: Decimal, start: datetime, end: datetime) -> dict[str, str]:
    return {
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


def _write_csv(path: Path, rows: list[dict[str, str]], old_format: bool) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLS_8 if old_format else COLS_9, lineterminator="\n", extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    path.write_bytes(buf.getvalue().encode())


def _invoice(
    out: Path,
    rng: random.Random,
    res_list: list[_Res],
    k: int,
    period: tuple[int, int],
    n_lines: int,
    new_products: int,
    old_format: bool,
) -> tuple[Decimal, list[dict[str, Any]]]:
    """Write invoice `k` (its CSV: cost lines, then GST); returns its net and its billing-history entries."""
    y, m = period
    start = datetime(y, m, 1, tzinfo=UTC)
    end = start + timedelta(days=calendar.monthrange(y, m)[1])
    costs = [_cost_row(rng, res_list, k, j, start, end) for j in range(n_lines - 1)]
    rows = [row for row, _ in costs]
    net = sum((amount for _, amount in costs), Decimal("0"))
    if new_products:
        extra = _new_product_rows(net, new_products, start, end)
        net += sum((Decimal(r["USD"].lstrip("$")) for r in extra), Decimal(0))
        rows.extend(extra)
    gst = (net * Decimal("0.10")).quantize(CENT, rounding=ROUND_HALF_UP)
    rows.append(_tax_row(gst, start, end))
    inv_uuid = _uuid(rng)
    _write_csv(out / "invoices" / f"{inv_uuid}.csv", rows, old_format)
    return net, _history_entries(rng, k, period, end, net + gst, inv_uuid)


def _history_entries(
    rng: random.Random, k: int, period: tuple[int, int], end: datetime, total: Decimal, inv_uuid: str
) -> list[dict[str, Any]]:
    """The invoice's billing-history entry and the payment that settled it a few days later."""
    y, m = period
    issued = end + timedelta(hours=8, minutes=rng.randint(0, 59), seconds=rng.randint(0, 59))
    invoice = {
        "description": f"Invoice for {calendar.month_name[m]} {y}",
        "amount": f"{total}",
        "invoice_id": str(1_000_000 + k * 1000 + rng.randint(0, 999)),
        "invoice_uuid": inv_uuid,
        "date": _iso(issued),
        "type": "Invoice",
    }
    payment = {
        "description": "Payment (Visa 4242)",
        "amount": f"-{total}",
        "date": _iso(issued + timedelta(days=rng.randint(1, 4))),
        "type": "Payment",
    }
    return [invoice, payment]


def _default_balances(rng: random.Random) -> list[dict[str, str]]:
    """Three hourly snapshots of one day of May 2026 (what `months` 0 has always written)."""
    usage = Decimal(rng.randint(1000, 90000)) * CENT
    return [
        {
            "month_to_date_balance": f"{usage + i * Decimal('0.11')}",
            "account_balance": "0.00",
            "month_to_date_usage": f"{usage + i * Decimal('0.11')}",
            "generated_at": f"2026-05-14T{7 + i:02d}:07:00Z",
        }
        for i in range(3)
    ]


def generate(
    out: Path | str,
    *,
    invoices: int,
    lines: int,
    resources: int,
    seed: int = 1,
    force: bool = False,
    big_invoices: int = 0,
    big_lines: int = 0,
    balances: Balances | None = None,
    line_counts: list[int] | None = None,
) -> dict[str, int]:
    """Write the scenario folder; returns counts. Same arguments, same bytes.

    `line_counts`: one line count per invoice, oldest first (mixed sizes, as the chaos run wants); it replaces
    `invoices`/`lines`/`big_*`."""
    out = Path(out)
    if line_counts is not None:
        if not line_counts or min(line_counts) < 1:
            raise GenerateError("line_counts needs at least one invoice, each of at least one line")
        invoices, lines, big_invoices, big_lines = len(line_counts), max(line_counts), 0, 0
    bal = balances or Balances()
    _check(invoices, lines, resources, big_invoices, big_lines, bal)
    _empty_folder(out, force)
    rng = random.Random(seed)
    res_list, inventory = _inventory(rng, resources)

    history: list[dict[str, Any]] = []
    nets: dict[tuple[int, int], Decimal] = {}
    periods = _periods(invoices + big_invoices)
    sizes = [lines] * invoices + [big_lines] * big_invoices  # oldest first: the big ones are the latest months
    if line_counts is not None:
        sizes = list(line_counts)
    old_cutoff = len(periods) // 4
    for k, (period, n_lines) in enumerate(zip(periods, sizes, strict=True)):
        new_products = bal.new_products if k == len(periods) - 1 else 0  # only the last invoice has them
        nets[period], entries = _invoice(out, rng, res_list, k, period, n_lines, new_products, k < old_cutoff)
        history.extend(entries)
    history.sort(key=lambda h: h["date"], reverse=True)

    balance_rows = _default_balances(rng)
    if bal.months:
        balance_rows = balance_series(nets, bal, seed)
    (out / "billing_history.json").write_text(json.dumps(history, indent=1) + "\n")
    (out / "balance.json").write_text(json.dumps(balance_rows, indent=1) + "\n")
    (out / "resources.json").write_text(json.dumps(inventory, indent=1) + "\n")
    return {
        "invoices": invoices + big_invoices,
        "lines": lines,
        "big_invoices": big_invoices,
        "big_lines": big_lines if big_invoices else 0,
        "cost_lines": sum(sizes),
        "resources": resources,
        "history_entries": len(history),
        "balances": len(balance_rows),
    }


def _new_product_rows(net: Decimal, n: int, start: datetime, end: datetime) -> list[dict[str, str]]:
    """`n` products never billed before, each about a fifth of the invoice's net so far."""
    hours = int((end - start).total_seconds() // 3600)
    amount = max(Decimal("20.00"), (net / 5).quantize(CENT, rounding=ROUND_HALF_UP))
    return [
        {
            "product": product,
            "group_description": "",
            "description": f"{product.lower().replace(' ', '-')}-01 (new)",
            "hours": str(hours),
            "start": _ts(start),
            "end": _ts(end),
            "USD": _usd(amount),
            "project_name": "",
            "category": "paas",
        }
        for product in NEW_PRODUCTS[:n]
    ]


def _day_weights(days: int, trend: float, rng: random.Random) -> list[Decimal]:
    """Each day's share of a month: a linear tilt (`trend`) and +-5% of day-to-day noise."""
    tilt = Decimal(str(trend))
    return [
        (1 + tilt * Decimal(d) / max(1, days - 1)) * Decimal(str(round(rng.uniform(0.95, 1.05), 4)))
        for d in range(days)
    ]


def _spread(total_minor: int, weights: list[Decimal]) -> list[int]:
    """Integer minor units per day, in proportion to the weights, adding up to `total_minor` exactly."""
    whole = sum(weights, Decimal(0))
    out, given, acc = [], 0, Decimal(0)
    for w in weights:
        acc += w
        upto = int((Decimal(total_minor) * acc / whole).quantize(Decimal(1), rounding=ROUND_HALF_UP))
        out.append(upto - given)
        given = upto
    return out


def balance_series(nets: dict[tuple[int, int], Decimal], bal: Balances, seed: int) -> list[dict[str, str]]:
    """Snapshots every `step_hours` at :07 over the last `months` invoiced months and the current month so far;
    each past month's accrual ends at its invoice's net amount (what the forecast's error is measured on)."""
    rng = random.Random(seed * 7919 + 17)  # its own stream: the invoices stay byte for byte the same
    months = sorted(nets)[-bal.months :]
    daily: list[tuple[datetime, int]] = []  # (day start, usage that day in minor units)
    for y, m in months:
        days = calendar.monthrange(y, m)[1]
        total = int(nets[(y, m)] * 100)
        for d, amount in enumerate(_spread(total, _day_weights(days, bal.trend, rng))):
            daily.append((datetime(y, m, 1, tzinfo=UTC) + timedelta(days=d), amount))
    ly, lm = months[-1]
    cy, cm = (ly, lm + 1) if lm < 12 else (ly + 1, 1)
    last_days = calendar.monthrange(ly, lm)[1]
    rate = Decimal(int(nets[(ly, lm)] * 100)) / last_days
    cur_days = calendar.monthrange(cy, cm)[1]
    weights = _day_weights(cur_days, bal.trend, rng)
    mean_w = sum(weights, Decimal(0)) / cur_days
    for d in range(bal.current_days):
        factor = Decimal(str(bal.spike_factor)) if bal.spike_day == d + 1 else Decimal(1)
        amount = int((rate * weights[d] / mean_w * factor).quantize(Decimal(1), rounding=ROUND_HALF_UP))
        daily.append((datetime(cy, cm, 1, tzinfo=UTC) + timedelta(days=d), amount))
    out: list[dict[str, str]] = []
    mtd = 0
    for day, amount in daily:
        if day.day == 1:
            mtd = 0
        for h in range(0, 24, bal.step_hours):
            at = day + timedelta(hours=h, minutes=7)
            if at.month == cm and at.day == bal.current_days and h > 10:
                break  # the current month stops mid-morning of its last day, like a live account
            # Usage accrues evenly through the day: the snapshot at h:07 has h/24 of the day (the 00:07 one, none).
            value = mtd + amount * h // 24
            text = format(Decimal(value) / 100, ".2f")
            out.append(
                {
                    "month_to_date_balance": text,
                    "account_balance": "0.00",
                    "month_to_date_usage": text,
                    "generated_at": _iso(at),
                }
            )
        mtd += amount
    return out
