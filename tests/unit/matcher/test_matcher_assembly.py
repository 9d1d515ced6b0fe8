"""Revision assembly: decisions at a marker, and the whole record path (handler) under at-least-once delivery.

`Partition` below plays the faust app over dict tables, with the delivery contract the app relies on: an
offset commit means every earlier table write and output is delivered; a crash keeps the committed state
plus any subset of the later writes and outputs, and processing resumes at the committed offset.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import random
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import date
from unittest import mock

from hypothesis import given, settings
from hypothesis import strategies as st

from services.matcher import handler
from services.matcher.domain import assembly
from services.matcher.domain.assembly import Completed, LineFact, Waiting, on_marker, record_line
from services.matcher.domain.matching import InventoryEntry, InventoryIndex
from shared.events import CostLine, InvoiceCompleted, InvoiceEnd, decode, encode
from shared.kafka.records import Record
from tests.factories import bare_match, cost_line, invoice_end

INV = "3f6a9c2e-8b41-4d7a-9e15-c2d04b7a6e01"
INV2 = "7d1e0c4b-2a9f-4c3e-8b5d-6f7a8b9c0d1e"
ACCOUNT = "default"
MARKER = {"invoice_id": "9217394", "reconciliation": bare_match}  # an end marker without the checks


def _facts(table: dict[tuple[int, int], LineFact]):
    return lambda rev, i: table.get((rev, i))


# ------------------------------------------------------------------------------------------ pure decisions
def test_marker_with_every_fact_completes_and_deletes_them() -> None:
    facts = {(1, 0): LineFact(True, 7902, False), (1, 1): LineFact(False, 790, True)}
    step = on_marker(
        invoice_end(line_count=2, amount_net_minor=7902, amount_tax_minor=790, invoice_uuid=INV, **MARKER),
        10,
        completed=None,
        fact=_facts(facts),
        waiting={},
    )
    done = step.emit
    assert isinstance(done, InvoiceCompleted)
    assert (done.line_count, done.matched_count, done.revision) == (2, 1, 1)
    assert (done.amount_net_minor, done.amount_tax_minor, done.amount_gross_minor) == (7902, 790, 8692)
    assert (done.period, done.invoice_date, done.currency, done.invoice_id) == (
        "2026-04-01",
        date(2026, 5, 1),
        "USD",
        "9217394",
    )
    assert done.reconciliation.status == "matched"
    assert step.completed == Completed(10, done)
    assert step.delete_facts == ((1, 0), (1, 1))
    assert step.waiting is None


def test_marker_with_lines_missing_waits_visibly_and_emits_nothing() -> None:
    facts = {(1, 0): LineFact(True, 100, False)}
    step = on_marker(
        invoice_end(line_count=3, amount_net_minor=300, invoice_uuid=INV, **MARKER),
        5,
        completed=None,
        fact=_facts(facts),
        waiting={},
        since_ms=1_000,
    )
    assert step.emit is None and step.completed is None and step.delete_facts == ()
    assert step.waiting == {1: Waiting(revision=1, position=5, line_count=3, missing=2, since_ms=1_000)}
    again = on_marker(
        invoice_end(line_count=3, amount_net_minor=300, invoice_uuid=INV, **MARKER),
        5,
        completed=None,
        fact=_facts(facts),
        waiting=step.waiting,
        since_ms=1_000,
    )
    assert again.waiting is None  # unchanged: no table write


def test_redelivered_completing_marker_re_emits_the_stored_completion_when_facts_are_gone() -> None:
    facts = {(1, 0): LineFact(True, 100, False), (1, 1): LineFact(True, 100, False)}
    first = on_marker(
        invoice_end(line_count=2, amount_net_minor=200, invoice_uuid=INV, **MARKER),
        9,
        completed=None,
        fact=_facts(facts),
        waiting={},
    )
    assert first.completed is not None
    only_later_line = {(1, 1): LineFact(True, 100, False)}  # line 0 was before the committed offset
    again = on_marker(
        invoice_end(line_count=2, amount_net_minor=200, invoice_uuid=INV, **MARKER),
        9,
        completed=first.completed,
        fact=_facts(only_later_line),
        waiting={},
    )
    assert again.emit == first.emit
    assert again.completed is None and again.delete_facts == ((1, 1),)


def test_duplicate_marker_after_the_completion_emits_nothing_and_earlier_markers_wait_for_it() -> None:
    done = on_marker(
        invoice_end(line_count=1, amount_net_minor=100, invoice_uuid=INV, **MARKER),
        9,
        completed=None,
        fact=_facts({(1, 0): LineFact(True, 100, False)}),
        waiting={},
    )
    assert done.completed is not None
    later = on_marker(
        invoice_end(line_count=1, amount_net_minor=100, invoice_uuid=INV, **MARKER),
        12,
        completed=done.completed,
        fact=_facts({(1, 0): LineFact(True, 100, False)}),
        waiting={},
    )
    assert later.emit is None and later.delete_facts == ((1, 0),)
    earlier = on_marker(
        invoice_end(line_count=1, amount_net_minor=100, invoice_uuid=INV, **MARKER),
        4,
        completed=done.completed,
        fact=_facts({}),
        waiting={},
    )
    assert earlier == assembly.MarkerStep()


def test_lines_after_the_completion_are_not_recorded() -> None:
    empty = invoice_end(line_count=0, amount_net_minor=0, invoice_uuid=INV, **MARKER)
    done = Completed(9, on_marker(empty, 9, completed=None, fact=_facts({}), waiting={}).emit)  # type: ignore[arg-type]
    assert record_line(None, 3) and record_line(done, 3) and record_line(done, 9)
    assert not record_line(done, 10)


def test_a_completed_revision_supersedes_older_waiting_ones() -> None:
    old = Waiting(revision=1, position=3, line_count=2, missing=1, since_ms=None)
    newer = Waiting(revision=3, position=30, line_count=5, missing=5, since_ms=None)
    facts = {(1, 0): LineFact(False, 1, False), (2, 0): LineFact(True, 50, False)}
    step = on_marker(
        invoice_end(line_count=1, amount_net_minor=50, invoice_uuid=INV, revision=2, **MARKER),
        20,
        completed=None,
        fact=_facts(facts),
        waiting={1: old, 3: newer},
    )
    assert step.emit is not None and step.emit.revision == 2
    assert step.delete_facts == ((2, 0), (1, 0))
    assert step.waiting == {3: newer}


def test_totals_come_from_the_lines_and_a_disagreeing_marker_is_flagged() -> None:
    step = on_marker(
        invoice_end(line_count=1, amount_net_minor=150, invoice_uuid=INV, **MARKER),
        1,
        completed=None,
        fact=_facts({(1, 0): LineFact(True, 100, False)}),
        waiting={},
    )
    assert step.emit is not None and step.emit.reconciliation.status == "mismatch"
    assert (step.emit.reconciliation.expected_minor, step.emit.reconciliation.difference_minor) == (150, -50)


def test_empty_invoice_completes_at_its_marker() -> None:
    step = on_marker(
        invoice_end(line_count=0, amount_net_minor=0, invoice_uuid=INV, **MARKER),
        0,
        completed=None,
        fact=_facts({}),
        waiting={},
    )
    assert step.emit is not None and (step.emit.line_count, step.emit.matched_count, step.emit.amount_gross_minor) == (
        0,
        0,
        0,
    )


def test_state_records_round_trip_through_json() -> None:
    fact = LineFact(True, -250, False)
    assert LineFact.from_json(json.loads(json.dumps(fact.to_json()))) == fact
    done = on_marker(
        invoice_end(line_count=1, amount_net_minor=100, invoice_uuid=INV, **MARKER),
        4,
        completed=None,
        fact=_facts({(1, 0): fact}),
        waiting={},
    ).completed
    assert done is not None and Completed.from_json(json.loads(json.dumps(done.to_json()))) == done
    assert Completed.from_json(None) is None
    waiting = {2: Waiting(2, 8, 10, 3, 1_700_000_000_000)}
    raw = assembly.waiting_to_json(waiting)
    assert assembly.waiting_from_json(json.loads(json.dumps(raw))) == waiting
    assert assembly.waiting_to_json({}) is None and assembly.waiting_from_json(None) == {}


# ------------------------------------------------------------------------------ the record path, with crashes
@dataclass
class Partition:
    """One cost-lines partition processed by the matcher over dict tables, with at-least-once delivery."""

    inventory: InventoryIndex
    rng: random.Random
    tables: dict[str, dict[str, object]] = field(default_factory=lambda: {"facts": {}, "completed": {}, "waiting": {}})
    durable: dict[str, dict[str, object]] = field(default_factory=lambda: {"facts": {}, "completed": {}, "waiting": {}})
    pending: list[tuple[str, str, object]] = field(default_factory=list)  # writes not yet delivered
    pending_outs: list[bytes] = field(default_factory=list)
    delivered: list[bytes] = field(default_factory=list)  # invoice-completed records that reached the topic
    committed: int = 0

    # handler.AssemblyTables
    def completed(self, revision_key: str) -> Completed | None:
        return Completed.from_json(self.tables["completed"].get(revision_key))  # type: ignore[arg-type]

    def fact_chunk(self, chunk_key: str) -> Mapping[str, list[int]] | None:
        return self.tables["facts"].get(chunk_key)  # type: ignore[return-value]

    def waiting(self, invoice_uuid: str) -> Mapping[int, Waiting]:
        return assembly.waiting_from_json(self.tables["waiting"].get(invoice_uuid))  # type: ignore[arg-type]

    def _write(self, table: str, key: str, value: object) -> None:
        if value is None:
            self.tables[table].pop(key, None)
        else:
            self.tables[table][key] = value
        self.pending.append((table, key, value))

    def _deliver(self, writes: list[tuple[str, str, object]], outs: list[bytes]) -> None:
        for table, key, value in writes:
            if value is None:
                self.durable[table].pop(key, None)
            else:
                self.durable[table][key] = value
        self.delivered.extend(outs)

    def flush(self) -> None:
        self._deliver(self.pending, self.pending_outs)
        self.pending, self.pending_outs = [], []

    def process(self, first: int, values: list[bytes]) -> None:
        """What app._apply_effects does with one batch (records at offsets first, first + 1, ...), in order."""
        batch = [
            Record("billing.cost-lines.v1", 0, first + k, None, v, timestamp_ms=1_000 + first + k)
            for k, v in enumerate(values)
        ]
        fx = handler.cost_lines(batch, self.inventory, self, matched_topic="m", completed_topic="c")
        self.pending_outs.extend(o.value for o in fx.outs if o.topic == "c" and o.value is not None)
        for key, chunk in fx.fact_chunks.items():
            self._write("facts", key, chunk)
        for key, value in fx.completed.items():
            self._write("completed", key, value)
        if fx.completed:
            self.flush()  # the app waits for the completed records' delivery before deleting facts
        for key in fx.delete_chunks:
            if key in self.tables["facts"]:
                self._write("facts", key, None)
        for key, value in fx.waiting.items():
            self._write("waiting", key, value)

    def run(
        self,
        log: list[bytes],
        *,
        crash_after: set[int] = frozenset(),
        commit_every: int = 3,
        batch: Callable[[], int] = lambda: 1,
    ) -> None:
        """Process `log` from the committed offset to its end in batches of `batch()` records; crash after the
        batch that reaches one of the given offsets (once each); commit after a batch every `commit_every`."""
        crashes = set(crash_after)
        offset = self.committed
        while offset < len(log):
            values = log[offset : offset + batch()]
            self.process(offset, values)
            offset += len(values)
            if crashed := {c for c in crashes if c <= offset}:
                crashes -= crashed
                self.crash()
                offset = self.committed
            elif offset // commit_every != (offset - len(values)) // commit_every or offset == len(log):
                self.flush()
                self.committed = offset

    def crash(self) -> None:
        """Keep any subset of the undelivered writes and outputs; recover the tables from what was delivered."""
        self._deliver(
            [w for w in self.pending if self.rng.random() < 0.5],
            [o for o in self.pending_outs if self.rng.random() < 0.5],
        )
        self.pending, self.pending_outs = [], []
        self.tables = {name: dict(t) for name, t in self.durable.items()}

    def completions(self) -> dict[str, InvoiceCompleted]:
        """Distinct completions delivered, by event id."""
        out = {}
        for value in self.delivered:
            env, data = decode(value)
            assert isinstance(data, InvoiceCompleted)
            out[env.event_id] = data
        return out


def _inventory(names: list[str]) -> InventoryIndex:
    return InventoryIndex(
        InventoryEntry(f"{ACCOUNT}:droplet:{i}", ACCOUNT, "droplet", str(i), name) for i, name in enumerate(names)
    )


def _encoded(events: list[CostLine | InvoiceEnd]) -> list[bytes]:
    return [encode(e, ACCOUNT) for e in events]


@st.composite
def deliveries(draw: st.DrawFn) -> tuple[list[bytes], dict[str, tuple[int, int, int]]]:
    """A partition's log: per invoice, visible aborted attempts (any prefix of lines + marker, as the embedded
    broker leaves them), then the committed attempt, optionally an identical re-send; two invoices' transactions
    interleaved (two ingester replicas). Returns the log and each invoice's expected (lines, matched, gross)."""
    logs, expected = [], {}
    for invoice in (INV, INV2)[: draw(st.integers(1, 2))]:
        n = draw(st.integers(0, 12))
        lines = [
            cost_line(i, 100 + i, invoice_uuid=invoice, droplet=f"node-{i}", is_tax=(i == n - 1 and n > 2))
            for i in range(n)
        ]
        tax = sum(x.amount_minor for x in lines if x.is_tax)
        attempt = [
            *lines,
            invoice_end(
                line_count=n,
                amount_net_minor=sum(x.amount_minor for x in lines) - tax,
                amount_tax_minor=tax,
                invoice_uuid=invoice,
                **MARKER,
            ),
        ]
        records: list[CostLine | InvoiceEnd] = []
        for cut in draw(st.lists(st.integers(0, n + 1), max_size=3)):
            records += attempt[:cut]
        records += attempt
        if draw(st.booleans()):
            records += attempt
        logs.append(records)
        matched = sum(1 for x in lines if not x.is_tax and x.line_index % 2 == 0)
        expected[invoice] = (n, matched, sum(x.amount_minor for x in lines))
    # Interleave whole records of the invoices, keeping each invoice's order.
    merged: list[CostLine | InvoiceEnd] = []
    cursors = [0] * len(logs)
    while any(c < len(lg) for c, lg in zip(cursors, logs, strict=True)):
        k = draw(st.sampled_from([i for i, lg in enumerate(logs) if cursors[i] < len(lg)]))
        merged.append(logs[k][cursors[k]])
        cursors[k] += 1
    return _encoded(merged), expected


EVEN_NODES = [f"node-{i}" for i in range(0, 12, 2)]


@contextlib.contextmanager
def chunk_lines(n: int) -> Iterator[None]:
    """Fact chunks of `n` lines (the app's are 256): small invoices then span several chunks."""
    with mock.patch.object(assembly, "CHUNK_LINES", n):
        yield


def cycling(sizes: list[int]) -> Callable[[], int]:
    it = itertools.cycle(sizes)
    return lambda: next(it)


@settings(max_examples=300, deadline=None)
@given(
    log_expected=deliveries(),
    crashes=st.sets(st.integers(1, 60), max_size=4),
    commit_every=st.integers(1, 7),
    batches=st.lists(st.integers(1, 20), min_size=1, max_size=5),
    chunk=st.integers(1, 5),
    seed=st.integers(0, 2**32),
)
def test_any_delivery_with_crashes_completes_each_revision_exactly_once_with_the_right_totals(
    log_expected: tuple[list[bytes], dict[str, tuple[int, int, int]]],
    crashes: set[int],
    commit_every: int,
    batches: list[int],
    chunk: int,
    seed: int,
) -> None:
    """Any batch sizes (the app's batches are what arrived within a few ms), fact chunks of 1 to 5 lines."""
    log, expected = log_expected
    part = Partition(_inventory(EVEN_NODES), random.Random(seed))
    with chunk_lines(chunk):
        part.run(log, crash_after=crashes, commit_every=commit_every, batch=cycling(batches))
    got = part.completions()
    assert sorted(c.invoice_uuid for c in got.values()) == sorted(expected), "one distinct completion per revision"
    for c in got.values():
        assert (c.line_count, c.matched_count, c.amount_gross_minor) == expected[c.invoice_uuid]
        assert c.amount_net_minor + c.amount_tax_minor == c.amount_gross_minor
        assert c.reconciliation.status == "matched"
    assert part.durable["facts"] == {} == part.tables["facts"], "facts are deleted once their revision completed"
    assert part.durable["waiting"] == {}


@settings(max_examples=100, deadline=None)
@given(
    log_expected=deliveries(),
    crashes=st.sets(st.integers(1, 60), max_size=3),
    batches=st.lists(st.integers(1, 20), min_size=1, max_size=5),
    chunk=st.integers(1, 5),
    seed=st.integers(0, 2**32),
)
def test_replay_from_the_start_after_an_inventory_fix_re_evaluates_each_revision_once(
    log_expected: tuple[list[bytes], dict[str, tuple[int, int, int]]],
    crashes: set[int],
    batches: list[int],
    chunk: int,
    seed: int,
) -> None:
    log, expected = log_expected
    part = Partition(_inventory(EVEN_NODES), random.Random(seed))
    with chunk_lines(chunk):
        part.run(log, batch=cycling(batches))
        before = part.completions()
        part.inventory = _inventory([f"node-{i}" for i in range(12)])  # every droplet now exists
        part.committed = 0  # `cloudbill replay matcher --from-beginning`: group rewound, tables kept
        part.run(log, crash_after=crashes, batch=cycling(batches))
    after = {i: c for i, c in part.completions().items() if i not in before}
    for invoice, (n, matched, gross) in expected.items():
        taxed = 1 if n > 2 else 0
        fixed = [c for c in after.values() if c.invoice_uuid == invoice]
        if n - taxed == matched:  # nothing to re-match: the replay re-emitted the same event (same id)
            assert fixed == []
            continue
        assert len(fixed) == 1, fixed
        assert (fixed[0].matched_count, fixed[0].amount_gross_minor) == (n - taxed, gross)
    assert part.durable["facts"] == {}


def test_a_line_that_never_arrives_leaves_its_revision_waiting_not_completed() -> None:
    lines = [cost_line(i, invoice_uuid=INV, droplet=f"node-{i}") for i in range(4)]
    log = _encoded(
        [lines[0], lines[1], lines[3], invoice_end(line_count=4, amount_net_minor=400, invoice_uuid=INV, **MARKER)]
    )
    part = Partition(_inventory([]), random.Random(1))
    part.run(log)
    assert part.completions() == {}
    [(invoice, raw)] = part.durable["waiting"].items()
    assert invoice == INV
    assert assembly.waiting_from_json(raw) == {
        1: Waiting(revision=1, position=3, line_count=4, missing=1, since_ms=1_003)
    }  # type: ignore[arg-type]
    # The invoice is re-ingested as revision 2 (all lines): it completes and revision 1 stops waiting.
    rev2 = [cost_line(i, invoice_uuid=INV, revision=2, droplet=f"node-{i}") for i in range(4)]
    part.run(
        log + _encoded([*rev2, invoice_end(line_count=4, amount_net_minor=400, invoice_uuid=INV, revision=2, **MARKER)])
    )
    [done] = part.completions().values()
    assert (done.revision, done.line_count) == (2, 4)
    assert part.durable["waiting"] == {} and part.durable["facts"] == {}


def _bytes_per_line(n: int, batch: int) -> tuple[float, int]:
    """Changelog bytes written per line for an n-line invoice read in batches, and the largest chunk written."""
    lines = [cost_line(i, invoice_uuid=INV, droplet=f"node-{i}") for i in range(n)]
    part = Partition(_inventory([]), random.Random(1))
    written, largest = 0, 0
    log = _encoded(lines)
    for first in range(0, n, batch):
        before = len(part.pending)
        part.process(first, log[first : first + batch])
        writes = part.pending[before:]
        assert {table for table, _, _ in writes} == {"facts"}
        assert len(writes) <= batch // assembly.CHUNK_LINES + 2  # one write per chunk the batch touched
        written += sum(len(key) + len(json.dumps(chunk)) for _, key, chunk in writes)
        largest = max([largest, *(len(chunk) for _, _, chunk in writes)])  # type: ignore[arg-type]
    part.process(n, [encode(invoice_end(line_count=n, amount_net_minor=100 * n, invoice_uuid=INV, **MARKER), ACCOUNT)])
    [done] = [decode(v)[1] for v in part.delivered]
    assert isinstance(done, InvoiceCompleted) and done.line_count == n and part.tables["facts"] == {}
    return written / n, largest


def test_work_per_line_does_not_grow_with_the_invoice_size() -> None:
    """No value that grows with the invoice: per line, the bytes written are about the same for 512 and 3,072 lines (longer line numbers),
    one record at a time (a chunk rewritten per line, the worst case) or in batches of 500."""
    for batch in (1, 500):
        small, largest_small = _bytes_per_line(512, batch)
        large, largest_large = _bytes_per_line(3_072, batch)
        assert largest_small <= assembly.CHUNK_LINES and largest_large <= assembly.CHUNK_LINES
        assert large <= small * 1.25, (batch, small, large)  # 6x the lines: growing state would be 6x
    assert _bytes_per_line(3_000, 500)[0] <= 60  # a few dozen bytes per line in batches
