"""The FOCUS mapping: every mandatory column, exact money, end-exclusive periods, categories, both file formats."""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.api.focus import (
    COLUMNS,
    MANDATORY,
    NOT_NULL,
    SERVICES,
    ExportLine,
    charge_period,
    csv_chunks,
    exclusive_end,
    focus_record,
    parse_month,
    write_parquet,
)

APRIL = date(2026, 4, 1)


def line(i: int = 0, amount: int = 600, **kw: object) -> ExportLine:
    base = dict(
        account="default",
        invoice_uuid="inv-1",
        invoice_id="9217394",
        revision=1,
        invoice_status="pushed",
        period=APRIL,
        line_index=i,
        product="Droplets",
        group_description="",
        description="web-01 (s-1vcpu-1gb)",
        hours=720,
        start_at=datetime(2026, 4, 1, tzinfo=UTC),
        end_at=datetime(2026, 4, 30, 23, 59, 59, tzinfo=UTC),
        amount_minor=amount,
        currency="USD",
        project_name="Arcadia, Production",
        category="iaas",
        is_tax=False,
        kind="droplet",
        name="web-01",
        resource_id="300000001",
        rule="name",
        unmatched_reason=None,
    )
    return ExportLine(**(base | kw))  # type: ignore[arg-type]


def test_every_focus_12_mandatory_column_is_written_and_never_null_where_focus_forbids() -> None:
    rec = focus_record(line())
    assert set(MANDATORY) <= set(COLUMNS) == set(rec)
    for col in NOT_NULL:
        assert rec[col] is not None, col
    assert rec["BilledCost"] == Decimal("6.00") == rec["EffectiveCost"] == rec["ListCost"] == rec["ContractedCost"]
    assert rec["InvoiceId"] == "9217394" and rec["x_InvoiceUuid"] == "inv-1"
    assert (rec["ResourceId"], rec["ResourceName"], rec["ResourceType"]) == (
        "do:droplet:300000001",
        "web-01",
        "Droplet",
    )
    assert (rec["ServiceName"], rec["ServiceCategory"], rec["ServiceSubcategory"]) == (
        "Droplets",
        "Compute",
        "Virtual Machines",
    )
    assert (rec["PricingQuantity"], rec["PricingUnit"], rec["ChargeFrequency"]) == (
        Decimal(720),
        "Hours",
        "Usage-Based",
    )


def test_periods_are_end_exclusive() -> None:
    rec = focus_record(line())
    assert rec["BillingPeriodStart"] == datetime(2026, 4, 1, tzinfo=UTC)
    assert rec["BillingPeriodEnd"] == datetime(2026, 5, 1, tzinfo=UTC)
    assert rec["ChargePeriodEnd"] == datetime(2026, 5, 1, tzinfo=UTC)  # 23:59:59 inclusive -> next instant
    assert exclusive_end(datetime(2026, 4, 22, 18, 14, 39, tzinfo=UTC)) == datetime(2026, 4, 22, 18, 14, 39, tzinfo=UTC)
    no_dates = line(start_at=None, end_at=None)
    assert charge_period(no_dates) == (datetime(2026, 4, 1, tzinfo=UTC), datetime(2026, 5, 1, tzinfo=UTC))
    december = focus_record(line(period=date(2025, 12, 1), start_at=None, end_at=None))
    assert december["BillingPeriodEnd"] == datetime(2026, 1, 1, tzinfo=UTC)


def test_tax_and_credit_lines() -> None:
    tax = focus_record(
        line(
            product="Taxes",
            description="GST (10%)",
            hours=None,
            is_tax=True,
            kind="tax",
            resource_id=None,
            name=None,
            amount=790,
        )
    )
    assert (tax["ChargeCategory"], tax["PricingQuantity"], tax["PricingUnit"], tax["ServiceCategory"]) == (
        "Tax",
        None,
        None,
        "Other",
    )
    assert tax["ResourceId"] is None and tax["ConsumedQuantity"] is None and tax["SkuPriceId"] is None
    credit = focus_record(
        line(product="Credits", description="Service credit", hours=None, kind=None, resource_id=None, amount=-200)
    )
    assert (credit["ChargeCategory"], credit["ChargeFrequency"], credit["BilledCost"]) == (
        "Credit",
        "One-Time",
        Decimal("-2.00"),
    )
    flat = focus_record(line(product="Spaces Subscription", hours=None, kind="spaces", resource_id=None))
    assert (flat["ChargeCategory"], flat["PricingQuantity"], flat["PricingUnit"]) == ("Usage", Decimal(1), "Units")
    assert flat["ResourceId"] is None and flat["ResourceName"] is None  # FOCUS: no name without an id
    assert flat["x_AttributedName"] == "web-01"  # what the attribution knows stays available


def test_every_mapped_service_uses_focus_12_values() -> None:
    categories = {"Compute", "Storage", "Databases", "Networking", "Management and Governance", "Other"}
    assert {c for c, _ in SERVICES.values()} <= categories
    assert all(sub.startswith("Other (") or sub[0].isupper() for _, sub in SERVICES.values())


def test_parse_month() -> None:
    assert parse_month("2026-04") == APRIL == parse_month("2026-04-01")
    for bad in ("2026-4", "2026-04-02", "April", ""):
        with pytest.raises(ValueError):
            parse_month(bad)


amounts = st.integers(min_value=-(10**12), max_value=10**12)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["a", "b", "c"]), amounts, st.booleans()), min_size=1, max_size=40))
def test_billed_cost_per_invoice_is_the_exact_sum_of_its_lines(rows: list[tuple[str, int, bool]]) -> None:
    lines = [
        line(i, amount=a, invoice_uuid=inv, invoice_id=f"id-{inv}", is_tax=tax, product="Taxes" if tax else "Droplets")
        for i, (inv, a, tax) in enumerate(rows)
    ]
    text = b"".join(csv_chunks((focus_record(x) for x in lines), rows_per_chunk=7)).decode()
    parsed = list(csv.DictReader(io.StringIO(text)))
    assert len(parsed) == len(lines) and list(parsed[0]) == list(COLUMNS)
    sums: dict[str, Decimal] = defaultdict(Decimal)
    for r in parsed:
        assert "e" not in r["BilledCost"].lower() and not r["BilledCost"].startswith("+")
        sums[r["InvoiceId"]] += Decimal(r["BilledCost"])
    expected: dict[str, int] = defaultdict(int)
    for inv, a, _ in rows:
        expected[f"id-{inv}"] += a
    assert {k: int(v * 100) for k, v in sums.items()} == dict(expected)
    assert {r["ChargeCategory"] for r in parsed if r["PricingQuantity"] == ""} <= {"Tax", "Credit"}


def test_csv_nulls_are_empty_and_timestamps_iso_utc() -> None:
    text = b"".join(csv_chunks([focus_record(line())])).decode()
    row = next(csv.DictReader(io.StringIO(text)))
    assert row["BillingPeriodStart"] == "2026-04-01T00:00:00Z" and row["ChargePeriodEnd"] == "2026-05-01T00:00:00Z"
    assert row["ChargeClass"] == "" and row["Tags"] == "" and row["BilledCost"] == "6.00"


def test_parquet_keeps_costs_exact(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    lines = [line(i, amount=a) for i, a in enumerate([1, -200, 12345678901, 790])]
    out = tmp_path / "focus.parquet"
    assert write_parquet((focus_record(x) for x in lines), out, batch=3) == 4
    table = pq.read_table(out)
    assert table.schema.field("BilledCost").type == pa.decimal128(38, 2)
    assert table.schema.metadata[b"focus_version"] == b"1.2"
    assert table.column("BilledCost").to_pylist() == [
        Decimal("0.01"),
        Decimal("-2.00"),
        Decimal("123456789.01"),
        Decimal("7.90"),
    ]
    assert table.column("ChargePeriodEnd").to_pylist()[0] == datetime(2026, 5, 1, tzinfo=UTC)


SERVICE_SUBCATEGORIES_12 = {
    "Compute": {"Containers", "Serverless Compute", "Virtual Machines", "Other (Compute)"},
    "Storage": {"Backup Storage", "Block Storage", "Object Storage", "Other (Storage)"},
    "Databases": {"Relational Databases", "Other (Databases)"},
    "Networking": {"Application Networking", "Network Connectivity", "Network Infrastructure", "Other (Networking)"},
    "Management and Governance": {"Observability"},
    "Other": {"Other (Other)"},
}


def focus12_violations(rec: dict) -> list[str]:
    """FOCUS 1.2 rules that focus-validator 1.0.0 cannot check (its rule set is FOCUS 1.0)."""
    bad = []
    cat = rec["ChargeCategory"]
    if cat not in {"Usage", "Purchase", "Tax", "Credit", "Adjustment"}:
        bad.append("ChargeCategory allowed values")
    if cat == "Tax" and rec["PricingQuantity"] is not None:
        bad.append("PricingQuantity MUST be null for Tax")
    if cat in ("Usage", "Purchase") and rec["PricingQuantity"] is None:
        bad.append("PricingQuantity MUST NOT be null for Usage/Purchase")
    if (rec["PricingUnit"] is None) != (rec["PricingQuantity"] is None):
        bad.append("PricingUnit null iff PricingQuantity null")
    if rec["ResourceId"] is None and (rec["ResourceName"] is not None or rec["ResourceType"] is not None):
        bad.append("ResourceName/ResourceType MUST be null when ResourceId is")
    if rec["ResourceId"] is not None and rec["ResourceType"] is None:
        bad.append("ResourceType MUST NOT be null with a ResourceId")
    if cat != "Usage" and rec["ConsumedQuantity"] is not None:
        bad.append("ConsumedQuantity MUST be null unless Usage")
    if rec["ServiceSubcategory"] not in SERVICE_SUBCATEGORIES_12.get(rec["ServiceCategory"], set()):
        bad.append("ServiceSubcategory belongs to its ServiceCategory")
    if rec["ChargeFrequency"] not in {"One-Time", "Recurring", "Usage-Based"}:
        bad.append("ChargeFrequency allowed values")
    if not rec["ChargePeriodStart"] < rec["ChargePeriodEnd"] or not rec["BillingPeriodStart"] < rec["BillingPeriodEnd"]:
        bad.append("periods: start < exclusive end")
    if any(rec[c] != rec["BilledCost"] for c in ("EffectiveCost", "ListCost", "ContractedCost")):
        bad.append("no unit prices: every cost column is the billed cost (Tax/Credit rules)")
    if any(v == "" for v in rec.values()):
        bad.append("null handling: no empty strings")
    return bad


@settings(max_examples=150, deadline=None)
@given(
    product=st.sampled_from([*SERVICES, "Taxes", "Credits", "Some New Product"]),
    amount=amounts,
    hours=st.none() | st.integers(0, 744),
    attributed=st.booleans(),
    kind=st.sampled_from(["droplet", "volume", "spaces", "database", None]),
    dates=st.booleans(),
)
def test_every_row_keeps_the_focus_12_rules_the_validator_does_not_know(
    product: str, amount: int, hours: int | None, attributed: bool, kind: str | None, dates: bool
) -> None:
    tax = product == "Taxes"
    rec = focus_record(
        line(
            product=product,
            amount=amount,
            hours=None if tax else hours,
            is_tax=tax,
            kind=kind,
            resource_id="42" if attributed and kind else None,
            start_at=datetime(2026, 4, 3, 4, 5, 6, tzinfo=UTC) if dates else None,
            end_at=datetime(2026, 4, 3, 4, 5, 6, tzinfo=UTC) if dates else None,  # zero-length in the CSV
            project_name="",
            group_description="k8s" if hours == 1 else "",
        )
    )
    assert focus12_violations(rec) == []
