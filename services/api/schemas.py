"""HTTP response models (with the examples shown at /docs), built from read-model rows."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from services.api.domain import reconciled, status_name
from shared.money import format_minor

Status = Literal["discovered", "ingested", "matched", "completed", "pushed"]

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

    @classmethod
    def from_row(cls, r: dict[str, Any]) -> CostLineOut:
        return cls(
            **{k: r[k] for k in cls.model_fields if k in r},
            amount=format_minor(r["amount_minor"], r["currency"]),
            start=r["start_at"],
            end=r["end_at"],
        )


class CostLinesPage(BaseModel):
    model_config = _example(items=[CostLineOut.model_config["json_schema_extra"]["examples"][0]], next_cursor=None)

    items: list[CostLineOut]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null on the last page.")


class ReconciliationOut(BaseModel):
    status: str | None
    expected_minor: int | None
    difference_minor: int | None


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
    "reconciliation": {"status": "matched", "expected_minor": 8692, "difference_minor": 0},
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
    matched_count: int | None
    revision: int | None = Field(description="The served revision (the latest completed one).")
    status: Status
    pushed_to_finance_at: datetime | None
    finance_invoice_id: str | None
    reconciled: bool | None
    reconciliation: ReconciliationOut

    @classmethod
    def from_row(cls, r: dict[str, Any]) -> InvoiceOut:
        return cls(
            **{k: r[k] for k in cls.model_fields if k in r},
            amount_gross=money(r["amount_gross_minor"], r["currency"]),
            status=status_name(r["status_rank"]),
            reconciled=reconciled(r["reconciliation_status"], r["amount_minor"], r["amount_gross_minor"]),
            reconciliation=ReconciliationOut(
                status=r["reconciliation_status"],
                expected_minor=r["reconciliation_expected_minor"],
                difference_minor=r["reconciliation_difference_minor"],
            ),
        )


class InvoicesPage(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"items": [_INVOICE_EXAMPLE], "next_cursor": None}]})

    items: list[InvoiceOut]
    next_cursor: str | None


class InvoiceDetail(InvoiceOut):
    model_config = ConfigDict(json_schema_extra={"examples": [{**_INVOICE_EXAMPLE, "lines": []}]})

    lines: list[CostLineOut]


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
