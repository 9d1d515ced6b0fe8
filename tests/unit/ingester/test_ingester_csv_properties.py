"""Hypothesis properties of the invoice CSV parser.

Generated rows are written with Python's csv writer in DigitalOcean's shapes (`$` amounts, optional
thousands separators, negative credits, `YYYY-MM-DD HH:MM:SS +0000` dates, empty hours on tax rows, 8 or 9
columns, extra columns, any column order, BOM, CRLF, trailing blank lines) and must come back exactly.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.ingester.csv_parser import CsvParseError, is_tax_line, parse_invoice_csv

BASE9 = ["product", "group_description", "description", "hours", "start", "end", "USD", "project_name", "category"]

# Printable text including the CSV metacharacters (comma, quote, newline); stripped like the parser strips.
# (A lone "\r" is left out: Python's csv writer does not quote it with a "\n" line terminator.)
_raw_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="\ufeff") | st.sampled_from(',"\n'),
    max_size=30,
)
_text = _raw_text.map(str.strip)
_non_empty = _text.filter(bool)
_dates = st.datetimes(min_value=datetime(2014, 1, 1), max_value=datetime(2030, 12, 31)).map(
    lambda d: d.replace(microsecond=0, tzinfo=UTC)
)


@dataclass(frozen=True)
class Row:
    product: str
    group_description: str
    description: str
    hours: int | None
    start: datetime | None
    end: datetime | None
    amount_minor: int
    project_name: str
    category: str
    extra: str


_rows = st.builds(
    Row,
    product=_non_empty,
    group_description=_text,
    description=_text,
    hours=st.none() | st.integers(0, 100_000),
    start=st.none() | _dates,
    end=st.none() | _dates,
    amount_minor=st.integers(-(10**9), 10**11),
    project_name=_text,
    category=st.sampled_from(["", "iaas", "paas"]),
    extra=_raw_text,
)


def fmt_amount(minor: int, style: int) -> str:
    """DigitalOcean's `$12.34`, plus the other legal spellings (thousands, sign before or after `$`)."""
    sign = "-" if minor < 0 else ""
    whole, cents = divmod(abs(minor), 100)
    digits = f"{whole:,}" if style % 2 else str(whole)
    body = f"{digits}.{cents:02d}"
    return [f"{sign}${body}", f"${sign}{body}", f"{sign}{body}"][style % 3]


def fmt_date(d: datetime | None) -> str:
    return d.strftime("%Y-%m-%d %H:%M:%S +0000") if d else ""


def write_csv(
    rows: list[Row],
    *,
    order: list[int],
    nine: bool,
    extra_col: bool,
    style: int,
    bom: bool,
    crlf: bool,
    blank_tail: int,
) -> str:
    cols = BASE9[: 9 if nine else 8] + (["Resource Note"] if extra_col else [])
    perm = [i for i in order if i < len(cols)]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\r\n" if crlf else "\n")
    w.writerow([cols[i] for i in perm])
    for r in rows:
        values = {
            "product": r.product,
            "group_description": r.group_description,
            "description": r.description,
            "hours": "" if r.hours is None else (f"{r.hours:,}" if style % 2 else str(r.hours)),
            "start": fmt_date(r.start),
            "end": fmt_date(r.end),
            "USD": fmt_amount(r.amount_minor, style),
            "project_name": r.project_name,
            "category": r.category,
            "Resource Note": r.extra,
        }
        w.writerow([values[cols[i]] for i in perm])
    text = buf.getvalue() + ("\r\n" if crlf else "\n") * blank_tail
    return ("\ufeff" if bom else "") + text


@st.composite
def invoices(draw: st.DrawFn) -> tuple[list[Row], dict]:
    rows = draw(st.lists(_rows, max_size=12))
    opts = {
        "order": draw(st.permutations(list(range(10)))),
        "nine": draw(st.booleans()),
        "extra_col": draw(st.booleans()),
        "style": draw(st.integers(0, 5)),
        "bom": draw(st.booleans()),
        "crlf": draw(st.booleans()),
        "blank_tail": draw(st.integers(0, 3)),
    }
    return rows, opts


def _visible(r: Row) -> bool:
    """A row of only empty fields is a blank line to a CSV reader; the generator's rows never are."""
    return bool(r.product)


@settings(max_examples=150, deadline=None)
@given(invoices())
def test_generated_rows_round_trip(inv: tuple[list[Row], dict]) -> None:
    rows, opts = inv
    parsed = parse_invoice_csv(write_csv(rows, **opts))
    assert parsed.line_count == len(rows)
    for i, (r, ln) in enumerate(zip(rows, parsed.lines, strict=True)):
        assert _visible(r)
        assert ln.line_index == i
        assert ln.product == r.product
        assert ln.group_description == r.group_description
        assert ln.description == r.description
        assert ln.hours == r.hours
        assert ln.start == r.start
        assert ln.end == r.end
        assert ln.amount_minor == r.amount_minor
        assert ln.project_name == r.project_name
        assert ln.category == (r.category if opts["nine"] else "")
        assert ln.extra == ({"Resource Note": r.extra} if opts["extra_col"] else {})
        assert ln.is_tax == is_tax_line(r.product, r.description)
        assert ln.currency == "USD"


@settings(max_examples=100, deadline=None)
@given(invoices(), st.permutations(list(range(10))))
def test_column_permutations_give_the_same_lines(inv: tuple[list[Row], dict], other: list[int]) -> None:
    rows, opts = inv
    a = parse_invoice_csv(write_csv(rows, **opts))
    b = parse_invoice_csv(write_csv(rows, **(opts | {"order": other})))
    assert a.lines == b.lines
    assert a.totals == b.totals


@settings(max_examples=150, deadline=None)
@given(invoices())
def test_amounts_sum_exactly(inv: tuple[list[Row], dict]) -> None:
    rows, opts = inv
    t = parse_invoice_csv(write_csv(rows, **opts)).totals
    assert t.gross_minor == sum(r.amount_minor for r in rows)
    assert t.tax_minor == sum(r.amount_minor for r in rows if is_tax_line(r.product, r.description))
    assert t.net_minor + t.tax_minor == t.gross_minor


@settings(max_examples=100, deadline=None)
@given(st.lists(_rows, min_size=1, max_size=8), st.data())
def test_any_corrupted_amount_fails_naming_its_row(rows: list[Row], data: st.DataObject) -> None:
    bad = data.draw(st.integers(0, len(rows) - 1))
    junk = data.draw(st.sampled_from(["$1.2.3", "12,34", "abc", "1e3", "$", "--1", "$1.234"]))
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(BASE9)
    for i, r in enumerate(rows):
        amount = junk if i == bad else fmt_amount(r.amount_minor, 0)
        w.writerow(
            [r.product, "", r.description, "", "", "", amount, "", ""],
        )
    with pytest.raises(CsvParseError) as ei:
        parse_invoice_csv(buf.getvalue())
    assert (ei.value.row, ei.value.column, ei.value.value) == (bad + 1, "USD", junk)
