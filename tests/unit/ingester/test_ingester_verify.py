"""The commit verifier's record reading: end markers are told from lines (and from anything else) cheaply."""

from __future__ import annotations

from datetime import UTC, datetime

from services.ingester.csv_parser import parse_invoice_csv
from services.ingester.domain import build_events, expected_of, reconciliation_of
from services.ingester.verify import end_marker
from shared.events import encode
from tests.factories import invoice_discovered

CSV = "product,description,hours,start,end,USD\nDroplets,a (s),1,,,$1.00\nTaxes,GST (10%),,,,$0.10\n"
T0 = datetime(2026, 5, 1, tzinfo=UTC)


def test_an_end_marker_is_read_and_lines_are_not() -> None:
    d = invoice_discovered(invoice_uuid="inv-1")
    parsed = parse_invoice_csv(CSV)
    lines, end = build_events(d, parsed, 3, reconciliation_of(parsed, expected_of(d, None, None, False), 0))
    assert end_marker(encode(end, "acct", T0)) == ("inv-1", 3)
    assert [end_marker(encode(line, "acct", T0)) for line in lines] == [None, None]


def test_a_line_that_mentions_the_marker_type_is_still_a_line() -> None:
    d = invoice_discovered(invoice_uuid="inv-2")
    text = CSV.replace("a (s)", "billing.invoice-end")
    parsed = parse_invoice_csv(text)
    lines, _ = build_events(d, parsed, 1, reconciliation_of(parsed, expected_of(d, None, None, False), 0))
    assert b"billing.invoice-end" in encode(lines[0], "acct", T0)
    assert end_marker(encode(lines[0], "acct", T0)) is None


def test_unreadable_records_are_not_markers() -> None:
    assert end_marker(None) is None
    assert end_marker(b"") is None
    assert end_marker(b'{"type": "billing.invoice-end", "truncated') is None
    assert end_marker(b"\xff\xfe billing.invoice-end") is None
