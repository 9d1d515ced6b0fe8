"""Ledger decisions, reconciliation, event building, and what the matcher assembles from the events, as pure logic."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.ingester.csv_parser import PARSER_VERSION, parse_invoice_csv
from services.ingester.domain import (
    Checkpoint,
    Decision,
    Hold,
    LedgerEntry,
    RefetchPolicy,
    build_events,
    decide,
    evidence_sha256,
    expected_of,
    next_hold,
    reconciliation_of,
    refetch_delay,
    summary_amounts,
)
from shared.events import CostLine, InvoiceDiscovered, encode, event_id_for
from tests.assembly_reader import AssemblyReader
from tests.factories import invoice_discovered

T0 = datetime(2026, 5, 1, 8, 0, tzinfo=UTC)
CSV = (
    "product,group_description,description,hours,start,end,USD,project_name,category\n"
    "Droplets,,web-01 (s-1vcpu-1gb),720,2026-04-01 00:00:00 +0000,2026-05-01 00:00:00 +0000,$6.00,,iaas\n"
    "Volumes,,vol (syd1) 50GB,720,2026-04-01 00:00:00 +0000,2026-05-01 00:00:00 +0000,$5.00,,iaas\n"
    "Taxes,,GST (10%),,2026-04-01 00:00:00 +0000,2026-04-30 23:59:59 +0000,$1.10,,iaas\n"
)

# The discovery of the April invoice (1210 billed and listed); a test merges in what differs.
DISCOVERED = {
    "invoice_uuid": "inv-1",
    "description": "Invoice for April 2026",
    "amount_minor": 1210,
    "listed_amount_minor": 1210,
    "date": datetime(2026, 5, 1, 8, 44, tzinfo=UTC),
}


def entry(rev: int, state: str, sha: str = "a", pv: str = PARSER_VERSION) -> LedgerEntry:
    return LedgerEntry("inv", rev, sha, pv, state, T0)  # type: ignore[arg-type]


def events(d: InvoiceDiscovered, csv: str, revision: int, summary: dict | None = None):
    parsed = parse_invoice_csv(csv)
    rec = reconciliation_of(parsed, expected_of(d, None, summary, summary is not None), 0)
    return build_events(d, parsed, revision, rec)


# ------------------------------------------------------------------------------------------- decide
@pytest.mark.parametrize(
    ("latest", "sha", "pv", "expected"),
    [
        (None, "a", PARSER_VERSION, Decision("new", 1)),
        (entry(1, "committed"), "a", PARSER_VERSION, Decision("skip", 1)),
        (entry(1, "pending"), "a", PARSER_VERSION, Decision("reemit", 1)),
        (entry(1, "committed"), "b", PARSER_VERSION, Decision("new", 2)),
        (entry(1, "committed"), "a", "0", Decision("new", 2)),  # parser changed: re-ingest
        (entry(3, "pending"), "b", PARSER_VERSION, Decision("new", 4, supersede=3)),  # never reuse 3 for b
        (entry(3, "pending"), "a", "0", Decision("new", 4, supersede=3)),
        (entry(4, "committed", sha="b"), "a", PARSER_VERSION, Decision("new", 5)),  # A→B→A is a new revision
        (entry(2, "superseded"), "a", PARSER_VERSION, Decision("new", 3)),
    ],
)
def test_decide(latest: LedgerEntry | None, sha: str, pv: str, expected: Decision) -> None:
    assert decide(latest, sha, pv) == expected


@pytest.mark.parametrize(
    ("latest", "sha", "reemit", "expected"),
    [
        # The verifier proved revision 1 unreadable: the same content is emitted again as revision 1.
        (replace(entry(1, "committed"), verified=False), "a", 1, Decision("reemit", 1)),
        # Verified meanwhile (a stale request): skipped, never emitted twice on purpose.
        (entry(1, "committed"), "a", 1, Decision("skip", 1)),
        # A request for another revision than the latest: the latest is judged as usual.
        (replace(entry(2, "committed"), verified=False), "a", 1, Decision("skip", 2)),
        # Without a request an unverified revision is skipped like any committed one (the verifier decides).
        (replace(entry(1, "committed"), verified=False), "a", None, Decision("skip", 1)),
        # The CSV changed: a new revision, as for any discovery.
        (replace(entry(1, "committed"), verified=False), "b", 1, Decision("new", 2)),
        (entry(1, "pending"), "a", 1, Decision("reemit", 1)),
        (entry(3, "pending"), "b", 3, Decision("new", 4, supersede=3)),
    ],
)
def test_decide_on_the_verifiers_request(latest: LedgerEntry, sha: str, reemit: int | None, expected: Decision) -> None:
    assert decide(latest, sha, PARSER_VERSION, reemit_unverified=reemit) == expected


def test_a_checkpoint_is_reached_when_every_partition_was_read_to_its_end() -> None:
    cp = Checkpoint(T0, {0: 120, 1: 0, 2: 7})
    assert cp.reached({0: 120, 1: 0, 2: 7})
    assert cp.reached({0: 500, 2: 9})  # a partition empty at the checkpoint needs no reading
    assert not cp.reached({0: 119, 1: 0, 2: 7})
    assert not cp.reached({0: 120, 1: 3})  # partition 2 never read
    assert Checkpoint(T0, {}).reached({})


@given(
    ends=st.dictionaries(st.integers(0, 11), st.integers(0, 10_000), max_size=12),
    lag=st.dictionaries(st.integers(0, 11), st.integers(-50, 50), max_size=12),
)
def test_a_checkpoint_is_reached_exactly_when_no_partition_is_behind(ends: dict[int, int], lag: dict[int, int]) -> None:
    read_to = {p: max(0, e + lag.get(p, 0)) for p, e in ends.items()}
    behind = [p for p, e in ends.items() if read_to[p] < e]
    assert Checkpoint(T0, ends).reached(read_to) == (not behind)


def test_redelivery_sequence_never_binds_a_revision_to_two_contents() -> None:
    """Simulate the ledger through crashes: each revision number keeps exactly one content."""
    ledger: list[LedgerEntry] = []
    bound: dict[int, str] = {}

    def deliver(sha: str, *, commit: bool) -> Decision:
        d = decide(ledger[-1] if ledger else None, sha, PARSER_VERSION)
        if d.action == "new":
            ledger.append(entry(d.revision, "pending", sha))
        assert bound.setdefault(d.revision, sha) == sha
        if commit and d.action != "skip":
            ledger[-1] = entry(d.revision, "committed", sha)
        return d

    assert deliver("a", commit=False).action == "new"  # crash before the Kafka commit
    assert deliver("a", commit=False) == Decision("reemit", 1)  # crash again
    assert deliver("b", commit=False) == Decision("new", 2, supersede=1)  # content changed meanwhile
    assert deliver("b", commit=True) == Decision("reemit", 2)
    assert deliver("b", commit=True) == Decision("skip", 2)
    assert deliver("a", commit=True) == Decision("new", 3)


def test_same_csv_with_new_evidence_is_a_new_revision() -> None:
    """A held revision is released by a corrected DigitalOcean amount too, not only by a changed CSV."""
    held = LedgerEntry("inv", 1, "a", PARSER_VERSION, "committed", T0, "evidence-mismatch")
    assert decide(held, "a", PARSER_VERSION, "evidence-mismatch") == Decision("skip", 1)
    assert decide(held, "a", PARSER_VERSION, "evidence-matched") == Decision("new", 2)


# ---------------------------------------------------------------------------------------- reconcile
def test_reconciliation_against_history_list_and_summary() -> None:
    parsed = parse_invoice_csv(CSV)
    ok = reconciliation_of(parsed, expected_of(invoice_discovered(**DISCOVERED), None, None, False), 0)
    assert ok.status == "matched" and [c.source for c in ok.checks] == ["billing_history", "invoice_list"]
    short = reconciliation_of(
        parsed,
        expected_of(
            invoice_discovered(**(DISCOVERED | {"amount_minor": 1000, "listed_amount_minor": 1000})), None, None, False
        ),
        0,
    )
    assert (short.status, short.difference_minor, short.expected_minor, short.actual_minor) == (
        "mismatch",
        210,
        1000,
        1210,
    )
    assert "billing history says 1000" in short.reason
    # The listing's amount, when the discovery lacked it, comes from the ingester's own listing fetch.
    fetched = reconciliation_of(
        parsed, expected_of(invoice_discovered(**(DISCOVERED | {"listed_amount_minor": None})), 1210, None, False), 0
    )
    assert fetched.status == "matched"
    unknown = reconciliation_of(
        parsed, expected_of(invoice_discovered(**(DISCOVERED | {"listed_amount_minor": None})), None, None, False), 0
    )
    assert unknown.status == "unknown" and "not in DigitalOcean's invoice list" in unknown.reason
    summary = {"amount": "12.10", "taxes": {"name": "Taxes", "amount": "1.10"}}
    both = reconciliation_of(parsed, expected_of(invoice_discovered(**DISCOVERED), None, summary, True), 0)
    assert both.status == "matched" and [c.source for c in both.checks][2:] == ["summary_amount", "summary_taxes"]
    wrong_tax = {"amount": "12.10", "taxes": {"name": "Taxes", "amount": "0.00"}}
    r = reconciliation_of(parsed, expected_of(invoice_discovered(**DISCOVERED), None, wrong_tax, True), 0)
    assert r.status == "mismatch" and "summary taxes says 0, the lines give 110" in r.reason
    assert (
        reconciliation_of(
            parsed,
            expected_of(
                invoice_discovered(**(DISCOVERED | {"amount_minor": 1200, "listed_amount_minor": 1200})),
                None,
                None,
                False,
            ),
            10,
        ).status
        == "matched"
    )


def test_summary_money_is_read_exactly_or_is_an_error() -> None:
    assert summary_amounts({"amount": "86.92", "taxes": {"amount": "7.90"}}, "USD") == (8692, 790, "")
    assert summary_amounts({"amount": "86.92"}, "USD") == (8692, None, "")
    assert summary_amounts(None, "USD") == (None, None, "")
    amount, _, error = summary_amounts({"amount": "８６.92"}, "USD")
    assert amount is None and "non-ASCII digit" in error


def test_evidence_digest_follows_the_reconciliation() -> None:
    parsed = parse_invoice_csv(CSV)
    a = reconciliation_of(parsed, expected_of(invoice_discovered(**DISCOVERED), None, None, False), 0)
    b = reconciliation_of(
        parsed,
        expected_of(
            invoice_discovered(**(DISCOVERED | {"amount_minor": 1000, "listed_amount_minor": 1000})), None, None, False
        ),
        0,
    )
    assert evidence_sha256(a) == evidence_sha256(a.model_copy()) != evidence_sha256(b)


# ------------------------------------------------------------------------------------------ holds
POLICY = RefetchPolicy(initial_s=60, max_s=600, max_attempts=3)


def test_refetch_delay_doubles_up_to_the_cap() -> None:
    assert [refetch_delay(n, 60, 600) for n in range(1, 7)] == [60, 120, 240, 480, 600, 600]


def test_hold_lifecycle_backoff_then_waits_for_an_admin() -> None:
    from datetime import timedelta

    h = next_hold(None, "held", revision=1, reason="short", now=T0, policy=POLICY)
    assert h == Hold(1, T0, "short", 0, T0 + timedelta(seconds=60))
    assert next_hold(None, "unchanged", revision=1, reason="", now=T0, policy=POLICY) is None
    h = next_hold(h, "unchanged", revision=1, reason="", now=T0, policy=POLICY)
    assert (h.attempts, h.next_at, h.reason) == (1, T0 + timedelta(seconds=120), "short")
    h = next_hold(h, "rejected", revision=None, reason="cut mid-row", now=T0, policy=POLICY)
    assert (h.attempts, h.next_at) == (2, T0 + timedelta(seconds=240))
    h = next_hold(h, "held", revision=2, reason="still short", now=T0, policy=POLICY)
    assert (h.revision, h.since, h.reason, h.attempts, h.next_at) == (2, T0, "still short", 3, None)
    assert next_hold(h, "reconciled", revision=3, reason="", now=T0, policy=POLICY) is None
    never = RefetchPolicy(max_attempts=0)
    assert next_hold(None, "held", revision=1, reason="x", now=T0, policy=never).next_at is None


# ------------------------------------------------------------------------------------- build_events
def test_build_events_one_line_per_row_then_the_marker() -> None:
    parsed = parse_invoice_csv(CSV)
    lines, end = events(invoice_discovered(**DISCOVERED), CSV, 2)
    assert [ln.line_index for ln in lines] == [0, 1, 2]
    assert all(ln.revision == 2 and ln.invoice_uuid == "inv-1" for ln in lines)
    assert [ln.is_tax for ln in lines] == [False, False, True]
    assert lines[0].amount_minor == 600 and lines[0].hours == 720 and lines[0].category == "iaas"
    assert lines[0].start == datetime(2026, 4, 1, tzinfo=UTC)
    assert (end.line_count, end.amount_net_minor, end.amount_tax_minor, end.amount_gross_minor) == (3, 1100, 110, 1210)
    assert end.csv_sha256 == parsed.csv_sha256
    assert end.parser_version == PARSER_VERSION
    assert end.invoice_date == date(2026, 5, 1)
    assert end.period == "2026-04-01"
    assert end.invoice_id == "123"
    assert end.reconciliation.status == "matched"


def test_mismatch_is_recorded_and_the_revision_still_emitted() -> None:
    lines, end = events(
        invoice_discovered(**(DISCOVERED | {"amount_minor": 1000, "listed_amount_minor": 1000})), CSV, 1
    )
    assert len(lines) == 3
    assert end.reconciliation.status == "mismatch"
    assert end.reconciliation.difference_minor == 210


def test_event_ids_are_deterministic_per_revision_and_line() -> None:
    a, end_a = events(invoice_discovered(**DISCOVERED), CSV, 1)
    b, end_b = events(invoice_discovered(**DISCOVERED), CSV, 1)
    c, end_c = events(invoice_discovered(**DISCOVERED), CSV, 2)
    assert [event_id_for(x, "acct") for x in a] == [event_id_for(x, "acct") for x in b]
    assert event_id_for(end_a, "acct") == event_id_for(end_b, "acct") != event_id_for(end_c, "acct")
    assert {event_id_for(x, "acct") for x in a}.isdisjoint({event_id_for(x, "acct") for x in c})
    # Same occurred_at (the reservation time) → byte-identical re-emission.
    assert encode(a[0], "acct", T0) == encode(b[0], "acct", T0)


# ------------------------------------------------------------------------------- assembly (the matcher's rule)
def _records(revision: int, csv: str = CSV) -> list[bytes]:
    lines, end = events(invoice_discovered(**DISCOVERED), csv, revision)
    return [encode(x, "acct", T0) for x in [*lines, end]]


def _fold(asm: AssemblyReader, raw: list[bytes]) -> None:
    for r in raw:
        asm.add(r)


def test_reader_does_not_act_while_a_line_is_missing() -> None:
    recs = _records(1)
    asm = AssemblyReader()
    _fold(asm, recs[:2] + recs[3:])  # line 2 missing
    assert asm.acted == [] and asm.current == {}


def test_reader_acts_only_when_marker_and_all_lines_are_in() -> None:
    """The matcher completes a revision at its end marker only. A line read after its marker (never the ingester's
    order: lines and marker are one transaction) leaves the revision waiting, visibly, until the marker is read
    again, as the re-send of the whole transaction does."""
    recs = _records(1)
    asm = AssemblyReader()
    _fold(asm, recs[:2] + recs[3:])  # line 2 missing
    assert asm.acted == [] and asm.current == {}
    _fold(asm, [recs[2]])
    assert asm.acted == []
    _fold(asm, recs)  # the re-send: every line and the marker again
    assert asm.acted == [("inv-1", 1)]
    assert [ln.line_index for ln in asm.current["inv-1"].lines] == [0, 1, 2]


def test_reader_dedupes_aborted_copies_and_resends() -> None:
    recs = _records(1)
    asm = AssemblyReader()
    _fold(asm, recs[:2])  # an aborted, partial transaction the embedded broker shows
    _fold(asm, recs)  # the committed re-send
    _fold(asm, recs)  # and a duplicate delivery
    assert asm.acted == [("inv-1", 1)]
    assert len(asm.current["inv-1"].lines) == 3
    assert asm.conflicts == []


def test_reader_newer_revision_replaces_and_late_older_is_ignored() -> None:
    csv2 = CSV.replace("$6.00", "$7.00")
    asm = AssemblyReader()
    r1 = _records(1)
    _fold(asm, r1[:1])  # revision 1 incomplete (abandoned after a crash)
    _fold(asm, _records(2, csv2))
    assert asm.current["inv-1"].revision == 2
    assert asm.current["inv-1"].lines[0].amount_minor == 700
    _fold(asm, r1[1:])  # revision 1 completes late: acted on, but does not replace revision 2
    assert asm.current["inv-1"].revision == 2


def test_reader_flags_two_contents_for_one_revision() -> None:
    asm = AssemblyReader()
    _fold(asm, _records(1))
    _fold(asm, _records(1, CSV.replace("$6.00", "$9.00")))
    assert asm.conflicts


def test_reader_flags_a_line_beyond_line_count() -> None:
    lines, end = events(invoice_discovered(**DISCOVERED), CSV, 1)
    extra = CostLine(**(lines[0].model_dump() | {"line_index": 7}))
    asm = AssemblyReader()
    _fold(asm, [encode(x, "acct", T0) for x in [*lines, extra, end]])
    assert asm.conflicts and asm.acted == []
