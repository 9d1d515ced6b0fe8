"""Revision assembly: complete once, at one log position; no double counting; state survives JSON."""

from __future__ import annotations

import json
from datetime import date

from hypothesis import given, settings
from hypothesis import strategies as st

from services.matcher import assembly
from services.matcher.assembly import InvoiceState, on_end, on_line
from shared.events import CostLine, InvoiceCompleted, InvoiceEnd, Reconciliation, make_envelope

INV = "3f6a9c2e-8b41-4d7a-9e15-c2d04b7a6e01"


def _line(idx: int, amount: int = 100, *, revision: int = 1, tax: bool = False) -> CostLine:
    return CostLine(
        invoice_uuid=INV,
        revision=revision,
        line_index=idx,
        product="Taxes" if tax else "Droplets",
        description="GST (10%)" if tax else f"d-{idx} (s)",
        amount_minor=amount,
        is_tax=tax,
    )


def _end(line_count: int, *, revision: int = 1, net: int | None = None, tax: int = 0) -> InvoiceEnd:
    net = 100 * line_count if net is None else net
    return InvoiceEnd(
        invoice_uuid=INV,
        invoice_id="9217394",
        revision=revision,
        period="2026-04-01",
        invoice_date=date(2026, 5, 1),
        line_count=line_count,
        amount_net_minor=net,
        amount_tax_minor=tax,
        amount_gross_minor=net + tax,
        csv_sha256="ab",
        parser_version="1",
        reconciliation=Reconciliation(status="matched", expected_minor=net + tax, difference_minor=0),
    )


def _roundtrip(state: InvoiceState) -> InvoiceState:
    """What the table does between two records: JSON out, JSON in."""
    return InvoiceState.from_dict(json.loads(json.dumps(state.to_dict())))


def test_lines_then_marker_complete_at_the_marker() -> None:
    s = InvoiceState()
    assert on_line(s, _line(0), True, 10) is None
    assert on_line(s, _line(1), False, 11) is None
    done = on_end(s, _end(2), 12)
    assert isinstance(done, InvoiceCompleted)
    assert (done.line_count, done.matched_count, done.amount_net_minor, done.revision) == (2, 1, 200, 1)
    assert (done.period, done.invoice_date, done.currency, done.invoice_id) == (
        "2026-04-01",
        date(2026, 5, 1),
        "USD",
        "9217394",
    )
    assert done.reconciliation.status == "matched"


def test_marker_with_missing_lines_waits_for_them() -> None:
    s = InvoiceState()
    on_line(s, _line(0), True, 1)
    assert on_end(s, _end(3), 2) is None
    assert s.revisions[1].missing() == [1, 2]
    assert on_line(s, _line(2), True, 3) is None
    done = on_line(s, _line(1), True, 4)
    assert done is not None and done.matched_count == 3


def test_duplicates_and_aborted_attempt_resends_do_not_double_count() -> None:
    s = InvoiceState()
    # An aborted attempt (visible on the embedded broker) wrote lines 0 and 1, then the retry re-sent all.
    on_line(s, _line(0), True, 0)
    on_line(s, _line(1), True, 1)
    for pos, idx in enumerate([0, 1, 2], start=2):
        on_line(s, _line(idx), True, pos)
    done = on_end(s, _end(3), 5)
    assert done is not None and (done.line_count, done.matched_count, done.amount_gross_minor) == (3, 3, 300)


def test_redelivery_of_the_completing_record_re_emits_the_same_event() -> None:
    s = InvoiceState()
    on_line(s, _line(0), True, 0)
    first = on_end(s, _end(1), 1)
    s = _roundtrip(s)  # the state survived (changelog) but the output may not have: the marker comes again
    on_line(s, _line(0), True, 0)
    again = on_end(s, _end(1), 1)
    assert first == again
    assert make_envelope(first, "a").event_id == make_envelope(again, "a").event_id


def test_records_after_completion_emit_nothing_more() -> None:
    s = InvoiceState()
    on_line(s, _line(0), True, 0)
    assert on_end(s, _end(1), 1) is not None
    assert on_line(s, _line(0), True, 2) is None  # a late duplicate
    assert on_end(s, _end(1), 3) is None  # a second marker (an aborted attempt's, then the retry's)


def test_a_line_completing_after_its_marker_owns_the_completion() -> None:
    s = InvoiceState()
    assert on_end(s, _end(1), 5) is None
    assert on_line(s, _line(0), False, 6) is not None
    s = _roundtrip(s)
    assert on_end(s, _end(1), 5) is None  # replayed marker: not the completing position
    assert on_line(s, _line(0), False, 6) is not None  # the completing line, redelivered


def test_replay_after_an_inventory_fix_updates_the_count_without_double_counting() -> None:
    s = InvoiceState()
    on_line(s, _line(0), False, 0)
    on_line(s, _line(1), True, 1)
    before = on_end(s, _end(2), 2)
    # The group is rewound: the same records, line 0 now matches.
    assert on_line(s, _line(0), True, 0) is None
    assert on_line(s, _line(1), True, 1) is None
    after = on_end(s, _end(2), 2)
    assert before is not None and after is not None
    assert (before.matched_count, after.matched_count, after.line_count) == (1, 2, 2)
    assert make_envelope(before, "a").event_id != make_envelope(after, "a").event_id


def test_revisions_are_assembled_independently() -> None:
    s = InvoiceState()
    on_line(s, _line(0, revision=1), True, 0)
    on_line(s, _line(0, revision=2, amount=50), False, 1)
    assert on_end(s, _end(2, revision=2, net=150), 2) is None  # revision 2 misses line 1
    done1 = on_end(s, _end(1, revision=1), 3)
    assert done1 is not None and done1.revision == 1
    done2 = on_line(s, _line(1, revision=2), False, 4)
    assert done2 is not None and (done2.revision, done2.amount_net_minor, done2.matched_count) == (2, 150, 0)


def test_old_revisions_are_forgotten() -> None:
    s = InvoiceState()
    for rev in range(1, assembly.MAX_REVISIONS + 3):
        on_line(s, _line(0, revision=rev), True, rev)
    assert sorted(s.revisions) == list(range(3, assembly.MAX_REVISIONS + 3))


def test_empty_invoice_completes_at_its_marker() -> None:
    done = on_end(InvoiceState(), _end(0, net=0), 0)
    assert done is not None and (done.line_count, done.matched_count, done.amount_gross_minor) == (0, 0, 0)


def test_totals_come_from_the_lines_and_disagreeing_markers_are_flagged() -> None:
    s = InvoiceState()
    on_line(s, _line(0, 7902), True, 0)
    on_line(s, _line(1, 790, tax=True), False, 1)
    done = on_end(s, _end(2, net=7902, tax=790), 2)
    assert done is not None
    assert (done.amount_net_minor, done.amount_tax_minor, done.amount_gross_minor) == (7902, 790, 8692)
    assert done.reconciliation.status == "matched"
    s2 = InvoiceState()
    on_line(s2, _line(0, 100), True, 0)
    bad = on_end(s2, _end(1, net=150), 1)
    assert bad is not None and bad.reconciliation.status == "mismatch"
    assert (bad.reconciliation.expected_minor, bad.reconciliation.difference_minor) == (150, -50)


def test_lines_beyond_the_line_count_are_not_counted() -> None:
    s = InvoiceState()
    on_line(s, _line(0), True, 0)
    on_line(s, _line(5), True, 1)
    done = on_end(s, _end(1), 2)
    assert done is not None and (done.line_count, done.matched_count, done.amount_net_minor) == (1, 1, 100)


def test_state_round_trips_through_json() -> None:
    s = InvoiceState()
    on_line(s, _line(0, 5), True, 0)
    on_line(s, _line(1, 7, tax=True), False, 1)
    on_end(s, _end(2, net=5, tax=7), 2)
    assert _roundtrip(s) == s
    assert InvoiceState.from_dict(None) == InvoiceState() == InvoiceState.from_dict({})


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 12),
    matched=st.lists(st.booleans(), min_size=12, max_size=12),
    extra=st.lists(st.integers(0, 11), max_size=20),
    seed=st.randoms(use_true_random=False),
)
def test_any_delivery_order_with_duplicates_completes_exactly_once_with_the_right_counts(
    n: int, matched: list[bool], extra: list[int], seed
) -> None:
    """Deliveries: every line at least once, duplicates anywhere, the marker anywhere; JSON between records."""
    records: list[tuple[str, int]] = [("line", i) for i in range(n)] + [("line", i % n) for i in extra] + [("end", 0)]
    seed.shuffle(records)
    s = InvoiceState()
    completions = []
    for pos, (what, i) in enumerate(records):
        s = _roundtrip(s)
        done = on_line(s, _line(i), matched[i], pos) if what == "line" else on_end(s, _end(n), pos)
        if done is not None:
            completions.append(done)
    assert len(completions) == 1
    assert completions[0].line_count == n
    assert completions[0].matched_count == sum(matched[:n])
    assert completions[0].amount_net_minor == 100 * n
