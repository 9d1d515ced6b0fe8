"""Pure poller logic: DigitalOcean JSON → typed events, invoice periods, resource identity, resources gone (history records).

No I/O here. Every event's data is built only from what DigitalOcean returned (never the poll time), so
polling unchanged data again yields the same deterministic event ids.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from shared.digitalocean import invoice_listing
from shared.events import Balance, BillingHistoryEntry, InvoiceDiscovered, Resource
from shared.money import MoneyError, money_from_json

# The inventory first: invoices discovered by the history poll are ingested and matched right away, and
# a cost line is matched against the inventory the matcher holds at that moment.
JOBS: tuple[str, ...] = ("resources", "balance", "history")

_MONTHS = {
    name: i
    for i, names in enumerate(
        [
            ("jan", "january"),
            ("feb", "february"),
            ("mar", "march"),
            ("apr", "april"),
            ("may",),
            ("jun", "june"),
            ("jul", "july"),
            ("aug", "august"),
            ("sep", "sept", "september"),
            ("oct", "october"),
            ("nov", "november"),
            ("dec", "december"),
        ],
        start=1,
    )
    for name in names
}
_INVOICE_FOR = re.compile(r"\bfor\s+([A-Za-z]+)\.?\s+(\d{4})\b", re.IGNORECASE)
_YEAR_MONTH = re.compile(r"^\s*(\d{4})-(\d{2})(?:-\d{2})?\s*$")


class BadEntry(ValueError):
    """A DigitalOcean object the poller cannot turn into an event (logged and counted, never blocking)."""


def parse_time(value: Any, what: str = "date") -> datetime:
    """ISO-8601 from DigitalOcean (`2019-07-09T15:01:12Z`) → aware datetime (UTC when no offset)."""
    if not isinstance(value, str) or not value.strip():
        raise BadEntry(f"{what} missing or not a string: {value!r}")
    try:
        dt = datetime.fromisoformat(value.strip())
    except ValueError:
        raise BadEntry(f"{what} is not ISO-8601: {value!r}") from None
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def _minor(raw: Mapping[str, Any], field: str, currency: str) -> int:
    """A money field: a string as DigitalOcean sends it, or an exact JSON number (never a float)."""
    try:
        return money_from_json(raw.get(field), currency, what=field)
    except MoneyError as e:
        raise BadEntry(f"{field}: {e}") from None


# ---------------------------------------------------------------------------------------------- balance
def balance_event(raw: Mapping[str, Any], currency: str = "USD") -> Balance:
    return Balance(
        month_to_date_balance_minor=_minor(raw, "month_to_date_balance", currency),
        account_balance_minor=_minor(raw, "account_balance", currency),
        month_to_date_usage_minor=_minor(raw, "month_to_date_usage", currency),
        currency=currency,
        generated_at=parse_time(raw.get("generated_at"), "generated_at"),
        raw={k: v for k, v in raw.items() if isinstance(v, str)},
    )


# ---------------------------------------------------------------------------------------------- history
def history_entry(raw: Mapping[str, Any], currency: str = "USD") -> BillingHistoryEntry:
    entry_type = raw.get("type")
    if not isinstance(entry_type, str) or not entry_type:
        raise BadEntry(f"billing-history entry without a type: {raw!r}")
    return BillingHistoryEntry(
        entry_type=entry_type,
        description=str(raw.get("description") or ""),
        amount_minor=_minor(raw, "amount", currency),
        currency=currency,
        date=parse_time(raw.get("date")),
        invoice_id=_opt_str(raw.get("invoice_id")),
        invoice_uuid=_opt_str(raw.get("invoice_uuid")),
    )


def is_invoice(entry: BillingHistoryEntry) -> bool:
    return entry.entry_type.lower() == "invoice"


def period_from_listing(invoice_period: Any) -> str | None:
    """`invoice_period` of /v2/customers/my/invoices ("YYYY-MM") → "YYYY-MM-01"."""
    if not isinstance(invoice_period, str):
        return None
    m = _YEAR_MONTH.match(invoice_period)
    if not m:
        return None
    year, month = int(m.group(1)), int(m.group(2))
    return f"{year:04d}-{month:02d}-01" if 1 <= month <= 12 and year >= 1970 else None


def period_from_description(description: str) -> str | None:
    """ "Invoice for May 2018" → "2018-05-01" (month names full or abbreviated, any case)."""
    m = _INVOICE_FOR.search(description or "")
    if not m:
        return None
    month = _MONTHS.get(m.group(1).lower())
    return f"{int(m.group(2)):04d}-{month:02d}-01" if month else None


def period_before(invoice_date: date) -> str:
    """DigitalOcean invoices a month on the 1st of the next: the period is the month before the date."""
    year, month = (invoice_date.year, invoice_date.month - 1) if invoice_date.month > 1 else (invoice_date.year - 1, 12)
    return f"{year:04d}-{month:02d}-01"


def invoice_period(entry: BillingHistoryEntry, listing_period: str | None = None) -> str:
    """Billing period start: the /invoices listing's `invoice_period` when known, else the description's
    "Invoice for <Month> <Year>", else the month before the invoice date."""
    return (
        period_from_listing(listing_period)
        or period_from_description(entry.description)
        or period_before(entry.date.date())
    )


def invoice_discovered(
    entry: BillingHistoryEntry, listing_period: str | None = None, listed_amount_minor: int | None = None
) -> InvoiceDiscovered:
    if not entry.invoice_uuid:
        raise BadEntry(f"Invoice entry without invoice_uuid ({entry.description!r}, {entry.date.date()})")
    return InvoiceDiscovered(
        invoice_uuid=entry.invoice_uuid,
        invoice_id=entry.invoice_id,
        period=invoice_period(entry, listing_period),
        description=entry.description,
        amount_minor=entry.amount_minor,
        currency=entry.currency,
        date=entry.date,
        listed_amount_minor=listed_amount_minor,
    )


def listing_periods(invoices: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    """invoice uuid → invoice_period from the /invoices listing."""
    return {u: x.period for u, x in invoice_listing(invoices).items() if x.period is not None}


# ---------------------------------------------------------------------------------------------- resources
def resource_key(account: str, kind: str, resource_id: str) -> str:
    return f"{account}:{kind}:{resource_id}"


def _opt_str(v: Any) -> str | None:
    return None if v is None or v == "" else str(v)


def _region(v: Any) -> str:
    if isinstance(v, Mapping):
        return str(v.get("slug") or "")
    if isinstance(v, str):
        return v
    if isinstance(v, list):
        return ",".join(sorted(str(x) for x in v if x))
    return ""


def _pick(raw: Mapping[str, Any], *fields: str) -> dict[str, Any]:
    return {f: raw[f] for f in fields if raw.get(f) not in (None, "", [], {})}


def resource_from(kind: str, raw: Mapping[str, Any]) -> Resource:
    """One listed object → a Resource. Identity per the project's vocabulary; attributes are a stable
    whitelist (no status, usage or timestamps that change between polls) so unchanged resources keep their id."""
    if kind in ("floating_ip", "reserved_ip"):
        ip = raw.get("ip")
        if not ip:
            raise BadEntry(f"{kind} without an ip")
        droplet = raw.get("droplet")
        attrs = {"droplet_id": str(droplet["id"])} if isinstance(droplet, Mapping) and droplet.get("id") else {}
        if raw.get("project_id"):
            attrs["project_id"] = raw["project_id"]
        return Resource(
            kind=kind, resource_id=str(ip), name=str(ip), region=_region(raw.get("region")), attributes=attrs
        )
    if kind == "registry":
        name = raw.get("name")
        if not name:
            raise BadEntry("registry without a name")
        return Resource(
            kind=kind,
            resource_id=str(name),
            name=str(name),
            region=_region(raw.get("region")),
            attributes=_pick(raw, "created_at"),
        )

    rid = raw.get("id")
    if rid is None or rid == "":
        raise BadEntry(f"{kind} without an id")
    if kind == "app":
        raw_spec = raw.get("spec")
        spec: Mapping[str, Any] = raw_spec if isinstance(raw_spec, Mapping) else {}
        name = spec.get("name") or raw.get("name")
        region = _region(raw.get("region")) or _region(spec.get("region"))
        attrs = _pick(raw, "tier_slug", "created_at")
    else:
        name = raw.get("name")
        region = _region(raw.get("region") if "region" in raw else raw.get("regions"))
        attrs = _attributes(kind, raw)
    if not name:
        raise BadEntry(f"{kind} {rid} without a name")
    return Resource(kind=kind, resource_id=str(rid), name=str(name), region=region, attributes=attrs)


def _attributes(kind: str, raw: Mapping[str, Any]) -> dict[str, Any]:
    if kind in ("droplet", "gpu_droplet"):
        return _pick(raw, "size_slug", "tags", "created_at")
    if kind == "volume":
        return _pick(raw, "size_gigabytes", "tags", "created_at")
    if kind == "database":
        return _pick(raw, "engine", "version", "size", "num_nodes", "tags", "created_at")
    if kind == "load_balancer":
        return _pick(raw, "size", "size_unit", "created_at")
    if kind == "kubernetes_cluster":
        pools = raw.get("node_pools") or []
        attrs = _pick(raw, "created_at", "tags")
        names = [{"name": p.get("name"), "size": p.get("size")} for p in pools if isinstance(p, Mapping)]
        if names:
            attrs["node_pools"] = sorted(names, key=lambda p: str(p["name"]))
        return attrs
    if kind == "snapshot":
        return _pick(raw, "resource_type", "resource_id", "size_gigabytes", "created_at")
    return {}


@dataclass(frozen=True)
class Known:
    """A resource the previous syncs listed (the poller's store): its last record and when it was seen."""

    name: str
    first_seen: datetime
    last_seen: datetime
    resource: Mapping[str, Any] | None = None  # the last Resource data sent (None: stored before history)


def gone_record(kind: str, resource_id: str, known: Known) -> Resource:
    """The history record of a resource no longer listed: its last known data, `exists=False`, seen times.

    Built from stored data only (never the clock), so sending it twice sends the same event."""
    base: dict[str, Any] = dict(known.resource or {})
    base.update(kind=kind, resource_id=resource_id)
    base.setdefault("name", known.name)
    base.update(exists=False, first_seen=known.first_seen, last_seen=known.last_seen)
    return Resource.model_validate(base)


@dataclass(frozen=True)
class Gone:
    kind: str
    resource_id: str


def tombstones(
    previous: Mapping[str, set[str]], current: Mapping[str, set[str]], listed_kinds: Iterable[str]
) -> list[Gone]:
    """Resources known before and absent now, only for kinds whose listing succeeded this time
    (a failed listing says nothing about what exists)."""
    out: list[Gone] = []
    for kind in sorted(set(listed_kinds)):
        for rid in sorted(previous.get(kind, set()) - current.get(kind, set())):
            out.append(Gone(kind, rid))
    return out
