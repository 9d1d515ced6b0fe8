"""The event envelope and one typed model per event type (JSON on the wire).

Every event has a deterministic `event_id`: a UUIDv5 of its type, schema version, account and the
identity its model declares (by default its whole `data`). The same input always yields the same id,
so a consumer can recognise a re-sent or replayed event. An event of an unknown type or version is an
`EventDecodeError`, which consumers dead-letter rather than crash on.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, date, datetime
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

EVENT_NAMESPACE = uuid.UUID("6f1c7a52-3d0e-4b8e-9a55-0c1b1d1f0b11")


class EventDecodeError(ValueError):
    """Raised for bytes that are not a known, valid event. Consumers dead-letter these."""


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def utcnow() -> datetime:
    return datetime.now(UTC)


class EventData(BaseModel):
    """Base of every event payload. Subclasses set TYPE and VERSION and may narrow `identity()`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    TYPE: ClassVar[str]
    VERSION: ClassVar[int] = 1

    def identity(self) -> Any:
        """What makes two events 'the same event'. Default: the whole payload."""
        return self.model_dump(mode="json")


class Envelope(BaseModel):
    model_config = ConfigDict(extra="forbid")

    event_id: str
    type: str
    schema_version: int
    occurred_at: datetime
    account: str
    data: dict[str, Any]

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode()


def event_id_for(data: EventData, account: str) -> str:
    ident = canonical_json([data.TYPE, data.VERSION, account, data.identity()])
    return str(uuid.uuid5(EVENT_NAMESPACE, ident))


def make_envelope(data: EventData, account: str, occurred_at: datetime | None = None) -> Envelope:
    return Envelope(
        event_id=event_id_for(data, account),
        type=data.TYPE,
        schema_version=data.VERSION,
        occurred_at=occurred_at or utcnow(),
        account=account,
        data=data.model_dump(mode="json"),
    )


# ---------------------------------------------------------------------------------------------- models
class Balance(EventData):
    """One poll of /v2/customers/my/balance. Amounts in minor units; raw strings kept as DigitalOcean sent them."""

    TYPE: ClassVar[str] = "billing.balance"
    month_to_date_balance_minor: int
    account_balance_minor: int
    month_to_date_usage_minor: int
    currency: str = "USD"
    generated_at: datetime
    raw: dict[str, str] = Field(default_factory=dict)


class BillingHistoryEntry(EventData):
    """Any billing-history entry (Invoice, Payment, Credit, ...), for the read model."""

    TYPE: ClassVar[str] = "billing.history-entry"
    entry_type: str
    description: str
    amount_minor: int
    currency: str = "USD"
    date: datetime
    invoice_id: str | None = None
    invoice_uuid: str | None = None

    def identity(self) -> Any:
        return [self.entry_type, self.date.isoformat(), self.description, self.amount_minor, self.invoice_uuid]


class InvoiceDiscovered(EventData):
    """An `Invoice` entry of the billing history: the ingester fetches its CSV."""

    TYPE: ClassVar[str] = "billing.invoice-discovered"
    invoice_uuid: str
    invoice_id: str | None = None
    period: str = Field(description="Billing period start, YYYY-MM-DD (first day of the month).")
    description: str = ""
    amount_minor: int
    currency: str = "USD"
    date: datetime


class CostLine(EventData):
    """One CSV row of one invoice revision."""

    TYPE: ClassVar[str] = "billing.cost-line"
    invoice_uuid: str
    revision: int
    line_index: int
    product: str
    group_description: str = ""
    description: str
    hours: int | None = None
    start: datetime | None = None
    end: datetime | None = None
    amount_minor: int
    currency: str = "USD"
    project_name: str = ""
    category: str = ""
    is_tax: bool
    extra: dict[str, str] = Field(default_factory=dict, description="Unknown CSV columns, kept verbatim.")

    def identity(self) -> Any:
        return [self.invoice_uuid, self.revision, self.line_index]


class Reconciliation(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    status: Literal["matched", "mismatch", "unknown"]
    expected_minor: int | None = None
    difference_minor: int | None = None


class InvoiceEnd(EventData):
    """End-of-invoice marker: downstream acts on a revision only once this and all its lines are in."""

    TYPE: ClassVar[str] = "billing.invoice-end"
    invoice_uuid: str
    invoice_id: str | None = None
    revision: int
    period: str
    invoice_date: date
    currency: str = "USD"
    line_count: int
    amount_net_minor: int
    amount_tax_minor: int
    amount_gross_minor: int
    csv_sha256: str
    parser_version: str
    reconciliation: Reconciliation

    def identity(self) -> Any:
        return [self.invoice_uuid, self.revision]


class Resource(EventData):
    """One inventoried resource (compacted topic, key `account:kind:id`; a tombstone when it disappears)."""

    TYPE: ClassVar[str] = "cloud.resource"
    kind: str = Field(description="droplet, volume, database, load_balancer, kubernetes_cluster, app, ...")
    resource_id: str
    name: str
    region: str = ""
    attributes: dict[str, Any] = Field(default_factory=dict)


class CostLineMatched(EventData):
    """A cost line enriched with the resource it matches, or why it matches none."""

    TYPE: ClassVar[str] = "billing.cost-line-matched"
    line: CostLine
    kind: str | None = None
    name: str | None = None
    resource_id: str | None = None
    resource_key: str | None = None
    rule: str | None = None
    unmatched_reason: (
        Literal["tax_line", "no_such_resource", "kind_not_inventoried", "description_not_understood", "unknown_product"]
        | None
    ) = None

    def identity(self) -> Any:
        return [
            self.line.invoice_uuid,
            self.line.revision,
            self.line.line_index,
            self.resource_key,
            self.unmatched_reason,
        ]


class InvoiceCompleted(EventData):
    """A whole, matched invoice revision: what the finance pusher pushes."""

    TYPE: ClassVar[str] = "billing.invoice-completed"
    invoice_uuid: str
    invoice_id: str | None = None
    revision: int
    period: str
    invoice_date: date
    currency: str = "USD"
    line_count: int
    matched_count: int
    amount_net_minor: int
    amount_tax_minor: int
    amount_gross_minor: int
    reconciliation: Reconciliation

    def identity(self) -> Any:
        return [self.invoice_uuid, self.revision, self.matched_count]


class InvoicePushed(EventData):
    """Finance accepted an invoice revision."""

    TYPE: ClassVar[str] = "billing.invoice-pushed"
    invoice_uuid: str
    revision: int
    finance_invoice_id: str
    action: Literal["created", "updated"]
    payload_sha256: str
    pushed_at: datetime

    def identity(self) -> Any:
        return [self.invoice_uuid, self.payload_sha256, self.action]


EVENT_TYPES: dict[tuple[str, int], type[EventData]] = {
    (m.TYPE, m.VERSION): m
    for m in (
        Balance,
        BillingHistoryEntry,
        InvoiceDiscovered,
        CostLine,
        InvoiceEnd,
        Resource,
        CostLineMatched,
        InvoiceCompleted,
        InvoicePushed,
    )
}


def decode(value: bytes | str | None) -> tuple[Envelope, EventData]:
    """Bytes → (envelope, typed data). Anything unknown or invalid is an EventDecodeError."""
    if value is None:
        raise EventDecodeError("empty message value (tombstone) where an event was expected")
    try:
        env = Envelope.model_validate_json(value)
    except ValidationError as e:
        raise EventDecodeError(f"not an event envelope: {_first_error(e)}") from e
    model = EVENT_TYPES.get((env.type, env.schema_version))
    if model is None:
        known = sorted({t for t, _ in EVENT_TYPES})
        if env.type in known:
            raise EventDecodeError(f"unsupported schema_version {env.schema_version} for event type {env.type!r}")
        raise EventDecodeError(f"unknown event type {env.type!r}")
    try:
        data = model.model_validate(env.data)
    except ValidationError as e:
        raise EventDecodeError(f"invalid {env.type} v{env.schema_version} data: {_first_error(e)}") from e
    return env, data


def encode(data: EventData, account: str, occurred_at: datetime | None = None) -> bytes:
    return make_envelope(data, account, occurred_at).to_bytes()


def _first_error(e: ValidationError) -> str:
    errs = e.errors()
    if not errs:
        return str(e)
    first = errs[0]
    loc = ".".join(str(x) for x in first.get("loc", ()))
    more = f" (+{len(errs) - 1} more)" if len(errs) > 1 else ""
    return f"{loc}: {first.get('msg')}{more}"
