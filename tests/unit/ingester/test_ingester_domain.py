"""Ledger decisions, reconciliation, event building and the downstream assembly rule, as pure logic."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from services.ingester.assembly import Assembler
from services.ingester.csv_parser import PARSER_VERSION, parse_invoice_csv
from services.ingester.domain import Decision, LedgerEntry, build_events, decide, reconcile
from shared.events import CostLine, InvoiceDiscovered, decode, encode, event_id_for

T0 = datetime(2026, 5, 1, 8, 0, tzinfo=UTC)
CSV = (
    "product,group_description,description,hours,start,end,USD,project_name,category\n"
    "Droplets,,web-01 (s-1vcpu-1gb),720,2026-04-01 00:00:00 +0000,2026-05-01 00:00:00 +0000,$6.00,,iaas\n"
    "Volumes,,vol (syd1) 50GB,720,2026-04-01 00:00:00 +0000,2026-05-01 00:00:00 +0000,$5.00,,iaas\n"
    "Taxes,,GST (10%),,2026-04-01 00:00:00 +0000,2026-04-30 23:59:59 +0000,$1.10,,iaas\n"
)


def entry(rev: int, state: str, sha: str = "a", pv: str = PARSER_VERSION) -> LedgerEntry:
    return LedgerEntry("inv", rev, sha, pv, state, T0)  # type: ignore[arg-type]


def discovered(amount_minor: int = 1210, currency: str = "USD") -> InvoiceDiscovered:
    return InvoiceDiscovered(
        invoice_uuid="inv-1",
        invoice_id="123",
        period="2026-04-01",
        description="Invoice for April 2026",
        amount_minor=amount_minor,
        currency=currency,
        date=datetime(2026, 5, 1, 8, 44, tzinfo=UTC),
    )


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


# ---------------------------------------------------------------------------------------- reconcile
def test_reconcile_matched_mismatch_unknown() -> None:
    assert reconcile(8692, "USD", 8692, "USD").model_dump() == {
        "status": "matched",
        "expected_minor": 8692,
        "difference_minor": 0,
    }
    r = reconcile(8692, "USD", 8600, "USD")
    assert (r.status, r.difference_minor) == ("mismatch", 92)
    assert reconcile(100, "USD", 150, "usd").difference_minor == -50
    assert reconcile(100, "EUR", 100, "USD").status == "unknown"
    assert reconcile(100, "USD", None, "USD").status == "unknown"


# ------------------------------------------------------------------------------------- build_events
def test_build_events_one_line_per_row_then_the_marker() -> None:
    parsed = parse_invoice_csv(CSV)
    lines, end = build_events(discovered(), parsed, revision=2)
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


def test_mismatch_is_recorded_not_blocking() -> None:
    _lines, end = build_events(discovered(amount_minor=1000), parse_invoice_csv(CSV), 1)
    assert end.reconciliation.status == "mismatch"
    assert end.reconciliation.difference_minor == 210


def test_event_ids_are_deterministic_per_revision_and_line() -> None:
    parsed = parse_invoice_csv(CSV)
    a, end_a = build_events(discovered(), parsed, 1)
    b, end_b = build_events(discovered(), parsed, 1)
    c, end_c = build_events(discovered(), parsed, 2)
    assert [event_id_for(x, "acct") for x in a] == [event_id_for(x, "acct") for x in b]
    assert event_id_for(end_a, "acct") == event_id_for(end_b, "acct") != event_id_for(end_c, "acct")
    assert {event_id_for(x, "acct") for x in a}.isdisjoint({event_id_for(x, "acct") for x in c})
    # Same occurred_at (the reservation time) → byte-identical re-emission.
    assert encode(a[0], "acct", T0) == encode(b[0], "acct", T0)


# ------------------------------------------------------------------------------------------ assembly
def _records(revision: int, csv: str = CSV) -> list[bytes]:
    lines, end = build_events(discovered(), parse_invoice_csv(csv), revision)
    return [encode(x, "acct", T0) for x in [*lines, end]]


def _fold(asm: Assembler, raw: list[bytes]) -> None:
    for r in raw:
        asm.add(*decode(r))


def test_assembler_acts_only_when_marker_and_all_lines_are_in() -> None:
    recs = _records(1)
    asm = Assembler()
    _fold(asm, recs[:2] + recs[3:])  # line 2 missing
    assert asm.acted == [] and asm.current == {}
    _fold(asm, [recs[2]])
    assert asm.acted == [("inv-1", 1)]
    assert [ln.line_index for ln in asm.current["inv-1"].lines] == [0, 1, 2]


def test_assembler_dedupes_aborted_copies_and_resends() -> None:
    recs = _records(1)
    asm = Assembler()
    _fold(asm, recs[:2])  # an aborted, partial transaction the embedded broker shows
    _fold(asm, recs)  # the committed re-send
    _fold(asm, recs)  # and a duplicate delivery
    assert asm.acted == [("inv-1", 1)]
    assert len(asm.current["inv-1"].lines) == 3
    assert asm.conflicts == []


def test_assembler_newer_revision_replaces_and_late_older_is_ignored() -> None:
    csv2 = CSV.replace("$6.00", "$7.00")
    asm = Assembler()
    r1 = _records(1)
    _fold(asm, r1[:1])  # revision 1 incomplete (abandoned after a crash)
    _fold(asm, _records(2, csv2))
    assert asm.current["inv-1"].revision == 2
    assert asm.current["inv-1"].lines[0].amount_minor == 700
    _fold(asm, r1[1:])  # revision 1 completes late: acted on, but does not replace revision 2
    assert asm.current["inv-1"].revision == 2


def test_assembler_flags_two_contents_for_one_revision() -> None:
    asm = Assembler()
    _fold(asm, _records(1))
    _fold(asm, _records(1, CSV.replace("$6.00", "$9.00")))
    assert asm.conflicts


def test_assembler_flags_a_line_beyond_line_count() -> None:
    lines, end = build_events(discovered(), parse_invoice_csv(CSV), 1)
    extra = CostLine(**(lines[0].model_dump() | {"line_index": 7}))
    asm = Assembler()
    _fold(asm, [encode(x, "acct", T0) for x in [*lines, extra, end]])
    assert asm.conflicts and asm.acted == []
