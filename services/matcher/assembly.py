"""Revision assembly: an invoice revision is completed only once its end marker AND all its lines are in. Pure.

Lines and the marker of one invoice share a partition (key = invoice uuid), but they may be seen more
than once: redelivery after a crash, a replay, or the lines of an aborted transaction that the embedded
broker leaves visible before the ingester re-sends them identically. So lines are a set keyed by
line_index (never a counter), and the completion is tied to ONE log position: the position of the record
at which the revision first became complete. Only a record at that position emits the completion, so a
redelivered completing record re-emits it (at-least-once: it may have been lost in the crash) with the
same content and event id, and nothing else ever emits a second, different one for an unchanged log.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from shared.events import CostLine, InvoiceCompleted, InvoiceEnd, Reconciliation

# Revisions kept per invoice: a re-ingest replaces the line set, older revisions only cost memory.
MAX_REVISIONS = 4


@dataclass(frozen=True)
class LineFact:
    """What a completion needs from one line."""

    matched: bool
    amount_minor: int
    is_tax: bool


@dataclass
class RevisionState:
    lines: dict[int, LineFact] = field(default_factory=dict)
    end: InvoiceEnd | None = None
    complete_at: int | None = None

    def missing(self) -> list[int]:
        if self.end is None:
            return []
        return [i for i in range(self.end.line_count) if i not in self.lines]

    @property
    def complete(self) -> bool:
        return self.end is not None and not self.missing()


@dataclass
class InvoiceState:
    """Everything the matcher remembers about one invoice (the assembly table's value)."""

    revisions: dict[int, RevisionState] = field(default_factory=dict)

    def revision(self, revision: int) -> RevisionState:
        rev = self.revisions.get(revision)
        if rev is None:
            rev = self.revisions[revision] = RevisionState()
            for old in sorted(self.revisions)[:-MAX_REVISIONS]:
                del self.revisions[old]
        return rev

    # ------------------------------------------------------------------------------- serialization
    def to_dict(self) -> dict[str, Any]:
        return {
            "revisions": {
                str(n): {
                    "lines": {str(i): [int(f.matched), f.amount_minor, int(f.is_tax)] for i, f in r.lines.items()},
                    "end": r.end.model_dump(mode="json") if r.end is not None else None,
                    "complete_at": r.complete_at,
                }
                for n, r in self.revisions.items()
            }
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> InvoiceState:
        if not d:
            return cls()
        revisions: dict[int, RevisionState] = {}
        for n, r in (d.get("revisions") or {}).items():
            revisions[int(n)] = RevisionState(
                lines={int(i): LineFact(bool(v[0]), int(v[1]), bool(v[2])) for i, v in (r.get("lines") or {}).items()},
                end=InvoiceEnd.model_validate(r["end"]) if r.get("end") else None,
                complete_at=r.get("complete_at"),
            )
        return cls(revisions)


def on_line(state: InvoiceState, line: CostLine, matched: bool, position: int) -> InvoiceCompleted | None:
    """Record one (possibly repeated) line; returns the completion when this record completes the revision.

    A repeated line overwrites its fact with the latest evaluation (a replay after an inventory fix
    updates the match) but is never counted twice.
    """
    rev = state.revision(line.revision)
    rev.lines[line.line_index] = LineFact(matched, line.amount_minor, line.is_tax)
    return _maybe_complete(rev, position)


def on_end(state: InvoiceState, end: InvoiceEnd, position: int) -> InvoiceCompleted | None:
    """Record the end marker; returns the completion if every line is already in, else it waits for them."""
    rev = state.revision(end.revision)
    rev.end = end
    return _maybe_complete(rev, position)


def _maybe_complete(rev: RevisionState, position: int) -> InvoiceCompleted | None:
    if not rev.complete:
        return None
    if rev.complete_at is None:
        rev.complete_at = position
    if position != rev.complete_at:
        return None
    return completion(rev)


def completion(rev: RevisionState) -> InvoiceCompleted:
    """The normalized invoice revision. Totals are summed from the lines seen; the marker's are the check."""
    end = rev.end
    if end is None:
        raise ValueError("a revision without its end marker cannot be completed")
    facts = [rev.lines[i] for i in range(end.line_count)]
    tax = sum(f.amount_minor for f in facts if f.is_tax)
    net = sum(f.amount_minor for f in facts if not f.is_tax)
    gross = net + tax
    reconciliation = end.reconciliation
    if (net, tax, gross) != (end.amount_net_minor, end.amount_tax_minor, end.amount_gross_minor):
        reconciliation = Reconciliation(
            status="mismatch", expected_minor=end.amount_gross_minor, difference_minor=gross - end.amount_gross_minor
        )
    return InvoiceCompleted(
        invoice_uuid=end.invoice_uuid,
        invoice_id=end.invoice_id,
        revision=end.revision,
        period=end.period,
        invoice_date=end.invoice_date,
        currency=end.currency,
        line_count=end.line_count,
        matched_count=sum(1 for f in facts if f.matched),
        amount_net_minor=net,
        amount_tax_minor=tax,
        amount_gross_minor=gross,
        reconciliation=reconciliation,
    )
