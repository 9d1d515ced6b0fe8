"""Message → domain → outputs and table changes, for both matcher inputs. No faust here: the app moves bytes.

Any exception raised here means the record itself cannot be processed (undecodable, wrong type,
invalid): the app dead-letters it and goes on.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from services.matcher.domain import Completed, InventoryEntry, InventoryIndex, LineFact, Waiting, assembly, match_line
from shared.events import CostLine, EventDecodeError, InvoiceEnd, Resource, decode, encode
from shared.kafka.records import Out, Record


@dataclass(frozen=True)
class ResourceChange:
    resource_key: str
    entry: InventoryEntry | None  # None: a tombstone (forgotten); a gone resource is an entry with exists=False


class AssemblyTables(Protocol):
    """Read access to the assembly state (faust tables in the app, dicts in tests)."""

    def completed(self, revision_key: str) -> Completed | None: ...
    def fact(self, fact_key: str) -> LineFact | None: ...
    def waiting(self, invoice_uuid: str) -> Mapping[int, Waiting]: ...


@dataclass
class Step:
    """What one cost-lines record does, applied by the app in this order:

    1. send `outs`; 2. set `facts`; 3. set `completed`, then wait until it is durable;
    4. delete `delete_facts`; 5. set `waiting` (None value: delete the key).
    """

    invoice_uuid: str
    outs: list[Out] = field(default_factory=list)
    facts: dict[str, list[int]] = field(default_factory=dict)
    completed: tuple[str, dict[str, Any]] | None = None
    delete_facts: list[str] = field(default_factory=list)
    waiting: tuple[str, dict[str, Any] | None] | None = None


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
    tables: AssemblyTables,
    *,
    matched_topic: str,
    completed_topic: str,
) -> Step:
    """A CostLine is enriched and its fact recorded; an InvoiceEnd may complete its revision.

    Outputs carry their input's `occurred_at` (their `event_id` is deterministic already): a record processed
    again after a crash or a rebalance produces byte-identical outputs, so a duplicate is a true duplicate.
    """
    env, data = decode(rec.value)
    if isinstance(data, CostLine):
        enriched = match_line(data, env.account, inventory)
        step = Step(
            data.invoice_uuid, [Out(matched_topic, data.invoice_uuid, encode(enriched, env.account, env.occurred_at))]
        )
        done = tables.completed(assembly.revision_key(data.invoice_uuid, data.revision))
        if assembly.record_line(done, rec.offset):
            # `matched` counts toward the completion's matched_count: the seed's figure, lines of current resources.
            fact = LineFact(enriched.still_exists is True, data.amount_minor, data.is_tax)
            step.facts[assembly.fact_key(data.invoice_uuid, data.revision, data.line_index)] = fact.to_json()
        return step
    if isinstance(data, InvoiceEnd):
        inv = data.invoice_uuid
        m = assembly.on_marker(
            data,
            rec.offset,
            completed=tables.completed(assembly.revision_key(inv, data.revision)),
            fact=lambda rev, i: tables.fact(assembly.fact_key(inv, rev, i)),
            waiting=tables.waiting(inv),
            since_ms=rec.timestamp_ms,
        )
        step = Step(inv)
        if m.emit is not None:
            step.outs.append(Out(completed_topic, inv, encode(m.emit, env.account, env.occurred_at)))
        if m.completed is not None:
            step.completed = (assembly.revision_key(inv, data.revision), m.completed.to_json())
        step.delete_facts = [assembly.fact_key(inv, rev, i) for rev, i in m.delete_facts]
        if m.waiting is not None:
            step.waiting = (inv, assembly.waiting_to_json(m.waiting))
        return step
    raise EventDecodeError(f"unexpected event type {env.type!r} on the cost-lines topic")
