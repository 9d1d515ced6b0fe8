"""The rule a reader of the cost-lines topic applies, as executable reference (used by the ingester's tests).

The embedded broker shows aborted transactions to read_committed consumers, and a crash makes the ingester
re-send a revision, so a reader may see a revision's records partly, twice, or interleaved with a re-send.
The rule that makes that harmless:
- dedupe by (invoice, revision, line_index) for lines and (invoice, revision) for end markers (their event
  ids are deterministic on exactly those);
- act on a revision only once its end marker and all `line_count` lines (indices 0..n-1) are in;
- a complete revision replaces an older one of the same invoice; a late-completing older one is ignored.
Any copy of a revision has the same content (the ledger binds a revision number to one CSV + parser
version), so a disagreement between two copies is recorded as a conflict: it means a bug.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from shared.events import CostLine, Envelope, EventData, InvoiceEnd


@dataclass(frozen=True)
class AssembledRevision:
    invoice_uuid: str
    revision: int
    end: InvoiceEnd
    lines: tuple[CostLine, ...]


@dataclass
class Assembler:
    lines: dict[tuple[str, int], dict[int, tuple[str, CostLine]]] = field(default_factory=dict)
    ends: dict[tuple[str, int], tuple[str, InvoiceEnd]] = field(default_factory=dict)
    current: dict[str, AssembledRevision] = field(default_factory=dict)
    acted: list[tuple[str, int]] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)

    def add(self, env: Envelope, data: EventData) -> AssembledRevision | None:
        """Fold one record in; returns the revision this record completed (acted on), if any."""
        if isinstance(data, CostLine):
            key = (data.invoice_uuid, data.revision)
            got = self.lines.setdefault(key, {})
            prev = got.get(data.line_index)
            if prev is not None:
                if prev != (env.event_id, data):
                    self.conflicts.append(f"line {key}#{data.line_index} differs between copies")
                return None
            got[data.line_index] = (env.event_id, data)
        elif isinstance(data, InvoiceEnd):
            key = (data.invoice_uuid, data.revision)
            prev_end = self.ends.get(key)
            if prev_end is not None:
                if prev_end != (env.event_id, data):
                    self.conflicts.append(f"end marker {key} differs between copies")
                return None
            self.ends[key] = (env.event_id, data)
        else:
            return None
        return self._maybe_complete(key)

    def _maybe_complete(self, key: tuple[str, int]) -> AssembledRevision | None:
        if key in self.acted or key not in self.ends:
            return None
        end = self.ends[key][1]
        got = self.lines.get(key, {})
        if any(i >= end.line_count for i in got):
            self.conflicts.append(f"revision {key} has a line beyond its line_count {end.line_count}")
            return None
        if len(got) < end.line_count:
            return None
        done = AssembledRevision(key[0], key[1], end, tuple(got[i][1] for i in range(end.line_count)))
        self.acted.append(key)
        cur = self.current.get(key[0])
        if cur is None or cur.revision < key[1]:
            self.current[key[0]] = done
        return done
