"""Message → domain → outputs, for both matcher inputs. No faust here: the app only moves bytes.

Any exception raised here means the record itself cannot be processed (undecodable, wrong type,
invalid): the app dead-letters it and goes on.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from services.matcher import assembly
from services.matcher.matching import InventoryEntry, InventoryIndex, match_line
from shared.events import CostLine, EventDecodeError, InvoiceEnd, Resource, decode, encode
from shared.kafka.records import Out, Record


@dataclass(frozen=True)
class ResourceChange:
    resource_key: str
    entry: InventoryEntry | None  # None: the resource is gone (tombstone)


@dataclass
class Step:
    """What one cost-lines record produces: records to send, then the invoice's new assembly state."""

    invoice_uuid: str
    state: dict[str, Any]
    outs: list[Out] = field(default_factory=list)


def resource_change(rec: Record) -> ResourceChange:
    if not rec.key:
        raise EventDecodeError("inventory record without a key (expected account:kind:id)")
    if rec.value is None:
        return ResourceChange(rec.key, None)
    env, data = decode(rec.value)
    if not isinstance(data, Resource):
        raise EventDecodeError(f"unexpected event type {env.type!r} on the resources topic")
    return ResourceChange(rec.key, InventoryEntry.from_resource(rec.key, env.account, data))


def cost_line_record(
    rec: Record,
    inventory: InventoryIndex,
    *,
    state_of: Callable[[str], Mapping[str, Any] | None],
    matched_topic: str,
    completed_topic: str,
) -> Step:
    """A CostLine is enriched and recorded; an InvoiceEnd is recorded; either may complete its revision."""
    env, data = decode(rec.value)
    if isinstance(data, CostLine):
        state = assembly.InvoiceState.from_dict(state_of(data.invoice_uuid))
        enriched = match_line(data, env.account, inventory)
        outs = [Out(matched_topic, data.invoice_uuid, encode(enriched, env.account))]
        done = assembly.on_line(state, data, enriched.resource_id is not None, rec.offset)
        invoice = data.invoice_uuid
    elif isinstance(data, InvoiceEnd):
        state = assembly.InvoiceState.from_dict(state_of(data.invoice_uuid))
        outs = []
        done = assembly.on_end(state, data, rec.offset)
        invoice = data.invoice_uuid
    else:
        raise EventDecodeError(f"unexpected event type {env.type!r} on the cost-lines topic")
    if done is not None:
        outs.append(Out(completed_topic, invoice, encode(done, env.account)))
    return Step(invoice, state.to_dict(), outs)
