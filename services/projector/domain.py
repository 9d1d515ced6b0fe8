"""The projector's domain, free of I/O: which change a consumed record makes, and the invoice status order.

The projector turns each record into one `Change` (pure), then applies a whole polled batch of changes in
one database transaction (services/projector/store.py). Everything here is deterministic, so a replay from
offset 0 yields the same changes and therefore the same read models.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from datetime import date, datetime

from shared.events import (
    Balance,
    BillingAlert,
    BillingHistoryEntry,
    CostLine,
    CostLineMatched,
    EventData,
    InvoiceCompleted,
    InvoiceDiscovered,
    InvoiceEnd,
    InvoicePushed,
    InvoiceRefetchRequested,
    InvoiceReleased,
    Resource,
)
from shared.kafka import deadletter as dl
from shared.kafka.records import Record
from shared.reconciliation import unproven_reason
from shared.topics import (
    ALERTS,
    BALANCE,
    COST_LINES,
    COST_LINES_MATCHED,
    DLQ_SUFFIX,
    HISTORY,
    INVOICE_COMPLETED,
    INVOICE_DISCOVERED,
    INVOICE_PUSHED,
    RESOURCES,
    Topic,
)

# ------------------------------------------------------------------------------------------------ statuses
# An invoice's status is the highest (revision, rank) seen, so replays and out-of-order topics never move it
# backwards, while a genuinely new revision starts again at "ingested". The order is defined here and applied
# in one place, the store's SQL (services/projector/store.py, `_STATUS_SET`), inside the batch's transaction.
# A completed revision whose reconciliation does not prove it complete is "held" (the money gates): same rank
# as "completed", told apart by the invoice's `held` flag, so a release or a newer revision moves it on
# exactly like a completion.
STATUSES: tuple[str, ...] = ("discovered", "ingested", "matched", "completed", "pushed")
RANK: dict[str, int] = {name: i for i, name in enumerate(STATUSES)}
HELD = "held"


def status_name(rank: int, held: bool = False) -> str:
    return HELD if held and rank == RANK["completed"] else STATUSES[rank]


# ------------------------------------------------------------------------------------------------- changes
@dataclass(frozen=True)
class Change:
    """One record's effect on the read models."""

    account: str
    event_id: str


@dataclass(frozen=True)
class BalanceSnapshot(Change):
    data: Balance


@dataclass(frozen=True)
class HistoryEntry(Change):
    data: BillingHistoryEntry


@dataclass(frozen=True)
class Discovered(Change):
    data: InvoiceDiscovered
    period: date


@dataclass(frozen=True)
class Ingested(Change):
    data: InvoiceEnd
    period: date


@dataclass(frozen=True)
class LineMatched(Change):
    data: CostLineMatched


@dataclass(frozen=True)
class Completed(Change):
    data: InvoiceCompleted
    period: date
    hold_reason: str | None = None  # not None: the money gates hold this revision (the pusher refuses it)


@dataclass(frozen=True)
class AdminAction(Change):
    """A release or a re-fetch request, with who and why."""

    invoice_uuid: str
    action: str
    revision: int | None
    actor: str
    reason: str
    at: datetime


@dataclass(frozen=True)
class Pushed(Change):
    data: InvoicePushed


@dataclass(frozen=True)
class AlertRaised(Change):
    """A budget or anomaly alert (services/alerter): one row per alert_id, whoever re-sent it."""

    data: BillingAlert


@dataclass(frozen=True)
class ResourceSeen(Change):
    data: Resource


@dataclass(frozen=True)
class ResourceGone(Change):
    kind: str
    resource_id: str


@dataclass(frozen=True)
class DeadLettered(Change):
    dlq_topic: str
    dlq_partition: int
    dlq_offset: int
    source_topic: str | None
    source_partition: int | None
    source_offset: int | None
    error_class: str | None
    error_message: str | None
    service: str | None
    failed_at: datetime | None
    record_key: str | None
    record_value: bytes | None

    @property
    def dedup_key(self) -> str:
        """The same source record failing in the same service is one dead letter, however often it is re-sent."""
        if self.source_topic and self.source_partition is not None and self.source_offset is not None:
            return f"{self.source_topic}[{self.source_partition}]@{self.source_offset}/{self.service or ''}"
        return f"dlq:{self.dlq_topic}[{self.dlq_partition}]@{self.dlq_offset}"


class UnexpectedEvent(ValueError):
    """A valid event on a topic that never carries its type: poison for this topic (dead-lettered)."""


# Which event types each topic may carry; None means "ignored here" (the projector only needs the end marker
# from the raw cost lines: the lines it serves come matched, from COST_LINES_MATCHED).
_ACCEPTS: dict[Topic, dict[type[EventData], bool]] = {
    BALANCE: {Balance: True},
    HISTORY: {BillingHistoryEntry: True},
    INVOICE_DISCOVERED: {InvoiceDiscovered: True, InvoiceRefetchRequested: True},
    RESOURCES: {Resource: True},
    COST_LINES: {CostLine: False, InvoiceEnd: True},
    COST_LINES_MATCHED: {CostLineMatched: True},
    INVOICE_COMPLETED: {InvoiceCompleted: True, InvoiceReleased: True},
    INVOICE_PUSHED: {InvoicePushed: True},
    ALERTS: {BillingAlert: True},
}


def parse_period(text: str) -> date:
    """`YYYY-MM-DD` (the billing period's first day); anything else is poison."""
    try:
        return date.fromisoformat(text)
    except ValueError as e:
        raise ValueError(f"period {text!r} is not YYYY-MM-DD") from e


def clean_text(value: str | None) -> str | None:
    """PostgreSQL text cannot hold NUL: drop it rather than fail on a dead letter's bytes."""
    return value.replace("\x00", "") if value is not None else None


# Raw cost lines are on COST_LINES for the matcher; the projector only takes the end markers from that topic.
# A raw line is recognised by the envelope's first fields exactly as `shared.events.encode` writes them, which
# spares a full validation of every line only to drop it. Bytes in any other shape are decoded and judged as
# usual (a poison record is still dead-lettered; a line damaged past its first fields is the matcher's to
# dead-letter, and its dead letter is projected like any other).
_RAW_COST_LINE = re.compile(rb'\{"event_id":"[0-9a-f-]{36}","type":"billing\.cost-line","schema_version":1,')


@functools.lru_cache(maxsize=256)
def _topic_named(name: str, prefix: str) -> Topic | None:
    """The registry topic of a record (looked up once per topic name, not once per record)."""
    return next((t for t in _ACCEPTS if t.name(prefix) == name), None)


def to_change(rec: Record, prefix: str) -> Change | None:
    """The change one record makes, None when it makes none. Raises (→ dead letter) for poison."""
    if rec.topic.endswith(DLQ_SUFFIX):
        return dead_letter_change(rec)
    topic = _topic_named(rec.topic, prefix)
    if topic is None:
        raise UnexpectedEvent(f"the projector does not consume topic {rec.topic!r}")
    if topic is RESOURCES and rec.is_tombstone:
        return resource_tombstone(rec)
    if topic is COST_LINES and rec.value is not None and _RAW_COST_LINE.match(rec.value):
        return None
    env, data = rec.event()
    accepted = _ACCEPTS[topic].get(type(data))
    if accepted is None:
        raise UnexpectedEvent(f"{env.type} does not belong on {rec.topic}")
    if not accepted:
        return None
    acc, eid = env.account, env.event_id
    match data:
        case Balance():
            return BalanceSnapshot(acc, eid, data)
        case BillingHistoryEntry():
            return HistoryEntry(acc, eid, data)
        case InvoiceDiscovered():
            return Discovered(acc, eid, data, parse_period(data.period))
        case InvoiceEnd():
            return Ingested(acc, eid, data, parse_period(data.period))
        case CostLineMatched():
            return LineMatched(acc, eid, data)
        case InvoiceCompleted():
            why = unproven_reason(data.reconciliation, data.amount_gross_minor, data.amount_tax_minor)
            return Completed(acc, eid, data, parse_period(data.period), why)
        case InvoiceReleased():
            return AdminAction(
                acc, eid, data.invoice_uuid, "release", data.revision, data.released_by, data.reason, data.released_at
            )
        case InvoiceRefetchRequested():
            return AdminAction(
                acc, eid, data.invoice_uuid, "refetch", None, data.requested_by, data.reason, data.requested_at
            )
        case InvoicePushed():
            return Pushed(acc, eid, data)
        case Resource():
            return ResourceSeen(acc, eid, data)
        case BillingAlert():
            return AlertRaised(acc, eid, data)
    raise UnexpectedEvent(f"no projection for {env.type}")  # pragma: no cover - _ACCEPTS lists every case


def resource_tombstone(rec: Record) -> ResourceGone:
    """A tombstone's key `account:kind:id` says which resource disappeared."""
    parts = (rec.key or "").split(":", 2)
    if len(parts) != 3 or not all(parts):
        raise ValueError(f"resource tombstone key {rec.key!r} is not account:kind:id")
    account, kind, resource_id = parts
    return ResourceGone(account, "", kind, resource_id)


def _int_or_none(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def _datetime_or_none(text: str | None) -> datetime | None:
    try:
        return datetime.fromisoformat(text) if text else None
    except ValueError:
        return None


def dead_letter_change(rec: Record) -> DeadLettered:
    """A dead-letter record, read leniently: it must never fail (its own DLQ would be a DLQ of a DLQ)."""
    h = {k: v.decode("utf-8", "replace") for k, v in rec.headers.items()}
    return DeadLettered(
        account="",
        event_id="",
        dlq_topic=rec.topic,
        dlq_partition=rec.partition,
        dlq_offset=rec.offset,
        source_topic=clean_text(h.get(dl.H_TOPIC)),
        source_partition=_int_or_none(h.get(dl.H_PARTITION)),
        source_offset=_int_or_none(h.get(dl.H_OFFSET)),
        error_class=clean_text(h.get(dl.H_ERROR_CLASS)),
        error_message=clean_text(h.get(dl.H_ERROR_MESSAGE)),
        service=clean_text(h.get(dl.H_SERVICE)),
        failed_at=_datetime_or_none(h.get(dl.H_FAILED_AT)),
        record_key=clean_text(rec.key),
        record_value=rec.value,
    )
