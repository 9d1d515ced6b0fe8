"""Scenario folders: the data the DigitalOcean simulator serves, validated up front.

A scenario is a folder anyone can fill with their own account's data (see sims/README.md):

- `balance.json`: one balance snapshot, or a list of them (a series served in turn, then the latest);
- `billing_history.json`: a list of billing-history entries in DigitalOcean's shape (money as strings);
- `invoices.json` (optional): the `/v2/customers/my/invoices` list; derived from the history otherwise;
- `invoices/<uuid>.csv`: one CSV per Invoice entry, served byte-for-byte;
- `invoices/<uuid>.json` (optional): the invoice's items; derived from the CSV otherwise;
- `invoices/<uuid>.summary.json` (optional): the invoice summary; derived from the CSV otherwise;
- `resources.json`: an object keyed by DigitalOcean listing key (`droplets`, `volumes`, ...);
- `resources_past.json` (optional): the same shape, an earlier inventory (resources destroyed since), served
  instead of `resources.json` after `PUT /_sim/inventory {"inventory": "past"}`.
  GPU droplets are droplets whose `size_slug` starts with `gpu-`: served only under `type=gpus`.

Every file is checked when the scenario is loaded, so a broken folder fails at start with an error naming
the file, not later with a confusing HTTP answer. An invoice CSV is the exception: it is what DigitalOcean
serves and the client must cope with whatever that is, so a CSV that is not UTF-8, lacks a column or has a
bad row is served byte for byte anyway, with a warning at start (`Scenario.warnings`). CSV bytes are read
from disk on each request (a generated scenario may be large), everything else is held in memory.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from functools import lru_cache
from pathlib import Path
from typing import Any

from shared.money import MoneyError, parse_decimal

log = logging.getLogger(__name__)

SCENARIOS_DIR = Path(__file__).resolve().parent / "scenarios"

# The April 2026 invoice of the built-in `april-2026` scenario (the original system's verification target).
APRIL_2026_INVOICE_UUID = "3f6a9c2e-8b41-4d7a-9e15-c2d04b7a6e01"
APRIL_2026_INVOICE_ID = "9217394"

HISTORY_TYPES = frozenset(
    {
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
    }
)
BALANCE_FIELDS = ("month_to_date_balance", "account_balance", "month_to_date_usage", "generated_at")

# listing key -> (URL path under /v2, paginated?, identity check)
RESOURCE_LISTINGS: dict[str, tuple[str, bool]] = {
    "droplets": ("droplets", True),
    "volumes": ("volumes", True),
    "databases": ("databases", False),
    "load_balancers": ("load_balancers", True),
    "kubernetes_clusters": ("kubernetes/clusters", True),
    "apps": ("apps", True),
    "snapshots": ("snapshots", True),
    "floating_ips": ("floating_ips", True),
    "reserved_ips": ("reserved_ips", True),
    "registries": ("registries", False),
}

CSV_REQUIRED_COLUMNS = ("product", "description", "USD")
CSV_COLUMNS_9 = (
    "product",
    "group_description",
    "description",
    "hours",
    "start",
    "end",
    "USD",
    "project_name",
    "category",
)
CSV_COLUMNS_8 = CSV_COLUMNS_9[:-1]


class ScenarioError(ValueError):
    """A scenario folder or file that cannot be served; `file` names the culprit."""

    def __init__(self, file: Path | str, message: str) -> None:
        self.file = str(file)
        super().__init__(f"{self.file}: {message}")


@dataclass
class Scenario:
    """A validated scenario. Built by `load_scenario`; the DigitalOcean simulator only reads it."""

    name: str
    root: Path
    balances: list[dict[str, Any]]
    billing_history: list[dict[str, Any]]
    invoices: list[dict[str, Any]]
    invoice_preview: dict[str, Any] | None
    resources: dict[str, list[dict[str, Any]]]
    resources_past: dict[str, list[dict[str, Any]]] | None = None
    csv_paths: dict[str, Path] = field(default_factory=dict)
    items_paths: dict[str, Path] = field(default_factory=dict)
    summary_paths: dict[str, Path] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._by_uuid = {inv["invoice_uuid"]: inv for inv in self.invoices}
        self._items_cache: dict[str, list[dict[str, Any]]] = {}
        self._summary_cache: dict[str, dict[str, Any]] = {}

    # -- invoices
    def has_invoice(self, invoice_uuid: str) -> bool:
        return invoice_uuid in self.csv_paths

    def invoice(self, invoice_uuid: str) -> dict[str, Any] | None:
        return self._by_uuid.get(invoice_uuid)

    def csv_bytes(self, invoice_uuid: str) -> bytes:
        """The scenario's CSV file, byte for byte."""
        return self.csv_paths[invoice_uuid].read_bytes()

    def csv_filename(self, invoice_uuid: str) -> str:
        """DigitalOcean's attachment name: `DigitalOcean Invoice 2026 Apr (9217394-418071234).csv`."""
        inv = self._by_uuid.get(invoice_uuid, {})
        period = inv.get("invoice_period", "")
        try:
            label = datetime.strptime(period, "%Y-%m").strftime("%Y %b")
        except ValueError:
            label = period or "unknown"
        invoice_id = inv.get("invoice_id", "0")
        return f"DigitalOcean Invoice {label} ({invoice_id}-{uuid.UUID(invoice_uuid).int % 10**9}).csv"

    def items(self, invoice_uuid: str) -> list[dict[str, Any]]:
        if invoice_uuid not in self._items_cache:
            if invoice_uuid in self.items_paths:
                self._items_cache[invoice_uuid] = _read_json(self.items_paths[invoice_uuid])
            else:
                self._items_cache[invoice_uuid] = items_from_csv(self.csv_bytes(invoice_uuid))
        return self._items_cache[invoice_uuid]

    def summary(self, invoice_uuid: str) -> dict[str, Any]:
        if invoice_uuid not in self._summary_cache:
            if invoice_uuid in self.summary_paths:
                self._summary_cache[invoice_uuid] = _read_json(self.summary_paths[invoice_uuid])
            else:
                inv = self._by_uuid.get(invoice_uuid, {"invoice_uuid": invoice_uuid})
                self._summary_cache[invoice_uuid] = summary_from_items(inv, self.items(invoice_uuid))
        return self._summary_cache[invoice_uuid]


# ------------------------------------------------------------------------------------------- derivations
def _iso_from_csv_time(value: str) -> str:
    """`2026-04-01 00:00:00 +0000` -> `2026-04-01T00:00:00Z` (the items endpoint's shape)."""
    try:
        return datetime.strptime(value, "%Y-%m-%d %H:%M:%S %z").astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    except ValueError:
        return value


def csv_rows(data: bytes) -> list[dict[str, str]]:
    """The rows by header name; lenient (a scenario may hold a deliberately broken CSV): undecodable bytes
    are replaced and an unreadable tail is dropped, since only the items and summary derive from this."""
    rows: list[dict[str, str]] = []
    reader = csv.DictReader(io.StringIO(data.decode("utf-8-sig", errors="replace").replace("\x00", ""), newline=""))
    try:
        for row in reader:
            rows.append({k: v for k, v in row.items() if isinstance(k, str) and isinstance(v, str)})
    except csv.Error:
        pass
    return rows


def _amount(row: dict[str, str]) -> str:
    try:
        return str(parse_decimal(row.get("USD", "0") or "0"))
    except MoneyError:
        return "0"


def items_from_csv(data: bytes) -> list[dict[str, Any]]:
    """Invoice items as `/v2/customers/my/invoices/{uuid}` returns them (all strings; CSVs have no ids)."""
    out = []
    for row in csv_rows(data):
        item = {
            "product": row.get("product", ""),
            "group_description": row.get("group_description", ""),
            "description": row.get("description", ""),
            "amount": _amount(row),
            "duration": row.get("hours", ""),
            "duration_unit": "Hours" if row.get("hours") else "",
            "start_time": _iso_from_csv_time(row.get("start", "")),
            "end_time": _iso_from_csv_time(row.get("end", "")),
            "project_name": row.get("project_name", ""),
        }
        if "category" in row:
            item["category"] = row["category"] or ""
        out.append(item)
    return out


def summary_from_items(invoice: dict[str, Any], items: list[dict[str, Any]]) -> dict[str, Any]:
    """A `/summary` body computed from the items: product charges per product, taxes, credits."""
    products: dict[str, list[Decimal]] = {}
    taxes = Decimal("0")
    credits = Decimal("0")
    for it in items:
        amount = parse_decimal(it.get("amount") or "0")
        if it.get("product") == "Taxes":
            taxes += amount
        elif amount < 0:
            credits += amount
        else:
            products.setdefault(it.get("product") or "Other", []).append(amount)
    charges = sum((sum(v, Decimal("0")) for v in products.values()), Decimal("0"))
    total = charges + taxes + credits
    return {
        "invoice_uuid": invoice.get("invoice_uuid", ""),
        "invoice_id": invoice.get("invoice_id", ""),
        "billing_period": invoice.get("invoice_period", ""),
        "amount": invoice.get("amount", f"{total:.2f}"),
        "user_name": "Platform Team",
        "user_company": "Arcadia Cloud Pty Ltd",
        "user_email": "billing@arcadia.example",
        "user_billing_address": {
            "address_line1": "1 Example Street",
            "address_line2": "",
            "city": "Sydney",
            "region": "NSW",
            "postal_code": "2000",
            "country_iso2_code": "AU",
            "created_at": "2014-10-01T00:00:00Z",
            "updated_at": "2024-01-01T00:00:00Z",
        },
        "product_charges": {
            "name": "Product usage charges",
            "amount": f"{charges:.2f}",
            "items": [
                {"name": name, "amount": f"{sum(v, Decimal('0')):.2f}", "count": str(len(v))}
                for name, v in sorted(products.items())
            ],
        },
        "overages": {"name": "Overages", "amount": "0.00"},
        "taxes": {"name": "Taxes", "amount": f"{taxes:.2f}"},
        "credits_and_adjustments": {"name": "Credits & adjustments", "amount": f"{credits:.2f}"},
    }


def _period_before(date_text: str) -> str:
    """An invoice dated 2026-05-01 bills 2026-04."""
    d = datetime.fromisoformat(date_text.replace("Z", "+00:00"))
    year, month = (d.year, d.month - 1) if d.month > 1 else (d.year - 1, 12)
    return f"{year:04d}-{month:02d}"


def invoices_from_history(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {
            "invoice_uuid": e["invoice_uuid"],
            "invoice_id": e.get("invoice_id", ""),
            "amount": e["amount"],
            "invoice_period": _period_before(e["date"]),
        }
        for e in history
        if e.get("type") == "Invoice" and e.get("invoice_uuid")
    ]


def preview_from_balance(balance: dict[str, Any]) -> dict[str, Any]:
    gen = balance["generated_at"]
    return {
        "invoice_uuid": str(uuid.uuid5(uuid.NAMESPACE_URL, f"cloudbill-sim-preview:{gen[:7]}")),
        "invoice_id": "",
        "amount": balance["month_to_date_usage"],
        "invoice_period": gen[:7],
        "updated_at": gen,
    }


# ---------------------------------------------------------------------------------------------- loading
def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise ScenarioError(path, "missing file")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ScenarioError(path, f"not valid JSON ({e})") from e


def _money(path: Path, where: str, value: Any) -> None:
    if not isinstance(value, str):
        raise ScenarioError(path, f'{where} must be a string like "12.34" (DigitalOcean sends strings), got {value!r}')
    try:
        parse_decimal(value)
    except MoneyError as e:
        raise ScenarioError(path, f"{where}: {e}") from e


def _timestamp(path: Path, where: str, value: Any) -> None:
    if not isinstance(value, str):
        raise ScenarioError(path, f"{where} must be an ISO-8601 string, got {value!r}")
    try:
        datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as e:
        raise ScenarioError(path, f"{where}: not an ISO-8601 timestamp: {value!r}") from e


def _load_balances(root: Path) -> list[dict[str, Any]]:
    path = root / "balance.json"
    data = _read_json(path)
    snaps = data if isinstance(data, list) else [data]
    if not snaps:
        raise ScenarioError(path, "empty list: at least one balance snapshot is needed")
    for i, snap in enumerate(snaps):
        where = f"snapshot {i}" if isinstance(data, list) else "snapshot"
        if not isinstance(snap, dict):
            raise ScenarioError(path, f"{where} must be an object")
        for f in BALANCE_FIELDS:
            if f not in snap:
                raise ScenarioError(path, f"{where} lacks {f!r}")
        for f in BALANCE_FIELDS[:3]:
            _money(path, f"{where}.{f}", snap[f])
        _timestamp(path, f"{where}.generated_at", snap["generated_at"])
    return snaps


def _load_history(root: Path) -> list[dict[str, Any]]:
    path = root / "billing_history.json"
    data = _read_json(path)
    if isinstance(data, dict) and isinstance(data.get("billing_history"), list):
        data = data["billing_history"]  # a saved API answer is accepted as is
    if not isinstance(data, list):
        raise ScenarioError(path, "must be a list of billing-history entries")
    for i, e in enumerate(data):
        where = f"entry {i}"
        if not isinstance(e, dict):
            raise ScenarioError(path, f"{where} must be an object")
        for f in ("description", "amount", "date", "type"):
            if f not in e:
                raise ScenarioError(path, f"{where} lacks {f!r}")
        if e["type"] not in HISTORY_TYPES:
            raise ScenarioError(
                path, f"{where}: unknown type {e['type']!r} (one of {', '.join(sorted(HISTORY_TYPES))})"
            )
        _money(path, f"{where}.amount", e["amount"])
        _timestamp(path, f"{where}.date", e["date"])
        for f in ("invoice_id", "invoice_uuid", "description"):
            if f in e and not isinstance(e[f], str):
                raise ScenarioError(path, f"{where}.{f} must be a string")
        if e["type"] == "Invoice" and not e.get("invoice_uuid"):
            raise ScenarioError(path, f"{where}: an Invoice entry needs an invoice_uuid")
    return data


def _load_invoices(root: Path, history: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    path = root / "invoices.json"
    if not path.exists():
        return invoices_from_history(history), None
    data = _read_json(path)
    preview = None
    if isinstance(data, dict):
        preview = data.get("invoice_preview")
        data = data.get("invoices")
    if not isinstance(data, list):
        raise ScenarioError(path, 'must be a list of invoices (or {"invoices": [...], "invoice_preview": {...}})')
    for i, inv in enumerate(data):
        if not isinstance(inv, dict) or not isinstance(inv.get("invoice_uuid"), str):
            raise ScenarioError(path, f"invoice {i} must be an object with a string invoice_uuid")
        _money(path, f"invoice {i}.amount", inv.get("amount"))
    return data, preview


def check_csv(data: bytes) -> str | None:
    """What a client will find wrong with this CSV, or None. Never raises: the file is served regardless."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        return f"not UTF-8 ({e})"
    nul = data.find(b"\x00")
    if nul >= 0:
        return f"a NUL byte at offset {nul}"
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        return "empty CSV: a header row is needed"
    except csv.Error as e:
        return f"unreadable CSV header ({e})"
    missing = [c for c in CSV_REQUIRED_COLUMNS if c not in header]
    if missing:
        return f"CSV header lacks {', '.join(missing)} (header: {','.join(header)})"
    usd = header.index("USD")
    try:
        for n, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) != len(header):
                return f"line {n} has {len(row)} fields, the header {len(header)}"
            try:
                parse_decimal(row[usd])
            except MoneyError as e:
                return f"line {n}: USD {e}"
    except csv.Error as e:
        return f"unreadable CSV ({e})"
    return None


def _load_invoice_files(
    root: Path, history: list[dict[str, Any]], invoices: list[dict[str, Any]], warnings: list[str]
) -> tuple[dict[str, Path], dict[str, Path], dict[str, Path]]:
    folder = root / "invoices"
    wanted = [e["invoice_uuid"] for e in history if e.get("invoice_uuid")] + [i["invoice_uuid"] for i in invoices]
    csvs: dict[str, Path] = {}
    items: dict[str, Path] = {}
    summaries: dict[str, Path] = {}
    present = {p.name for p in folder.iterdir()} if folder.is_dir() else set()
    for u in dict.fromkeys(wanted):
        p = folder / f"{u}.csv"
        if p.name not in present:
            raise ScenarioError(p, f"missing file (invoice {u} is listed in billing_history.json/invoices.json)")
        csvs[u] = p
    # Every CSV in the folder is served, listed or not, and checked.
    for name in sorted(present):
        p = folder / name
        if name.endswith(".summary.json"):
            summaries[name.removesuffix(".summary.json")] = p
        elif name.endswith(".json"):
            items[name.removesuffix(".json")] = p
        elif name.endswith(".csv"):
            csvs.setdefault(name.removesuffix(".csv"), p)
    for p in csvs.values():
        problem = check_csv(p.read_bytes())
        if problem:
            warnings.append(f"{p}: {problem} (served byte for byte anyway)")
    for u, p in items.items():
        data = _read_json(p)
        if isinstance(data, dict):
            data = data.get("invoice_items")
        if not isinstance(data, list) or not all(isinstance(x, dict) for x in data):
            raise ScenarioError(p, "must be a list of invoice items (objects)")
        for i, it in enumerate(data):
            if "amount" in it:
                _money(p, f"item {i}.amount", it["amount"])
        if u not in csvs:
            raise ScenarioError(p, f"items without their CSV: invoices/{u}.csv is a missing file")
    for u, p in summaries.items():
        data = _read_json(p)
        if not isinstance(data, dict):
            raise ScenarioError(p, "must be an invoice summary object")
        if "amount" in data:
            _money(p, "amount", data["amount"])
        if u not in csvs:
            raise ScenarioError(p, f"summary without its CSV: invoices/{u}.csv is a missing file")
    return csvs, items, summaries


_RESOURCE_IDENTITY: dict[str, Callable[[dict[str, Any]], bool]] = {
    "droplets": lambda r: isinstance(r.get("id"), int) and isinstance(r.get("name"), str),
    "volumes": lambda r: isinstance(r.get("id"), str) and isinstance(r.get("name"), str),
    "databases": lambda r: isinstance(r.get("id"), str) and isinstance(r.get("name"), str),
    "load_balancers": lambda r: isinstance(r.get("id"), str) and isinstance(r.get("name"), str),
    "kubernetes_clusters": lambda r: isinstance(r.get("id"), str) and isinstance(r.get("name"), str),
    "apps": lambda r: isinstance(r.get("id"), str) and isinstance((r.get("spec") or {}).get("name"), str),
    "snapshots": lambda r: isinstance(r.get("id"), str) and isinstance(r.get("name"), str),
    "floating_ips": lambda r: isinstance(r.get("ip"), str),
    "reserved_ips": lambda r: isinstance(r.get("ip"), str),
    "registries": lambda r: isinstance(r.get("name"), str),
}
_IDENTITY_TEXT = {
    "droplets": "an integer id and a name",
    "apps": "an id and spec.name",
    "floating_ips": "an ip",
    "reserved_ips": "an ip",
    "registries": "a name",
}


def _load_resources(root: Path, file: str = "resources.json") -> dict[str, list[dict[str, Any]]]:
    path = root / file
    data = _read_json(path)
    if not isinstance(data, dict):
        raise ScenarioError(path, f"must be an object keyed by listing ({', '.join(RESOURCE_LISTINGS)})")
    unknown = sorted(set(data) - set(RESOURCE_LISTINGS))
    if unknown:
        raise ScenarioError(
            path, f"unknown listing key(s) {', '.join(unknown)} (known: {', '.join(RESOURCE_LISTINGS)})"
        )
    out: dict[str, list[dict[str, Any]]] = {}
    for key in RESOURCE_LISTINGS:
        items = data.get(key, [])
        if not isinstance(items, list):
            raise ScenarioError(path, f"{key} must be a list")
        for i, r in enumerate(items):
            if not isinstance(r, dict) or not _RESOURCE_IDENTITY[key](r):
                need = _IDENTITY_TEXT.get(key, "a string id and a name")
                raise ScenarioError(path, f"{key}[{i}] must be an object with {need}")
        out[key] = items
    return out


def resolve_scenario_dir(name_or_dir: str | Path) -> Path:
    """A built-in scenario name (`april-2026`) or a folder path."""
    candidate = Path(name_or_dir).expanduser()
    if candidate.is_dir():
        return candidate.resolve()
    builtin = SCENARIOS_DIR / str(name_or_dir)
    if isinstance(name_or_dir, str) and "/" not in name_or_dir and builtin.is_dir():
        return builtin
    names = sorted(p.name for p in SCENARIOS_DIR.iterdir() if p.is_dir() and not p.name.startswith(("_", ".")))
    raise ScenarioError(candidate, f"no such scenario folder (built-in scenarios: {', '.join(names)})")


def load_scenario(name_or_dir: str | Path) -> Scenario:
    """Load and validate every file of a scenario; raises ScenarioError naming the first bad file."""
    root = resolve_scenario_dir(name_or_dir)
    balances = _load_balances(root)
    history = _load_history(root)
    invoices, preview = _load_invoices(root, history)
    warnings: list[str] = []
    csvs, items, summaries = _load_invoice_files(root, history, invoices, warnings)
    resources = _load_resources(root)
    past = _load_resources(root, "resources_past.json") if (root / "resources_past.json").is_file() else None
    for w in warnings:
        log.warning("scenario %s: %s", root.name, w)
    return Scenario(
        name=root.name,
        root=root,
        balances=balances,
        billing_history=history,
        invoices=invoices,
        invoice_preview=preview or preview_from_balance(balances[-1]),
        resources=resources,
        resources_past=past,
        csv_paths=csvs,
        items_paths=items,
        summary_paths=summaries,
        warnings=warnings,
    )


@lru_cache(maxsize=8)
def builtin(name: str) -> Scenario:
    """A built-in scenario, loaded once per process (tests share it)."""
    return load_scenario(SCENARIOS_DIR / name)
