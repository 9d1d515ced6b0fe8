"""Revision assembly: an invoice revision is completed once its end marker is read and all its lines are in. Pure.

State (kept by the app in three faust tables, changelog-backed, all keyed by strings of one invoice so they
live in the partition of the invoice's records):

- **line facts**, what the completion needs from each line (matched?, amount, tax?), in chunks of
  `CHUNK_LINES` consecutive lines: key `invoice|revision|chunk`, value `{line_index: fact}`. The app
  processes records in batches and writes each chunk a batch touched once, merged with its stored value:
  a set union, never a counter, so a line written twice is the same fact, and work and bytes per line are
  O(1) whatever the invoice's size (a chunk is bounded; one changelog record per chunk and batch, not one
  per line);
- a **completed** record per revision, key `invoice|revision`: the offset of the marker that completed it
  and the completion itself (fixed size);
- a **waiting** record per invoice, key `invoice`: revisions whose marker was read with lines missing.

Completion happens only at a marker, by reading the revision's n facts (O(n) once per revision: O(1)
amortized per line). The ingester writes a revision's lines and then its marker in one transaction keyed
by the invoice, so in the partition every line precedes its marker; a marker with lines missing therefore
means lines that will never come (dead-lettered, lost upstream): the revision is *waiting*, visible
(metric, `cloudbill status`), never silent. After a completion its facts are deleted, so memory holds only
open revisions.

Why no line's contribution is lost or doubled (`docs/architecture.md`, "Matcher: completion"):

- **At-least-once and duplicates.** A line read twice (redelivery, replay, or an aborted transaction the
  embedded broker leaves visible, then the ingester's identical retry) rewrites the same fact: sets, not
  sums. The completion has one position, the offset of the marker that completed it (stored in the
  completed record): only a marker at that offset emits. A redelivered completing marker re-emits, with the
  same content and event id; a later duplicate marker (the retry after a visible aborted attempt that was
  already complete) emits nothing, and lines after the completion write no facts.
- **Crash between two table writes.** Source offsets are committed only after every table write of the
  records before them is delivered (faust_patches 2), so a crash leaves the committed state plus *some* of
  the later writes, and every record after the committed offset is read again. Re-reading rewrites the same
  facts. At a completion the completed record is made durable *before* any fact is deleted; so facts can be
  missing at a redelivered completing marker only when its completed record exists, and the marker then
  re-emits that stored completion.
- **Replay after an inventory fix** (group rewound to the start, tables kept): every line is re-matched and
  its fact rewritten before the completing marker is read again, which then finds all facts and emits the
  re-evaluated completion (a new event id if the matched count changed). A replay that starts inside a
  revision finds facts missing and re-emits the stored completion unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from shared.events import InvoiceCompleted, InvoiceEnd, Reconciliation

SEP = "|"


def revision_key(invoice_uuid: str, revision: int) -> str:
    return f"{invoice_uuid}{SEP}{revision}"


# Lines per fact chunk: a chunk's value stays small (a few KiB) whatever the invoice's size.
CHUNK_LINES = 256


def chunk_key(invoice_uuid: str, revision: int, line_index: int) -> str:
    """The key of the fact chunk holding line `line_index` of a revision: `invoice|revision|chunk`."""
    return f"{invoice_uuid}{SEP}{revision}{SEP}{line_index // CHUNK_LINES}"


@dataclass(frozen=True, slots=True)
class LineFact:
    """What a completion needs from one line (three small ints in the table)."""

    matched: bool
    amount_minor: int
    is_tax: bool

    def to_json(self) -> list[int]:
        return [int(self.matched), self.amount_minor, int(self.is_tax)]

    @classmethod
    def from_json(cls, v: Any) -> LineFact:
        return cls(bool(v[0]), int(v[1]), bool(v[2]))


@dataclass(frozen=True)
class Completed:
    """A completed revision: the offset of the marker that completed it, and what it emitted."""

    position: int
    event: InvoiceCompleted

    def to_json(self) -> dict[str, Any]:
        return {"position": self.position, "event": self.event.model_dump(mode="json")}

    @classmethod
    def from_json(cls, v: Mapping[str, Any] | None) -> Completed | None:
        if not v:
            return None
        return cls(int(v["position"]), InvoiceCompleted.model_validate(v["event"]))


@dataclass(frozen=True)
class Waiting:
    """A revision whose marker was read while lines were missing."""

    revision: int
    position: int
    line_count: int
    missing: int
    since_ms: int | None  # the marker record's timestamp

    def to_json(self) -> dict[str, Any]:
        return {
            "revision": self.revision,
            "position": self.position,
            "line_count": self.line_count,
            "missing": self.missing,
            "since_ms": self.since_ms,
        }

    @classmethod
    def from_json(cls, v: Mapping[str, Any]) -> Waiting:
        return cls(int(v["revision"]), int(v["position"]), int(v["line_count"]), int(v["missing"]), v.get("since_ms"))


def waiting_from_json(v: Mapping[str, Any] | None) -> dict[int, Waiting]:
    """An invoice's waiting record: {revision: Waiting}."""
    return {int(r): Waiting.from_json(w) for r, w in (v or {}).items()}


def waiting_to_json(waiting: Mapping[int, Waiting]) -> dict[str, Any] | None:
    """None when nothing waits (the app then deletes the key)."""
    return {str(r): w.to_json() for r, w in sorted(waiting.items())} or None


def record_line(completed: Completed | None, position: int) -> bool:
    """Whether a line read at `position` is recorded as a fact.

    Not when its revision was completed at an earlier offset: it is a duplicate (the ingester's retry after
    a visible aborted attempt), and its fact would never be deleted.
    """
    return completed is None or position <= completed.position


@dataclass(frozen=True)
class MarkerStep:
    """What one marker record does, in the order the app must apply it."""

    emit: InvoiceCompleted | None = None
    # Written and made durable before any fact below is deleted (see the module docstring).
    completed: Completed | None = None
    delete_facts: tuple[tuple[int, int], ...] = ()  # (revision, line_index) of facts present, to delete
    waiting: dict[int, Waiting] | None = None  # the invoice's new waiting record (None: unchanged)


def on_marker(
    end: InvoiceEnd,
    position: int,
    *,
    completed: Completed | None,
    fact: Callable[[int, int], LineFact | None],
    waiting: Mapping[int, Waiting],
    since_ms: int | None = None,
) -> MarkerStep:
    """Decide what the marker at `position` does, given the revision's completed record, its facts and the
    invoice's waiting revisions. `fact(revision, line_index)` reads one fact."""
    rev = end.revision
    if completed is not None and position != completed.position:
        if position < completed.position:
            return MarkerStep()  # an earlier, incomplete attempt's marker read again: the completion comes later
        # A duplicate marker after the completion: nothing to emit; drop facts a crash may have left.
        return MarkerStep(delete_facts=_present(rev, range(end.line_count), fact))
    facts = [fact(rev, i) for i in range(end.line_count)]
    missing = sum(1 for f in facts if f is None)
    if missing == 0:
        done = completion(end, facts)  # type: ignore[arg-type]  # no None left
        others = {r: w for r, w in waiting.items() if r > rev}  # older revisions are superseded
        superseded = [(w.revision, i) for w in waiting.values() if w.revision < rev for i in range(w.line_count)]
        return MarkerStep(
            emit=done,
            completed=Completed(position, done),
            delete_facts=tuple((rev, i) for i in range(end.line_count)) + _present_pairs(superseded, fact),
            waiting=others if others != dict(waiting) else None,
        )
    if completed is not None:
        # The completing marker read again after its facts were deleted (redelivery after a crash, or a replay
        # that started inside the revision): the stored completion, unchanged.
        return MarkerStep(emit=completed.event, delete_facts=_present(rev, range(end.line_count), fact))
    w = Waiting(rev, position, end.line_count, missing, since_ms)
    new = {**waiting, rev: w}
    return MarkerStep(waiting=new if waiting.get(rev) != w else None)


def _present(rev: int, indices: range, fact: Callable[[int, int], LineFact | None]) -> tuple[tuple[int, int], ...]:
    return tuple((rev, i) for i in indices if fact(rev, i) is not None)


def _present_pairs(
    pairs: list[tuple[int, int]], fact: Callable[[int, int], LineFact | None]
) -> tuple[tuple[int, int], ...]:
    return tuple(p for p in pairs if fact(*p) is not None)


def completion(end: InvoiceEnd, facts: list[LineFact]) -> InvoiceCompleted:
    """The normalized invoice revision. Totals are summed from the lines; the marker's are the check."""
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
