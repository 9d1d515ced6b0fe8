"""What a reader of the cost-lines topic assembles, by the matcher's own rule, in memory.

The matcher decides when a revision is complete (services/matcher/domain/assembly.py, applied to one record
by services/matcher/handler.py). `AssemblyReader` feeds records through that same `cost_line_record`, over
dict tables (`DictTables`, applied in the faust app's order), and keeps beside it what the tests check and the
matcher does not store: each revision's lines, copies that disagree (`conflicts`: a bug upstream, since the
ingester binds a revision number to one CSV), and the current revision of each invoice (the newest completed
one wins, as in the read models and the finance pusher: a late older completion is ignored).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from services.matcher import handler
from services.matcher.domain import Completed, InventoryIndex, Waiting, assembly
from shared.events import CostLine, InvoiceCompleted, InvoiceEnd, decode
from shared.kafka.records import Record

MATCHED, COMPLETED = "reader.matched", "reader.completed"  # where the handler's outputs would go


class DictTables:
    """handler.AssemblyTables over dicts, with a batch's Effects applied in the app's order."""

    def __init__(self) -> None:
        self.facts: dict[str, dict[str, list[int]]] = {}
        self.done: dict[str, dict[str, Any]] = {}
        self.waits: dict[str, dict[str, Any]] = {}

    def completed(self, revision_key: str) -> Completed | None:
        return Completed.from_json(self.done.get(revision_key))

    def fact_chunk(self, chunk_key: str) -> Mapping[str, list[int]] | None:
        return self.facts.get(chunk_key)

    def waiting(self, invoice_uuid: str) -> Mapping[int, Waiting]:
        return assembly.waiting_from_json(self.waits.get(invoice_uuid))

    def apply(self, fx: handler.Effects) -> None:
        """app._apply_effects without the delivery wait: every write here is durable at once."""
        self.facts.update(fx.fact_chunks)
        self.done.update(fx.completed)
        for key in fx.delete_chunks:
            self.facts.pop(key, None)
        for key, value in fx.waiting.items():
            if value is None:
                self.waits.pop(key, None)
            else:
                self.waits[key] = value


@dataclass(frozen=True)
class AssembledRevision:
    invoice_uuid: str
    revision: int
    end: InvoiceEnd
    lines: tuple[CostLine, ...]
    completion: InvoiceCompleted  # what the matcher emitted for it


@dataclass
class AssemblyReader:
    inventory: InventoryIndex = field(default_factory=InventoryIndex)
    tables: DictTables = field(default_factory=DictTables)
    lines: dict[tuple[str, int], dict[int, tuple[str, CostLine]]] = field(default_factory=dict)
    ends: dict[tuple[str, int], tuple[str, InvoiceEnd]] = field(default_factory=dict)
    current: dict[str, AssembledRevision] = field(default_factory=dict)
    acted: list[tuple[str, int]] = field(default_factory=list)  # every completion the matcher emitted
    conflicts: list[str] = field(default_factory=list)
    dead_letters: list[tuple[Record, Exception]] = field(default_factory=list)
    next_offset: int = 0  # for `add`: records without a topic position

    def read_all(self, records: Iterable[Record]) -> AssemblyReader:
        for rec in records:
            self.read(rec)
        return self

    def add(self, value: bytes) -> AssembledRevision | None:
        """One record appended to a single partition (unit tests)."""
        rec = Record("cost-lines", 0, self.next_offset, None, value, timestamp_ms=1_000 + self.next_offset)
        self.next_offset += 1
        return self.read(rec)

    def read(self, rec: Record) -> AssembledRevision | None:
        """Fold one record in, at its offset; returns the revision it completed, if any."""
        done = self.read_batch([rec])
        return done[0] if done else None

    def read_batch(self, records: list[Record]) -> list[AssembledRevision]:
        """Fold a batch of records of one partition in, as the app does; returns the revisions completed."""
        acted = []
        for rec in records:
            try:
                env, data = decode(rec.value)
            except Exception:  # the handler dead-letters it
                acted.append(rec)
                continue
            if isinstance(data, CostLine):
                self._keep_line(env.event_id, data)
            elif isinstance(data, InvoiceEnd) and not self._keep_end(env.event_id, data):
                continue  # a conflict: recorded, not acted on
            acted.append(rec)
        fx = handler.cost_lines(acted, self.inventory, self.tables, matched_topic=MATCHED, completed_topic=COMPLETED)
        self.dead_letters.extend(fx.dead)
        self.tables.apply(fx)
        done = []
        for out in fx.outs:
            if out.topic == COMPLETED and out.value is not None:
                _, completion = decode(out.value)
                assert isinstance(completion, InvoiceCompleted)
                done.append(self._completed(completion))
        return done

    def _keep_line(self, event_id: str, line: CostLine) -> None:
        key = (line.invoice_uuid, line.revision)
        got = self.lines.setdefault(key, {})
        prev = got.setdefault(line.line_index, (event_id, line))
        if prev != (event_id, line):
            self.conflicts.append(f"line {key}#{line.line_index} differs between copies")

    def _keep_end(self, event_id: str, end: InvoiceEnd) -> bool:
        """False for a marker whose revision has a line beyond its line_count: a conflict, not acted on."""
        key = (end.invoice_uuid, end.revision)
        prev = self.ends.setdefault(key, (event_id, end))
        if prev != (event_id, end):
            self.conflicts.append(f"end marker {key} differs between copies")
        if any(i >= end.line_count for i in self.lines.get(key, {})):
            self.conflicts.append(f"revision {key} has a line beyond its line_count {end.line_count}")
            return False
        return True

    def _completed(self, completion: InvoiceCompleted) -> AssembledRevision:
        key = (completion.invoice_uuid, completion.revision)
        got = self.lines[key]
        lines = tuple(got[i][1] for i in range(completion.line_count))
        done = AssembledRevision(key[0], key[1], self.ends[key][1], lines, completion)
        self.acted.append(key)
        cur = self.current.get(key[0])
        if cur is None or cur.revision < key[1]:
            self.current[key[0]] = done
        return done
