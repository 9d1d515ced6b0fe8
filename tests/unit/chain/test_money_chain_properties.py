"""Hypothesis over the whole money chain, from the CSV's bytes to the finance payload.

bytes → the ingester's parser and reconciliation (against DigitalOcean's billing-history, invoice-list and
summary amounts of the *whole* invoice) → cost-line and end-marker events on the wire → the matcher's
revision assembly and completion → the completion event on the wire → the finance pusher's gate and payload.

- For any invoice: net + tax = gross = the sum of the lines, and the pushed amounts are the CSV's, the tax
  split by the one rule.
- Any truncation of the body at any byte is rejected (unreadable), or held (does not reconcile), or pushes
  exactly the whole invoice's amounts (a cut that lost only zero-sum rows or the final line feed). When every
  row carries money (the usual invoice), a truncation that changes the content is never pushed.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from services.finance_pusher.domain import build_payload
from services.ingester.csv_parser import CsvParseError, ParsedInvoice, parse_invoice_csv
from services.ingester.domain import build_events, expected_of, reconciliation_of
from services.matcher.domain.assembly import LineFact, on_marker
from shared.events import InvoiceCompleted, InvoiceDiscovered, decode, encode
from shared.reconciliation import unproven_reason
from shared.tax import is_tax

UUID = "3f6a9c2e-8b41-4d7a-9e15-c2d04b7a6e01"
HEADER = ["product", "group_description", "description", "hours", "start", "end", "USD", "project_name", "category"]

# Real-shaped rows, the tax traps included (a tax inside a resource name; VAT/HST under another product).
_NET = [
    ("Droplets", "web-{n} (s-1vcpu-1gb)"),
    ("Droplets", "syntax-highlighter-{n} (s-1vcpu-1gb)"),
    ("Spaces Subscription", "taxonomy-data-{n}"),
    ("Volumes", "vol-{n} (syd1) 50GB"),
    ("Load Balancers", "lb-{n} (lb-small)"),
    ("Managed Databases", "db-{n} (db-s-1vcpu-1gb)"),
    ("Floating IPs", "Unused Floating IP - 10.0.0.{n}"),
    ("Credits", "Promotional credit {n}"),
]
_TAX = [("Taxes", "GST (10%)"), ("Taxes", "STATE SALES TAX (6.25%)"), ("Other", "VAT (20%)"), ("Other", "HST")]


@dataclass(frozen=True)
class Row:
    product: str
    description: str
    amount_minor: int
    project: str


def _row(n: int, tax: bool, amount: int, project: str) -> Row:
    product, desc = (_TAX if tax else _NET)[n % len(_TAX if tax else _NET)]
    return Row(product, desc.format(n=n), amount, project)


_projects = st.sampled_from(["", "Arcadia, Production", 'Quote "q"', "multi\nline"])


def rows(amounts: st.SearchStrategy[int]) -> st.SearchStrategy[list[Row]]:
    one = st.builds(_row, st.integers(0, 50), st.booleans(), amounts, _projects)
    return st.lists(one, max_size=8)


def render(rs: list[Row], *, crlf: bool, bom: bool) -> bytes:
    """DigitalOcean's CSV: 9 columns, `$` amounts, quoted fields where needed."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\r\n" if crlf else "\n")
    w.writerow(HEADER)
    for r in rs:
        sign, (whole, cents) = ("-" if r.amount_minor < 0 else ""), divmod(abs(r.amount_minor), 100)
        w.writerow(
            [
                r.product,
                "",
                r.description,
                "" if is_tax(r.product, r.description) else "720",
                "2026-04-01 00:00:00 +0000",
                "2026-04-30 23:59:59 +0000",
                f"{sign}${whole}.{cents:02d}",
                r.project,
                "iaas",
            ]
        )
    return (b"\xef\xbb\xbf" if bom else b"") + buf.getvalue().encode()


def full_totals(rs: list[Row]) -> tuple[int, int]:
    """(gross, tax) of the whole invoice: what DigitalOcean's history, list and summary say."""
    return sum(r.amount_minor for r in rs), sum(r.amount_minor for r in rs if is_tax(r.product, r.description))


def through_the_wire(event: Any) -> Any:
    return decode(encode(event, "default"))[1]


def chain(body: bytes, gross: int, tax: int) -> tuple[str, dict[str, Any] | None, ParsedInvoice | None]:
    """("rejected" | "held" | "pushed", the finance payload when pushed, the parse when it parsed)."""
    try:
        parsed = parse_invoice_csv(body)
    except CsvParseError:
        return "rejected", None, None
    discovered = InvoiceDiscovered(
        invoice_uuid=UUID,
        invoice_id="9217394",
        period="2026-04-01",
        amount_minor=gross,
        listed_amount_minor=gross,
        date=datetime(2026, 5, 1, tzinfo=UTC),
    )
    summary = {"amount": _money(gross), "taxes": {"amount": _money(tax)}}
    reconciliation = reconciliation_of(parsed, expected_of(discovered, None, summary, True), 0)
    lines, end = build_events(discovered, parsed, 1, reconciliation)
    facts: dict[tuple[int, int], LineFact] = {}
    for line in lines:
        wired = through_the_wire(line)
        facts[(wired.revision, wired.line_index)] = LineFact(False, wired.amount_minor, wired.is_tax)
    step = on_marker(
        through_the_wire(end), len(lines), completed=None, fact=lambda rev, i: facts.get((rev, i)), waiting={}
    )
    done = step.emit
    assert isinstance(done, InvoiceCompleted)
    completed = through_the_wire(done)
    if unproven_reason(completed.reconciliation, completed.amount_gross_minor, completed.amount_tax_minor):
        return "held", None, parsed
    return "pushed", build_payload(completed, tenant_id="platform-admin"), parsed


def _money(minor: int) -> str:
    sign, (whole, cents) = ("-" if minor < 0 else ""), divmod(abs(minor), 100)
    return f"{sign}{whole}.{cents:02d}"


@settings(max_examples=120, deadline=None)
@given(rows(st.integers(-(10**9), 10**11)), st.booleans(), st.booleans())
def test_a_whole_invoice_is_pushed_to_the_cent(rs: list[Row], crlf: bool, bom: bool) -> None:
    gross, tax = full_totals(rs)
    outcome, payload, parsed = chain(render(rs, crlf=crlf, bom=bom), gross, tax)
    assert outcome == "pushed" and payload is not None and parsed is not None
    assert payload["amount_net_minor"] + payload["amount_tax_minor"] == payload["amount_gross_minor"]
    assert payload["amount_gross_minor"] == sum(ln.amount_minor for ln in parsed.lines) == gross
    assert payload["amount_tax_minor"] == tax
    assert payload["lines_count"] == len(rs)


@settings(max_examples=40, deadline=None)
@given(rows(st.integers(-(10**6), 10**6)), st.booleans())
def test_any_truncation_is_rejected_held_or_exactly_the_whole_invoice(rs: list[Row], crlf: bool) -> None:
    body = render(rs, crlf=crlf, bom=False)
    gross, tax = full_totals(rs)
    for cut in range(len(body)):
        outcome, payload, parsed = chain(body[:cut], gross, tax)
        if outcome == "pushed":
            assert payload is not None and parsed is not None
            assert (payload["amount_gross_minor"], payload["amount_tax_minor"]) == (gross, tax), cut
            kept = len(parsed.lines)
            assert [ln.amount_minor for ln in parsed.lines] == [r.amount_minor for r in rs[:kept]], cut
            assert sum(r.amount_minor for r in rs[kept:]) == 0, cut  # only rows worth nothing were lost


@settings(max_examples=40, deadline=None)
@given(rows(st.integers(1, 10**6)).filter(bool), st.booleans())
def test_when_every_row_carries_money_a_truncation_is_never_pushed(rs: list[Row], crlf: bool) -> None:
    body = render(rs, crlf=crlf, bom=False)
    whole = parse_invoice_csv(body).lines
    gross, tax = full_totals(rs)
    for cut in range(len(body)):
        outcome, _, parsed = chain(body[:cut], gross, tax)
        if outcome == "pushed":  # only a cut of the final line feed (of a CRLF) keeps every byte that matters
            assert parsed is not None and parsed.lines == whole and body[cut:] == b"\n", cut


def test_a_header_only_body_is_held_never_a_zero_invoice() -> None:
    body = render([_row(1, False, 8692, "")], crlf=False, bom=False)
    outcome, _, parsed = chain(body.split(b"\n")[0] + b"\n", 8692, 0)
    assert outcome == "held" and parsed is not None and parsed.lines == ()
