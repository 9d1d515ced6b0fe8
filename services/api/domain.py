"""Read-model domain, free of I/O: which change a consumed record makes, status order, cursors, reconciliation.

The projector turns each record into one `Change` (pure), then applies a whole polled batch of changes in
one database transaction (services/api/store.py). Everything here is deterministic, so a replay from
offset 0 yields the same changes and therefore the same read models.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from shared.events import (
    Balance,
    BillingHistoryEntry,
    CostLine,
    CostLineMatched,
    EventData,
    InvoiceCompleted,
    InvoiceDiscovered,
    InvoiceEnd,
    InvoicePushed,
    Resource,
)
from shared.kafka import deadletter as dl
from shared.kafka.records import Record
from shared.topics import (
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
# backwards, while a genuinely new revision starts again at "ingested".
STATUSES: tuple[str, ...] = ("discovered", "ingested", "matched", "completed", "pushed")
RANK: dict[str, int] = {name: i for i, name in enumerate(STATUSES)}


def status_name(rank: int) -> str:
    return STATUSES[rank]


def later_status(current: tuple[int, int], new: tuple[int, int]) -> tuple[int, int]:
    """The status to keep: (revision, rank) only ever grows."""
    return max(current, new)


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


@dataclass(frozen=True)
class Pushed(Change):
    data: InvoicePushed


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
    INVOICE_DISCOVERED: {InvoiceDiscovered: True},
    RESOURCES: {Resource: True},
    COST_LINES: {CostLine: False, InvoiceEnd: True},
    COST_LINES_MATCHED: {CostLineMatched: True},
    INVOICE_COMPLETED: {InvoiceCompleted: True},
    INVOICE_PUSHED: {InvoicePushed: True},
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


def to_change(rec: Record, prefix: str) -> Change | None:
    """The change one record makes, None when it makes none. Raises (→ dead letter) for poison."""
    if rec.topic.endswith(DLQ_SUFFIX):
        return dead_letter_change(rec)
    topic = next((t for t in _ACCEPTS if t.name(prefix) == rec.topic), None)
    if topic is None:
        raise UnexpectedEvent(f"the projector does not consume topic {rec.topic!r}")
    if topic is RESOURCES and rec.is_tombstone:
        return resource_tombstone(rec)
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
            return Completed(acc, eid, data, parse_period(data.period))
        case InvoicePushed():
            return Pushed(acc, eid, data)
        case Resource():
            return ResourceSeen(acc, eid, data)
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


# ------------------------------------------------------------------------------------------------ cursors
class CursorError(ValueError):
    """A pagination cursor this API did not issue (HTTP 422)."""


def encode_cursor(values: list[Any]) -> str:
    """Opaque to clients: the sort key of the last row served, as base64url JSON."""
    raw = json.dumps(values, separators=(",", ":"), default=str).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str, types: tuple[type, ...]) -> list[Any]:
    """Back to the sort key, checking its shape; dates come back from their ISO text."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        values = json.loads(raw)
    except (binascii.Error, ValueError, UnicodeDecodeError) as e:
        raise CursorError("malformed cursor") from e
    if not isinstance(values, list) or len(values) != len(types):
        raise CursorError("malformed cursor")
    out: list[Any] = []
    for v, t in zip(values, types, strict=True):
        if t is date:
            if not isinstance(v, str):
                raise CursorError("malformed cursor")
            try:
                out.append(date.fromisoformat(v))
            except ValueError as e:
                raise CursorError("malformed cursor") from e
        elif t is int:
            if not isinstance(v, int) or isinstance(v, bool):
                raise CursorError("malformed cursor")
            out.append(v)
        elif not isinstance(v, t):
            raise CursorError("malformed cursor")
        else:
            out.append(v)
    return out


# ------------------------------------------------------------------------------------------ reconciliation
def reconciled(status: str | None, amount_minor: int | None, gross_minor: int | None) -> bool | None:
    """Does the invoice's line total agree with what DigitalOcean billed?

    The ingester's reconciliation decides when it knew the expected amount; otherwise the billing-history
    amount is compared with the gross of the lines. None while either side is unknown.
    """
    if status == "matched":
        return True
    if status == "mismatch":
        return False
    if amount_minor is None or gross_minor is None:
        return None
    return amount_minor == gross_minor
