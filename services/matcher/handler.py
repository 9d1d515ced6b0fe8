"""Message → domain → outputs and table changes, for both matcher inputs. No faust here: the app moves bytes.

A record that cannot be processed itself (undecodable, wrong type, invalid) raises (`resource_change`) or
is returned in `Effects.dead` (`cost_lines`): the app dead-letters it and goes on.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from services.matcher.domain import Completed, InventoryEntry, InventoryIndex, LineFact, Waiting, assembly, match_line
from shared.events import CostLine, EventDecodeError, InvoiceEnd, Resource, decode, encode
from shared.kafka.records import Out, Record


@dataclass(frozen=True)
class ResourceChange:
    resource_key: str
    entry: InventoryEntry | None  # None: a tombstone (forgotten); a gone resource is an entry with exists=False


FactChunk = dict[str, list[int]]  # {str(line_index): LineFact.to_json()}: JSON object keys are strings


class AssemblyTables(Protocol):
    """Read access to the assembly state (faust tables in the app, dicts in tests)."""

    def completed(self, revision_key: str) -> Completed | None: ...
    def fact_chunk(self, chunk_key: str) -> Mapping[str, list[int]] | None: ...
    def waiting(self, invoice_uuid: str) -> Mapping[int, Waiting]: ...


@dataclass
class Effects:
    """What a batch of cost-lines records does, applied by the app in this order:

    1. send `outs` and `dead` (the DLQ); 2. set `fact_chunks`; 3. set `completed`, then wait until every
    write so far is durable; 4. delete `delete_chunks`; 5. set `waiting` (None value: delete the key).
    """

    outs: list[Out] = field(default_factory=list)
    dead: list[tuple[Record, Exception]] = field(default_factory=list)
    fact_chunks: dict[str, FactChunk] = field(default_factory=dict)
    completed: dict[str, dict[str, Any]] = field(default_factory=dict)
    delete_chunks: list[str] = field(default_factory=list)
    waiting: dict[str, dict[str, Any] | None] = field(default_factory=dict)


class _BatchView:
    """The tables as the batch has changed them so far: a later record of the batch sees an earlier one's
    facts, completion and waiting record. Chunks are copied when the batch first changes them."""

    def __init__(self, tables: AssemblyTables) -> None:
        self.tables = tables
        self.chunks: dict[str, FactChunk | None] = {}  # changed in this batch; None: emptied
        self.completions: dict[str, Completed | None] = {}
        self.new_completions: dict[str, dict[str, Any]] = {}
        self.waits: dict[str, Mapping[int, Waiting]] = {}
        self.new_waits: dict[str, dict[str, Any] | None] = {}

    def chunk(self, key: str) -> Mapping[str, list[int]] | None:
        return self.chunks[key] if key in self.chunks else self.tables.fact_chunk(key)

    def fact(self, inv: str, rev: int, i: int) -> LineFact | None:
        chunk = self.chunk(assembly.chunk_key(inv, rev, i))
        v = None if chunk is None else chunk.get(str(i))
        return None if v is None else LineFact.from_json(v)

    def _own(self, key: str) -> FactChunk:
        chunk = self.chunks.get(key)
        if chunk is None:
            chunk = self.chunks[key] = dict(self.chunk(key) or {})
        return chunk

    def set_fact(self, inv: str, rev: int, i: int, fact: LineFact) -> None:
        self._own(assembly.chunk_key(inv, rev, i))[str(i)] = fact.to_json()

    def delete_fact(self, inv: str, rev: int, i: int) -> None:
        key = assembly.chunk_key(inv, rev, i)
        if self.chunk(key) is None:
            return
        chunk = self._own(key)
        chunk.pop(str(i), None)
        if not chunk:
            self.chunks[key] = None

    def completed(self, revision_key: str) -> Completed | None:
        if revision_key not in self.completions:
            self.completions[revision_key] = self.tables.completed(revision_key)
        return self.completions[revision_key]

    def set_completed(self, revision_key: str, done: Completed) -> None:
        self.completions[revision_key] = done
        self.new_completions[revision_key] = done.to_json()

    def waiting(self, inv: str) -> Mapping[int, Waiting]:
        if inv not in self.waits:
            self.waits[inv] = self.tables.waiting(inv)
        return self.waits[inv]

    def set_waiting(self, inv: str, waiting: Mapping[int, Waiting]) -> None:
        self.waits[inv] = waiting
        self.new_waits[inv] = assembly.waiting_to_json(waiting)

    def effects(self, outs: list[Out], dead: list[tuple[Record, Exception]]) -> Effects:
        return Effects(
            outs,
            dead,
            fact_chunks={k: v for k, v in self.chunks.items() if v is not None},
            completed=self.new_completions,
            delete_chunks=[k for k, v in self.chunks.items() if v is None and self.tables.fact_chunk(k) is not None],
            waiting=self.new_waits,
        )


def resource_change(rec: Record) -> ResourceChange:
    if not rec.key:
        raise EventDecodeError("inventory record without a key (expected account:kind:id)")
    if rec.value is None:
        return ResourceChange(rec.key, None)
    env, data = decode(rec.value)
    if not isinstance(data, Resource):
        raise EventDecodeError(f"unexpected event type {env.type!r} on the resources topic")
    return ResourceChange(rec.key, InventoryEntry.from_resource(rec.key, env.account, data))


def cost_lines(
    records: Iterable[Record],
    inventory: InventoryIndex,
    tables: AssemblyTables,
    *,
    matched_topic: str,
    completed_topic: str,
) -> Effects:
    """A batch of cost-lines records, in offset order: each CostLine enriched and its fact recorded, each
    InvoiceEnd possibly completing its revision. A record that cannot be processed goes to `dead` and
    changes nothing.

    Outputs carry their input's `occurred_at` (their `event_id` is deterministic already): a record processed
    again after a crash or a rebalance produces byte-identical outputs, so a duplicate is a true duplicate.
    """
    view = _BatchView(tables)
    outs: list[Out] = []
    dead: list[tuple[Record, Exception]] = []
    for rec in records:
        try:
            outs.extend(_cost_line_record(rec, inventory, view, matched_topic, completed_topic))
        except Exception as e:  # the record itself: undecodable, wrong type, invalid
            dead.append((rec, e))
    return view.effects(outs, dead)


def _cost_line_record(
    rec: Record, inventory: InventoryIndex, view: _BatchView, matched_topic: str, completed_topic: str
) -> list[Out]:
    """One record's outputs; its state changes go into `view`, only once nothing can raise any more."""
    env, data = decode(rec.value)
    if isinstance(data, CostLine):
        enriched = match_line(data, env.account, inventory)
        out = Out(matched_topic, data.invoice_uuid, encode(enriched, env.account, env.occurred_at))
        done = view.completed(assembly.revision_key(data.invoice_uuid, data.revision))
        if assembly.record_line(done, rec.offset):
            # `matched` counts toward the completion's matched_count: the seed's figure, lines of current resources.
            fact = LineFact(enriched.still_exists is True, data.amount_minor, data.is_tax)
            view.set_fact(data.invoice_uuid, data.revision, data.line_index, fact)
        return [out]
    if isinstance(data, InvoiceEnd):
        inv = data.invoice_uuid
        key = assembly.revision_key(inv, data.revision)
        m = assembly.on_marker(
            data,
            rec.offset,
            completed=view.completed(key),
            fact=lambda rev, i: view.fact(inv, rev, i),
            waiting=view.waiting(inv),
            since_ms=rec.timestamp_ms,
        )
        if m.completed is not None:
            view.set_completed(key, m.completed)
        for rev, i in m.delete_facts:
            view.delete_fact(inv, rev, i)
        if m.waiting is not None:
            view.set_waiting(inv, m.waiting)
        return [] if m.emit is None else [Out(completed_topic, inv, encode(m.emit, env.account, env.occurred_at))]
    raise EventDecodeError(f"unexpected event type {env.type!r} on the cost-lines topic")
