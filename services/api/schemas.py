"""HTTP response models (with the examples shown at /docs), built from read-model rows."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any, Literal, cast

from pydantic import BaseModel, ConfigDict, Field

from services.api.domain import reconciled
from services.projector.domain import status_name
from shared.money import format_minor

Status = Literal["discovered", "ingested", "matched", "completed", "held", "pushed"]

APRIL_UUID = "fe4b2d8a-6a8e-4d1e-9c0a-3b7f2e1a9c55"


def _example(**example: Any) -> ConfigDict:
    return ConfigDict(json_schema_extra={"examples": [example]})


def money(minor: int | None, currency: str | None) -> str | None:
    return format_minor(minor, currency or "USD") if minor is not None else None


class BalanceOut(BaseModel):
    model_config = _example(
        account="default",
        generated_at="2026-05-02T07:07:00Z",
        currency="USD",
        month_to_date_balance_minor=2344,
        month_to_date_balance="23.44",
        account_balance_minor=1223,
        account_balance="12.23",
        month_to_date_usage_minor=1121,
        month_to_date_usage="11.21",
    )

    account: str
    generated_at: datetime
    currency: str
    month_to_date_balance_minor: int
    month_to_date_balance: str = Field(description="Decimal string of the minor units.")
    account_balance_minor: int
    account_balance: str
    month_to_date_usage_minor: int
    month_to_date_usage: str

    @classmethod
    def from_row(cls, r: dict[str, Any]) -> BalanceOut:
        cur = r["currency"]
        return cls(
            account=r["account"],
            generated_at=r["generated_at"],
            currency=cur,
            month_to_date_balance_minor=r["month_to_date_balance_minor"],
            month_to_date_balance=format_minor(r["month_to_date_balance_minor"], cur),
            account_balance_minor=r["account_balance_minor"],
            account_balance=format_minor(r["account_balance_minor"], cur),
            month_to_date_usage_minor=r["month_to_date_usage_minor"],
            month_to_date_usage=format_minor(r["month_to_date_usage_minor"], cur),
        )


class BalanceHistoryOut(BaseModel):
    snapshots: list[BalanceOut]


class CostLineOut(BaseModel):
    model_config = _example(
        invoice_uuid=APRIL_UUID,
        revision=1,
        line_index=0,
        period="2026-04-01",
        product="Droplets",
        group_description="",
        description="web-01 (s-1vcpu-1gb)",
        kind="droplet",
        name="web-01",
        amount_minor=600,
        amount="6.00",
        currency="USD",
        is_tax=False,
        resource_id="412345678",
        unmatched_reason=None,
        project_name="Default",
        category="iaas",
        hours=720,
        start="2026-04-01T00:00:00Z",
        end="2026-05-01T00:00:00Z",
        rule="droplet_name_size",
        attributed_by="resource_id",
        still_exists=True,
        item_resource_id="412345678",
        item_resource_uuid=None,
        duration="720",
        duration_unit="Hours",
        item_join="exact",
        item_note=None,
    )

    invoice_uuid: str
    revision: int
    line_index: int
    period: date | None
    product: str
    group_description: str
    description: str
    kind: str | None
    name: str | None
    amount_minor: int
    amount: str
    currency: str
    is_tax: bool
    resource_id: str | None = Field(description="The matched resource, or null with `unmatched_reason`.")
    unmatched_reason: str | None
    project_name: str
    category: str
    hours: int | None
    start: datetime | None
    end: datetime | None
    rule: str | None = Field(None, description="The description shape the name was read with.")
    attributed_by: str | None = Field(
        None, description="resource_id, item_resource_id, name or name_period_history (null: not attributed)."
    )
    still_exists: bool | None = Field(
        None, description="The attributed resource exists now (null: not attributed, or its kind is not inventoried)."
    )
    item_resource_id: str | None = Field(None, description="The invoice item's resource_id (DigitalOcean's).")
    item_resource_uuid: str | None = Field(None, description="The invoice item's resource_uuid (DigitalOcean's).")
    duration: str | None = None
    duration_unit: str | None = None
    item_join: str | None = Field(
        None, description="How the CSV row was joined to its invoice item (exact, period_relaxed, no_item...)."
    )
    item_note: str | None = None

    @classmethod
    def from_row(cls, r: dict[str, Any]) -> CostLineOut:
        return cls(
            **{k: r[k] for k in cls.model_fields if k in r},
            amount=format_minor(r["amount_minor"], r["currency"]),
            start=r["start_at"],
            end=r["end_at"],
        )


class CostLinesPage(BaseModel):
    model_config = _example(
        # _example sets json_schema_extra to {"examples": [...]}; pydantic types the config loosely.
        items=[cast(Any, CostLineOut.model_config)["json_schema_extra"]["examples"][0]],
        next_cursor=None,
    )

    items: list[CostLineOut]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null on the last page.")


class ReconciliationCheckOut(BaseModel):
    source: str = Field(description="billing_history, invoice_list, summary_amount, summary_taxes or csv_body.")
    expected_minor: int | None = Field(description="What DigitalOcean's source says (null: it said nothing).")
    actual_minor: int | None = Field(description="What the CSV's lines add up to (tax total for summary_taxes).")
    difference_minor: int | None = Field(description="The variance: actual - expected.")
    ok: bool
    note: str = ""


class ReconciliationOut(BaseModel):
    status: str | None = Field(description="matched (pushed), mismatch or unknown (held).")
    expected_minor: int | None = Field(description="The first disagreeing source's amount (else the history's).")
    actual_minor: int | None = Field(None, description="The lines' gross.")
    difference_minor: int | None = Field(description="The variance: actual - expected.")
    tolerance_minor: int | None = None
    reason: str | None = Field(None, description="Why the revision is held, when it is.")
    checks: list[ReconciliationCheckOut] = Field(default_factory=list)


_INVOICE_EXAMPLE: dict[str, Any] = {
    "invoice_uuid": APRIL_UUID,
    "invoice_id": "6173678-418071234",
    "account": "default",
    "period": "2026-04-01",
    "invoice_date": "2026-05-01",
    "currency": "USD",
    "amount_minor": 8692,
    "amount_net_minor": 7902,
    "amount_tax_minor": 790,
    "amount_gross_minor": 8692,
    "amount_gross": "86.92",
    "lines_count": 33,
    "matched_count": 6,
    "revision": 1,
    "status": "pushed",
    "pushed_to_finance_at": "2026-05-02T02:24:10Z",
    "finance_invoice_id": "inv_01HZX",
    "reconciled": True,
    "hold_reason": None,
    "reconciliation": {
        "status": "matched",
        "expected_minor": 8692,
        "actual_minor": 8692,
        "difference_minor": 0,
        "tolerance_minor": 0,
        "reason": None,
        "checks": [
            {
                "source": "billing_history",
                "expected_minor": 8692,
                "actual_minor": 8692,
                "difference_minor": 0,
                "ok": True,
            },
            {"source": "invoice_list", "expected_minor": 8692, "actual_minor": 8692, "difference_minor": 0, "ok": True},
        ],
    },
}


class InvoiceOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [_INVOICE_EXAMPLE]})

    invoice_uuid: str
    invoice_id: str | None
    account: str
    period: date | None
    invoice_date: date | None
    currency: str | None
    amount_minor: int | None = Field(description="What the billing history says was billed.")
    amount_net_minor: int | None
    amount_tax_minor: int | None
    amount_gross_minor: int | None
    amount_gross: str | None
    lines_count: int | None
    matched_count: int | None = Field(description="Lines attributed to a resource that exists now (the seed's figure).")
    attributed_count: int | None = Field(None, description="Lines attributed to a resource at all (history included).")
    revision: int | None = Field(description="The served revision (the latest completed one).")
    status: Status
    pushed_to_finance_at: datetime | None
    finance_invoice_id: str | None
    reconciled: bool | None
    hold_reason: str | None = Field(None, description="Set while the status is `held`: why it is not pushed.")
    reconciliation: ReconciliationOut

    @classmethod
    def from_row(cls, r: dict[str, Any]) -> InvoiceOut:
        status = cast(Status, status_name(r["status_rank"], bool(r.get("held"))))  # one of STATUSES or HELD
        return cls(
            **{k: r[k] for k in cls.model_fields if k in r and k != "hold_reason"},
            amount_gross=money(r["amount_gross_minor"], r["currency"]),
            status=status,
            reconciled=reconciled(r["reconciliation_status"], r["amount_minor"], r["amount_gross_minor"]),
            hold_reason=r.get("hold_reason") if status == "held" else None,
            reconciliation=ReconciliationOut(
                status=r["reconciliation_status"],
                expected_minor=r["reconciliation_expected_minor"],
                actual_minor=r.get("reconciliation_actual_minor"),
                difference_minor=r["reconciliation_difference_minor"],
                tolerance_minor=r.get("reconciliation_tolerance_minor"),
                reason=r.get("reconciliation_reason"),
                checks=[ReconciliationCheckOut(**c) for c in r.get("reconciliation_checks") or []],
            ),
        )


class InvoicesPage(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"items": [_INVOICE_EXAMPLE], "next_cursor": None}]})

    items: list[InvoiceOut]
    next_cursor: str | None


class InvoiceActionOut(BaseModel):
    action: Literal["release", "refetch"]
    revision: int | None = Field(description="The released revision (null for a re-fetch).")
    actor: str = Field(description="Who: the admin, or `ingester` for an automatic re-fetch of a held invoice.")
    reason: str
    at: datetime


class HistoryEntryOut(BaseModel):
    model_config = _example(
        event_id="0b9e6a0e-7b5c-5b8e-9a55-0c1b1d1f0b11",
        account="default",
        entry_type="Payment",
        description="Payment (MC 2026)",
        amount_minor=-8692,
        amount="-86.92",
        currency="USD",
        date="2026-05-02T08:44:38Z",
        invoice_id=None,
        invoice_uuid=None,
    )

    event_id: str
    account: str
    entry_type: str = Field(description="DigitalOcean's type: Payment, Credit, Adjustment, Invoice, Refund, ...")
    description: str
    amount_minor: int = Field(description="Payments and credits are negative.")
    amount: str
    currency: str
    date: datetime
    invoice_id: str | None
    invoice_uuid: str | None

    @classmethod
    def from_row(cls, r: dict[str, Any]) -> HistoryEntryOut:
        return cls(
            **{k: r[k] for k in cls.model_fields if k in r}, amount=format_minor(r["amount_minor"], r["currency"])
        )


class HistoryPage(BaseModel):
    items: list[HistoryEntryOut]
    next_cursor: str | None


class DeadLetterOut(BaseModel):
    """A record a stage could not process, kept in its topic's dead-letter topic (redrive: `cloudbill dlq`)."""

    model_config = _example(
        id="billing.cost-lines.v1.dlq:0:12",
        dlq_topic="billing.cost-lines.v1.dlq",
        source_topic="billing.cost-lines.v1",
        source_partition=0,
        source_offset=4711,
        error_class="shared.events.EventDecodeError",
        error_message="not JSON: Expecting value: line 1 column 1 (char 0)",
        service="matcher",
        failed_at="2026-05-02T07:07:00Z",
        key=APRIL_UUID,
        value_bytes=312,
    )

    id: str = Field(description="`<dlq topic>:<partition>:<offset>`, as `cloudbill dlq show|redrive` take it.")
    dlq_topic: str
    source_topic: str | None
    source_partition: int | None
    source_offset: int | None
    error_class: str | None
    error_message: str | None
    service: str | None
    failed_at: datetime | None
    key: str | None
    value_bytes: int | None

    @classmethod
    def from_row(cls, r: dict[str, Any]) -> DeadLetterOut:
        return cls(
            id=f"{r['dlq_topic']}:{r['dlq_partition']}:{r['dlq_offset']}",
            dlq_topic=r["dlq_topic"],
            source_topic=r["source_topic"],
            source_partition=r["source_partition"],
            source_offset=r["source_offset"],
            error_class=r["error_class"],
            error_message=r["error_message"],
            service=r["service"],
            failed_at=r["failed_at"],
            key=r["record_key"],
            value_bytes=r["value_bytes"],
        )


class DeadLettersPage(BaseModel):
    items: list[DeadLetterOut]
    next_cursor: str | None


class InvoiceDetail(InvoiceOut):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{**_INVOICE_EXAMPLE, "lines": [], "dead_letters": [], "actions": []}]}
    )

    lines: list[CostLineOut]
    dead_letters: list[DeadLetterOut] = Field(
        default_factory=list, description="Records about this invoice that a stage dead-lettered."
    )
    actions: list[InvoiceActionOut] = Field(default_factory=list, description="Releases and re-fetches, oldest first.")


class UnmatchedGroup(BaseModel):
    reason: str
    kind: str | None
    currency: str
    lines_count: int
    amount_minor: int
    amount: str


class UnmatchedOut(BaseModel):
    model_config = _example(
        period="2026-04-01",
        groups=[
            {
                "reason": "no_such_resource",
                "kind": "droplet",
                "currency": "USD",
                "lines_count": 20,
                "amount_minor": 5000,
                "amount": "50.00",
            },
            {
                "reason": "tax_line",
                "kind": None,
                "currency": "USD",
                "lines_count": 1,
                "amount_minor": 790,
                "amount": "7.90",
            },
        ],
        total_minor={"USD": 5790},
    )

    period: date | None
    groups: list[UnmatchedGroup]
    total_minor: dict[str, int] = Field(description="Unmatched cost per currency.")


class HealthOut(BaseModel):
    status: Literal["ok", "unavailable"]
    checks: dict[str, str] = Field(default_factory=dict)


class ErrorOut(BaseModel):
    detail: str


RollupBy = Literal["product", "kind", "project", "resource", "rule"]


class RollupRow(BaseModel):
    key: str = Field(description="The product, kind, project, `kind:resource_id` or attribution rule ('' for none).")
    name: str | None = Field(None, description="The resource's name (by=resource).")
    currency: str
    lines_count: int
    amount_minor: int
    amount: str
    attributed_count: int = Field(description="Lines attributed to a resource.")
    current_count: int = Field(description="Lines attributed to a resource that exists now.")


class RollupOut(BaseModel):
    model_config = _example(
        period="2026-04-01",
        by="rule",
        rows=[
            {
                "key": "resource_id",
                "name": "web-01",
                "currency": "USD",
                "lines_count": 13,
                "amount_minor": 5958,
                "amount": "59.58",
                "attributed_count": 13,
                "current_count": 6,
            }
        ],
    )

    period: date
    by: RollupBy
    rows: list[RollupRow]


class ResourceMonth(BaseModel):
    period: date | None
    currency: str
    lines_count: int
    amount_minor: int
    amount: str
    rules: list[str] = Field(default_factory=list, description="How its lines of that month were attributed.")


class ResourceCostsOut(BaseModel):
    resource_id: str
    kind: str | None = None
    name: str | None = Field(None, description="The inventory's name (the latest), else the name its lines give.")
    names_on_invoices: list[str] = Field(default_factory=list)
    still_exists: bool | None = Field(None, description="In the current inventory (null: never inventoried).")
    first_seen: datetime | None = None
    last_seen: datetime | None = None
    months: list[ResourceMonth]
