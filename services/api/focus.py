"""FOCUS 1.2 export: one read-model cost line → one FOCUS row. Pure (no I/O) except the two file writers.

FOCUS (the FinOps Foundation's FinOps Open Cost and Usage Specification) is what FinOps tools import. Every
column is derived from what cloudbill holds about a line of an invoice's served revision: the CSV row (product,
description, hours, start/end, amount, project, category), its attribution (kind, name, resource id, rule) and
its invoice (DigitalOcean's invoice id, period, account, currency). Better attribution later (resource ids from
the items JSON, a resource history) flows into ResourceId/Name/Type without changing anything here.

Money is never a float: costs are decimal text made from integer minor units (CSV) or decimal128 (parquet).
Periods are end-exclusive as FOCUS requires: DigitalOcean writes a period end both as `...-30 23:59:59` (the
last second, inclusive) and as `...-01 00:00:00` (exclusive); an end on the last second of an hour is moved one
second on. Where FOCUS and what DigitalOcean gives differ, docs/architecture.md ("FinOps outputs") says how.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import IO, Any, cast

from shared.money import format_minor, minor_digits

FOCUS_VERSION = "1.2"
PROVIDER = "DigitalOcean"

# FOCUS columns in the order written (FOCUS columns first, alphabetically; custom `x_` columns after).
FOCUS_COLUMNS: tuple[str, ...] = (
    "AvailabilityZone",
    "BilledCost",
    "BillingAccountId",
    "BillingAccountName",
    "BillingCurrency",
    "BillingPeriodEnd",
    "BillingPeriodStart",
    "ChargeCategory",
    "ChargeClass",
    "ChargeDescription",
    "ChargeFrequency",
    "ChargePeriodEnd",
    "ChargePeriodStart",
    "CommitmentDiscountCategory",
    "CommitmentDiscountId",
    "CommitmentDiscountName",
    "CommitmentDiscountStatus",
    "CommitmentDiscountType",
    "ConsumedQuantity",
    "ConsumedUnit",
    "ContractedCost",
    "ContractedUnitPrice",
    "EffectiveCost",
    "InvoiceId",
    "InvoiceIssuerName",
    "ListCost",
    "ListUnitPrice",
    "PricingCategory",
    "PricingQuantity",
    "PricingUnit",
    "ProviderName",
    "PublisherName",
    "RegionId",
    "RegionName",
    "ResourceId",
    "ResourceName",
    "ResourceType",
    "ServiceCategory",
    "ServiceName",
    "ServiceSubcategory",
    "SkuId",
    "SkuPriceId",
    "SubAccountId",
    "SubAccountName",
    "Tags",
)
CUSTOM_COLUMNS: tuple[str, ...] = (
    "x_InvoiceUuid",
    "x_InvoiceRevision",
    "x_InvoiceStatus",
    "x_LineIndex",
    "x_ProjectName",
    "x_Category",
    "x_AttributedKind",
    "x_AttributedName",
    "x_AttributionRule",
    "x_UnmatchedReason",
)
COLUMNS: tuple[str, ...] = FOCUS_COLUMNS + CUSTOM_COLUMNS

# FOCUS 1.2's mandatory columns (the spec's feature level "Mandatory"); every one is always written.
MANDATORY: frozenset[str] = frozenset(
    {
        "BilledCost",
        "BillingAccountId",
        "BillingAccountName",
        "BillingCurrency",
        "BillingPeriodEnd",
        "BillingPeriodStart",
        "ChargeCategory",
        "ChargeClass",
        "ChargeDescription",
        "ChargePeriodEnd",
        "ChargePeriodStart",
        "ContractedCost",
        "EffectiveCost",
        "InvoiceIssuerName",
        "ListCost",
        "PricingQuantity",
        "PricingUnit",
        "ProviderName",
        "PublisherName",
        "ServiceCategory",
        "ServiceName",
    }
)
# Mandatory columns FOCUS 1.2 allows to be null (the others never are, in CSV or parquet).
NULLABLE_MANDATORY = frozenset(
    {"BillingAccountName", "ChargeClass", "ChargeDescription", "PricingQuantity", "PricingUnit"}
)
NOT_NULL = MANDATORY - NULLABLE_MANDATORY
COST_COLUMNS = ("BilledCost", "ContractedCost", "EffectiveCost", "ListCost")
QUANTITY_COLUMNS = ("ConsumedQuantity", "PricingQuantity")
DATETIME_COLUMNS = ("BillingPeriodEnd", "BillingPeriodStart", "ChargePeriodEnd", "ChargePeriodStart")

# DigitalOcean product → (ServiceCategory, ServiceSubcategory), FOCUS 1.2's allowed values. A product not listed
# is "Other" / "Other (Other)" rather than a guess; tax lines are "Other" too (FOCUS has no tax service).
SERVICES: dict[str, tuple[str, str]] = {
    "Droplets": ("Compute", "Virtual Machines"),
    "GPU Droplets": ("Compute", "Virtual Machines"),
    "Kubernetes Clusters": ("Compute", "Containers"),
    "Kubernetes": ("Compute", "Containers"),
    "App Platform": ("Compute", "Serverless Compute"),
    "Functions": ("Compute", "Serverless Compute"),
    "Volumes": ("Storage", "Block Storage"),
    "Snapshots": ("Storage", "Backup Storage"),
    "Backups": ("Storage", "Backup Storage"),
    "Droplet Backups": ("Storage", "Backup Storage"),
    "Spaces Subscription": ("Storage", "Object Storage"),
    "Spaces": ("Storage", "Object Storage"),
    "Container Registry": ("Storage", "Other (Storage)"),
    "Managed Databases": ("Databases", "Relational Databases"),
    "Load Balancers": ("Networking", "Application Networking"),
    "Floating IPs": ("Networking", "Network Infrastructure"),
    "Reserved IPs": ("Networking", "Network Infrastructure"),
    "Bandwidth": ("Networking", "Network Connectivity"),
    "Monitoring": ("Management and Governance", "Observability"),
}
OTHER_SERVICE = ("Other", "Other (Other)")

# The attribution's kinds → FOCUS ResourceType and the URN type DigitalOcean uses (`do:<type>:<id>`).
RESOURCE_TYPES: dict[str, tuple[str, str]] = {
    "droplet": ("Droplet", "droplet"),
    "gpu_droplet": ("GPU Droplet", "droplet"),
    "volume": ("Volume", "volume"),
    "database": ("Managed Database", "dbaas"),
    "load_balancer": ("Load Balancer", "loadbalancer"),
    "kubernetes_cluster": ("Kubernetes Cluster", "kubernetes"),
    "app": ("App", "app"),
    "snapshot": ("Snapshot", "snapshot"),
    "floating_ip": ("Floating IP", "floatingip"),
    "reserved_ip": ("Reserved IP", "reservedip"),
    "registry": ("Container Registry", "registry"),
    "spaces": ("Spaces Bucket", "space"),
}


@dataclass(frozen=True)
class ExportLine:
    """What the read model holds about one served cost line (a row of `readmodel.cost_lines` + its invoice)."""

    account: str
    invoice_uuid: str
    invoice_id: str | None
    revision: int
    invoice_status: str
    period: date
    line_index: int
    product: str
    group_description: str
    description: str
    hours: int | None
    start_at: datetime | None
    end_at: datetime | None
    amount_minor: int
    currency: str
    project_name: str
    category: str
    is_tax: bool
    kind: str | None
    name: str | None
    resource_id: str | None
    rule: str | None
    unmatched_reason: str | None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> ExportLine:
        # The query selects exactly these columns, typed as the fields; mypy sees only a dict of Any | None.
        return cls(**{f: row.get(f) for f in cls.__dataclass_fields__})  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------ periods
def month_bounds(period: date) -> tuple[datetime, datetime]:
    """[first instant of the month, first instant of the next month): FOCUS's inclusive start, exclusive end."""
    start = datetime(period.year, period.month, 1, tzinfo=UTC)
    nxt = datetime(period.year + (period.month == 12), period.month % 12 + 1, 1, tzinfo=UTC)
    return start, nxt


def parse_month(text: str) -> date:
    """`2026-04` (or `2026-04-01`) → the period's first day; anything else is a ValueError."""
    t = text.strip()
    try:
        d = date.fromisoformat(t if len(t) > 7 else f"{t}-01")
    except ValueError as e:
        raise ValueError(f"period {text!r} is not YYYY-MM") from e
    if d.day != 1:
        raise ValueError(f"period {text!r} is not the first day of a month")
    return d


def exclusive_end(end: datetime) -> datetime:
    """DigitalOcean's inclusive `hh:59:59` period end → the exclusive instant one second later."""
    end = end.astimezone(UTC)
    if end.minute == 59 and end.second == 59 and end.microsecond == 0:
        return end + timedelta(seconds=1)
    return end


def charge_period(line: ExportLine) -> tuple[datetime, datetime]:
    """The line's own period (start inclusive, end exclusive), the billing period where the CSV says nothing."""
    p_start, p_end = month_bounds(line.period)
    start = line.start_at.astimezone(UTC) if line.start_at else p_start
    end = exclusive_end(line.end_at) if line.end_at else p_end
    if end <= start:  # a zero-length or inverted CSV period: FOCUS wants end > start
        end = start + timedelta(seconds=1)
    return start, end


# ------------------------------------------------------------------------------------------- classification
def charge_category(line: ExportLine) -> str:
    """Tax by the one tax rule (the parser's `is_tax`); a negative non-tax line is a credit; the rest usage."""
    if line.is_tax:
        return "Tax"
    if line.amount_minor < 0:
        return "Credit"
    return "Usage"


def charge_frequency(line: ExportLine, category: str) -> str:
    """Metered hours are usage-based; a credit happens once; tax and flat (hour-less) lines recur monthly."""
    if category == "Credit":
        return "One-Time"
    if category == "Usage" and line.hours is not None:
        return "Usage-Based"
    return "Recurring"


def resource_urn(kind: str, resource_id: str) -> str:
    """DigitalOcean's fully-qualified form, `do:<type>:<id>` (FOCUS: ResourceId SHOULD be fully qualified)."""
    urn_type = RESOURCE_TYPES.get(kind, ("", kind))[1]
    return f"do:{urn_type}:{resource_id}"


def _decimal_text(minor: int, currency: str) -> str:
    return format_minor(minor, currency)


def _ts(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _pricing_quantity(line: ExportLine, category: str) -> tuple[Decimal | None, str | None]:
    """PricingQuantity and PricingUnit: never null for usage (metered hours, else one unit of a flat charge)."""
    if category != "Usage":
        return None, None
    return (Decimal(line.hours), "Hours") if line.hours is not None else (Decimal(1), "Units")


def _resource_columns(line: ExportLine) -> tuple[str | None, str | None, str | None]:
    """ResourceType, ResourceId (fully qualified) and ResourceName of an attributed line, else nulls."""
    if not (line.resource_id and line.kind):
        return None, None, None
    resource_type = RESOURCE_TYPES.get(line.kind, (line.kind, line.kind))[0]
    return resource_type, resource_urn(line.kind, line.resource_id), line.name or None


# Long on purpose: one key per FOCUS column, alphabetical as the specification lists them, easiest to check whole.
def focus_record(line: ExportLine) -> dict[str, Any]:
    """The FOCUS row of one line, typed: costs as Decimal, quantities as Decimal, periods as aware datetimes,
    absent values as None (FOCUS null handling: never an empty string or a placeholder)."""
    category = charge_category(line)
    cost = Decimal(line.amount_minor).scaleb(-minor_digits(line.currency))
    p_start, p_end = month_bounds(line.period)
    c_start, c_end = charge_period(line)
    service_category, subcategory = OTHER_SERVICE if line.is_tax else SERVICES.get(line.product, OTHER_SERVICE)
    metered = category == "Usage" and line.hours is not None
    quantity, unit = _pricing_quantity(line, category)
    resource_type, resource_id, resource_name = _resource_columns(line)
    description = line.description if not line.group_description else f"{line.group_description}: {line.description}"
    return {
        "AvailabilityZone": None,
        "BilledCost": cost,
        "BillingAccountId": line.account,
        "BillingAccountName": line.account,
        "BillingCurrency": line.currency,
        "BillingPeriodEnd": p_end,
        "BillingPeriodStart": p_start,
        "ChargeCategory": category,
        "ChargeClass": None,
        "ChargeDescription": description or None,
        "ChargeFrequency": charge_frequency(line, category),
        "ChargePeriodEnd": c_end,
        "ChargePeriodStart": c_start,
        "CommitmentDiscountCategory": None,
        "CommitmentDiscountId": None,
        "CommitmentDiscountName": None,
        "CommitmentDiscountStatus": None,
        "CommitmentDiscountType": None,
        "ConsumedQuantity": Decimal(cast(int, line.hours)) if metered else None,  # metered: hours is not None
        "ConsumedUnit": "Hours" if metered else None,
        "ContractedCost": cost,
        "ContractedUnitPrice": None,
        "EffectiveCost": cost,
        "InvoiceId": line.invoice_id or line.invoice_uuid,
        "InvoiceIssuerName": PROVIDER,
        "ListCost": cost,
        "ListUnitPrice": None,
        "PricingCategory": "Standard" if category == "Usage" else None,
        "PricingQuantity": quantity,
        "PricingUnit": unit,
        "ProviderName": PROVIDER,
        "PublisherName": PROVIDER,
        "RegionId": None,
        "RegionName": None,
        "ResourceId": resource_id,
        "ResourceName": resource_name,
        "ResourceType": resource_type,
        "ServiceCategory": service_category,
        "ServiceName": line.product or ("Taxes" if line.is_tax else "Other"),
        "ServiceSubcategory": subcategory,
        "SkuId": None,
        "SkuPriceId": None,
        "SubAccountId": None,
        "SubAccountName": None,
        "Tags": None,
        "x_InvoiceUuid": line.invoice_uuid,
        "x_InvoiceRevision": line.revision,
        "x_InvoiceStatus": line.invoice_status,
        "x_LineIndex": line.line_index,
        "x_ProjectName": line.project_name or None,
        "x_Category": line.category or None,
        "x_AttributedKind": line.kind,
        "x_AttributedName": line.name,
        "x_AttributionRule": line.rule,
        "x_UnmatchedReason": line.unmatched_reason,
    }


# ------------------------------------------------------------------------------------------------ writers
def csv_cell(column: str, value: Any) -> str:
    """FOCUS CSV text: ISO 8601 UTC with `Z`, plain decimals (no exponent, no sign for positives), null = empty."""
    if value is None:
        return ""
    if isinstance(value, datetime):
        return _ts(value)
    if isinstance(value, Decimal):
        return f"{value:f}"
    return str(value)


def csv_chunks(records: Iterable[Mapping[str, Any]], *, rows_per_chunk: int = 500) -> Iterator[bytes]:
    """The header, then the rows, as UTF-8 chunks of a few hundred rows (a streamed HTTP body, a file)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(COLUMNS)
    for n, rec in enumerate(records, 1):
        writer.writerow([csv_cell(c, rec[c]) for c in COLUMNS])
        if n % rows_per_chunk == 0:
            yield buf.getvalue().encode()
            buf.seek(0)
            buf.truncate()
    yield buf.getvalue().encode()


def parquet_schema(currency_digits: int = 2) -> Any:
    """Arrow types: costs decimal128 at the currency's scale (exact), quantities decimal128(38, 6), UTC seconds."""
    import pyarrow as pa

    fields = []
    for c in COLUMNS:
        t: pa.DataType
        if c in COST_COLUMNS:
            t = pa.decimal128(38, currency_digits)
        elif c in QUANTITY_COLUMNS:
            t = pa.decimal128(38, 6)
        elif c in DATETIME_COLUMNS:
            t = pa.timestamp("s", tz="UTC")
        elif c in ("x_InvoiceRevision", "x_LineIndex"):
            t = pa.int64()
        else:
            t = pa.string()
        fields.append(pa.field(c, t, nullable=c not in NOT_NULL))
    return pa.schema(fields, metadata={"focus_version": FOCUS_VERSION, "generator": "cloudbill"})


def write_parquet(
    records: Iterable[Mapping[str, Any]], out: str | Path | IO[bytes], *, currency_digits: int = 2, batch: int = 10_000
) -> int:
    """Row groups of `batch` rows (memory stays flat however big the period); returns the rows written."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = parquet_schema(currency_digits)
    written = 0
    with pq.ParquetWriter(out, schema) as writer:
        chunk: list[Mapping[str, Any]] = []

        def flush() -> None:
            if chunk:
                cols = {c: [_arrow_value(c, r[c]) for r in chunk] for c in COLUMNS}
                writer.write_table(pa.Table.from_pydict(cols, schema=schema))
                chunk.clear()

        for rec in records:
            chunk.append(rec)
            written += 1
            if len(chunk) >= batch:
                flush()
        flush()
    return written


def _arrow_value(column: str, value: Any) -> Any:
    if column in QUANTITY_COLUMNS and value is not None:
        return value.quantize(Decimal("0.000001"))
    return value
