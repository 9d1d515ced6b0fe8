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


class EnvelopeHead(BaseModel):
    """The envelope without its data: `encode` writes the data after it from the event's own model."""

    model_config = ConfigDict(extra="forbid")

    event_id: str
    type: str
    schema_version: int
    occurred_at: datetime
    account: str


class Envelope(EnvelopeHead):
    data: dict[str, Any]

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode()


def event_id_for(data: EventData, account: str) -> str:
    ident = canonical_json([data.TYPE, data.VERSION, account, data.identity()])
    return str(uuid.uuid5(EVENT_NAMESPACE, ident))


def _head_fields(data: EventData, account: str, occurred_at: datetime | None) -> dict[str, Any]:
    """The envelope's fields other than its data (`make_envelope` and `encode` both start from them)."""
    return {
        "event_id": event_id_for(data, account),
        "type": data.TYPE,
        "schema_version": data.VERSION,
        "occurred_at": occurred_at or utcnow(),
        "account": account,
    }


def make_envelope(data: EventData, account: str, occurred_at: datetime | None = None) -> Envelope:
    return Envelope(**_head_fields(data, account, occurred_at), data=data.model_dump(mode="json"))


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
    listed_amount_minor: int | None = Field(
        None, description="The amount in DigitalOcean's invoice list (/v2/customers/my/invoices), when listed."
    )


class InvoiceRefetchRequested(EventData):
    """Fetch an already discovered invoice's CSV again (a held invoice's backoff, or an admin's request).

    Carried on the invoice-discovered topic, keyed by invoice uuid, so it is ordered with the invoice's
    discoveries; the ingester re-runs the invoice's last discovery.
    """

    TYPE: ClassVar[str] = "billing.invoice-refetch-requested"
    invoice_uuid: str
    requested_by: str
    reason: str
    requested_at: datetime
    attempt: int = Field(0, ge=0, description="The automatic re-fetch's attempt number; 0 for an admin request.")
    reemit_revision: int | None = Field(
        None,
        ge=1,
        description=(
            "A committed revision the ingester's commit verifier proved unreadable (its records were aborted after"
            " the commit was acknowledged): emitted again, same revision and event ids, when the CSV is unchanged."
        ),
    )


ItemJoin = Literal["exact", "period_relaxed", "identical_rows", "no_item", "items_unavailable", "items_disabled"]


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
    # From the invoice's items (GET /v2/customers/my/invoices/{uuid}), joined to this CSV row by the ingester
    # (services/ingester/items.py). All optional: an event written before items were fetched decodes unchanged.
    resource_uuid: str | None = Field(None, description="The item's resource_uuid, when DigitalOcean gives one.")
    resource_id: str | None = Field(None, description="The item's resource_id, when DigitalOcean gives one.")
    duration: str | None = Field(None, description="The item's duration, as DigitalOcean sent it (a string).")
    duration_unit: str | None = Field(None, description="The item's duration unit (`Hours`).")
    item_join: ItemJoin | None = Field(
        None, description="How this row was joined to an item; None: written before items were fetched."
    )
    item_note: str = Field("", description="Why the row has no item (items unavailable, no matching item...).")

    def identity(self) -> Any:
        return [self.invoice_uuid, self.revision, self.line_index]


class ReconciliationCheck(BaseModel):
    """One piece of evidence: what a DigitalOcean source says against what the CSV's lines add up to."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    source: str = Field(description="billing_history, invoice_list, summary_amount, summary_taxes or csv_body.")
    expected_minor: int | None = Field(None, description="What the source says; None when it said nothing.")
    actual_minor: int | None = Field(None, description="The CSV's gross (or tax total for summary_taxes).")
    difference_minor: int | None = Field(None, description="actual - expected (the variance).")
    ok: bool
    note: str = ""


class Reconciliation(BaseModel):
    """An invoice revision's completeness evidence (see shared/reconciliation.py). Only `matched` is pushed."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    status: Literal["matched", "mismatch", "unknown"]
    expected_minor: int | None = None
    difference_minor: int | None = None
    actual_minor: int | None = None
    tolerance_minor: int = 0
    checks: tuple[ReconciliationCheck, ...] = ()
    reason: str = ""


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
    """One inventoried resource (compacted topic, key `account:kind:id`). When it disappears the poller sends it
    once more with `exists=False` and its first/last seen times (its history); a tombstone still forgets it."""

    TYPE: ClassVar[str] = "cloud.resource"
    kind: str = Field(description="droplet, volume, database, load_balancer, kubernetes_cluster, app, ...")
    resource_id: str
    name: str
    region: str = ""
    attributes: dict[str, Any] = Field(default_factory=dict)
    # The inventory's history (optional, so older records decode): a resource that disappears is sent once more
    # with exists=False instead of a tombstone, so the matcher can still attribute its invoice lines.
    exists: bool = Field(True, description="False: no longer listed by DigitalOcean (kept as history).")
    first_seen: datetime | None = Field(None, description="The first poll that listed it (history records).")
    last_seen: datetime | None = Field(None, description="The last poll that listed it (history records).")


AttributedBy = Literal["resource_id", "item_resource_id", "name", "name_period_history"]


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
        Literal[
            "tax_line",
            "no_such_resource",
            "kind_not_inventoried",
            "description_not_understood",
            "unknown_product",
            "ambiguous_history",
            "account_level",
        ]
        | None
    ) = None
    attributed_by: AttributedBy | None = Field(
        None, description="Which attribution rule found the resource (services/matcher/domain/matching.py)."
    )
    still_exists: bool | None = Field(
        None, description="The resource is in the current inventory (when matched); None: kind not inventoried."
    )

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
    matched_count: int = Field(description="Lines attributed to a resource that exists now (the seed's figure).")
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


class InvoiceReleased(EventData):
    """An admin accepts a held revision as it is: the finance pusher pushes it despite its reconciliation."""

    TYPE: ClassVar[str] = "billing.invoice-released"
    invoice_uuid: str
    revision: int
    released_by: str
    reason: str
    released_at: datetime


AlertKind = Literal[
    "budget_actual", "budget_forecast", "anomaly_daily_spike", "anomaly_new_product", "anomaly_new_resource"
]


class BillingAlert(EventData):
    """A budget threshold crossed or an anomaly seen, once per (account, kind, subject, threshold, period).

    `alert_id` names that tuple (services/alerter/domain.py); the event's id (derived from it), its key in the read
    model and the webhook's idempotency id are the same whichever replica raised it and however often it is re-sent.
    Every field comes from the data that triggered it (never the clock), so a replay raises the same alert."""

    TYPE: ClassVar[str] = "billing.alert"
    alert_id: str
    kind: AlertKind
    period: str = Field(description="The billing month, YYYY-MM-DD (its first day).")
    subject: str = Field("", description="What the alert is about: a product, a resource, a day; empty for budgets.")
    threshold_pct: int | None = None
    currency: str = "USD"
    budget_minor: int | None = None
    observed_minor: int = Field(description="MTD usage, forecast, a day's usage, or a new cost (minor units).")
    reference_minor: int | None = Field(
        None, description="What it is compared with: the threshold's amount, the baseline day, the invoice net."
    )
    detected_at: datetime = Field(description="When the data showed it (the snapshot's or the invoice's time).")
    message: str

    def identity(self) -> Any:
        return self.alert_id


EVENT_TYPES: dict[tuple[str, int], type[EventData]] = {
    (m.TYPE, m.VERSION): m
    for m in (
        Balance,
        BillingHistoryEntry,
        InvoiceDiscovered,
        InvoiceRefetchRequested,
        InvoiceReleased,
        CostLine,
        InvoiceEnd,
        Resource,
        CostLineMatched,
        InvoiceCompleted,
        InvoicePushed,
        BillingAlert,
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
    """The event's bytes: exactly `make_envelope(...).to_bytes()` (the unit tests hold them equal), written
    without dumping the data to a dict and serializing that dict untyped (about half the time of an encode,
    which the ingester and the matcher pay once per cost line)."""
    head = EnvelopeHead(**_head_fields(data, account, occurred_at))
    return b"".join((head.model_dump_json().encode()[:-1], b',"data":', data.model_dump_json().encode(), b"}"))


def _first_error(e: ValidationError) -> str:
    errs = e.errors()
    if not errs:
        return str(e)
    first = errs[0]
    loc = ".".join(str(x) for x in first.get("loc", ()))
    more = f" (+{len(errs) - 1} more)" if len(errs) > 1 else ""
    return f"{loc}: {first.get('msg')}{more}"
