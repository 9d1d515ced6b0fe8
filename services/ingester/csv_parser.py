"""DigitalOcean invoice CSV → parsed lines and totals. Pure: text in, values out, no I/O.

Why it is this strict and this lenient at once:
- Columns are found **by header name**, never by position: DigitalOcean ships an 8-column variant (older
  invoices, no `category`) and a 9-column one, and the column order has shifted before. Header names are
  normalized (case, surrounding spaces, spaces/hyphens vs underscores: `Group Description` ==
  `group_description`), which covers the original system's first gotcha (underscored headers).
- The amount column is named after the currency (`USD`); its values carry a `$` prefix, may be negative
  (credits) or thousands-separated. They go through `shared.money` into integer minor units: never a float.
- Dates are `YYYY-MM-DD HH:MM:SS +0000` (space separator, RFC 822 offset); a period end appears both as
  `...-31 23:59:59 +0000` and as the next month's `...-01 00:00:00 +0000`; both are kept as written (UTC).
  ISO-8601 with an offset is accepted too. A date without an offset is rejected rather than guessed.
- `hours` is an integer and empty on tax rows (→ None).
- Quoted fields with commas or newlines, a UTF-8 BOM, CRLF line ends and blank lines are all tolerated.
- Unknown columns are kept verbatim in `extra` (a new DigitalOcean column is data, not an error).
- Anything unreadable (a missing required column, a bad amount, date or hours, a row with the wrong number of
  fields) raises ONE `CsvParseError` naming the row, column and value: the whole invoice fails, since
  emitting part of an invoice would be worse than emitting none.

`PARSER_VERSION` is recorded with every ingested revision: bump it whenever a change to this module can
change the parsed lines, so the ledger re-ingests invoices parsed by an older version as a new revision.
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime

from shared.money import MINOR_DIGITS, MoneyError, parse_minor

PARSER_VERSION = "1"

# Known columns (normalized names). The amount column is recognised by its currency-code name.
REQUIRED_COLUMNS: tuple[str, ...] = ("product", "description", "hours", "start", "end")
OPTIONAL_COLUMNS: tuple[str, ...] = ("group_description", "project_name", "category")
AMOUNT_COLUMN = "amount"  # the logical name used in errors when no currency column exists
CURRENCY_COLUMNS = frozenset(c.lower() for c in MINOR_DIGITS)

_MAX_VALUE_IN_ERROR = 200
_HOURS_RE = re.compile(r"^(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.0+)?$")
_SEP_RE = re.compile(r"[\s\-_]+")


class CsvParseError(ValueError):
    """The invoice CSV cannot be read without guessing. Names the row, column and value at fault.

    `row` is the 1-based data row (the header row is row 0), `line` the 1-based physical line of the file.
    """

    def __init__(
        self,
        reason: str,
        *,
        row: int | None = None,
        line: int | None = None,
        column: str | None = None,
        value: str | None = None,
    ) -> None:
        self.reason = reason
        self.row = row
        self.line = line
        self.column = column
        self.value = None if value is None else value[:_MAX_VALUE_IN_ERROR]
        where = []
        if row is not None:
            where.append("header" if row == 0 else f"row {row}")
        if line is not None:
            where.append(f"line {line}")
        if column is not None:
            where.append(f"column {column!r}")
        if value is not None:
            where.append(f"value {self.value!r}")
        super().__init__(f"invoice CSV {', '.join(where)}: {reason}" if where else f"invoice CSV: {reason}")


@dataclass(frozen=True)
class ParsedLine:
    """One CSV row, every field parsed. `line_index` is 0-based over data rows (blank lines skipped)."""

    line_index: int
    product: str
    group_description: str
    description: str
    hours: int | None
    start: datetime | None
    end: datetime | None
    amount_minor: int
    currency: str
    project_name: str
    category: str
    is_tax: bool
    extra: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Totals:
    net_minor: int
    tax_minor: int
    gross_minor: int


@dataclass(frozen=True)
class ParsedInvoice:
    lines: tuple[ParsedLine, ...]
    currency: str
    totals: Totals
    csv_sha256: str
    parser_version: str = PARSER_VERSION

    @property
    def line_count(self) -> int:
        return len(self.lines)


# ------------------------------------------------------------------------------------------ small rules
def normalize_header(name: str) -> str:
    """`Group Description`, ` group-description `, `GROUP_DESCRIPTION` → `group_description`."""
    return _SEP_RE.sub("_", name.replace("\ufeff", "").strip().lower()).strip("_")


def is_tax_line(description: str) -> bool:
    """The brief's rule: a line whose description contains "gst" or "tax", any case, is tax."""
    d = description.lower()
    return "gst" in d or "tax" in d


def totals_of(lines: tuple[ParsedLine, ...] | list[ParsedLine]) -> Totals:
    """Tax lines into tax, every other line into net; gross is the sum of all lines (= net + tax)."""
    tax = sum(ln.amount_minor for ln in lines if ln.is_tax)
    net = sum(ln.amount_minor for ln in lines if not ln.is_tax)
    return Totals(net_minor=net, tax_minor=tax, gross_minor=net + tax)


def csv_sha256(text: str | bytes) -> str:
    """Content hash of the CSV exactly as received (the ledger's 'same content' test)."""
    raw = text.encode("utf-8") if isinstance(text, str) else text
    return hashlib.sha256(raw).hexdigest()


def parse_datetime(text: str) -> datetime:
    """`2020-07-01 00:00:00 +0000` (DigitalOcean's CSV) or ISO-8601 with an offset, as an aware UTC datetime."""
    s = text.strip()
    try:
        return datetime.strptime(s, "%Y-%m-%d %H:%M:%S %z").astimezone(UTC)
    except ValueError:
        pass
    try:
        dt = datetime.fromisoformat(s)
    except ValueError:
        raise ValueError("not a date in the form YYYY-MM-DD HH:MM:SS +0000") from None
    if dt.tzinfo is None:
        raise ValueError("date has no UTC offset (expected YYYY-MM-DD HH:MM:SS +0000)")
    return dt.astimezone(UTC)


def parse_hours(text: str) -> int | None:
    """Whole hours; empty (tax rows) → None."""
    s = text.strip()
    if not s:
        return None
    if not _HOURS_RE.match(s):
        raise ValueError("hours must be a whole, non-negative number")
    return int(s.split(".", 1)[0].replace(",", ""))


# ---------------------------------------------------------------------------------------------- parser
@dataclass(frozen=True)
class _Layout:
    """Where each known column is, and which columns are kept as `extra`."""

    width: int
    index: dict[str, int]  # normalized known name → position
    amount_index: int
    amount_header: str
    currency: str
    extras: tuple[tuple[int, str], ...]  # (position, header as written)


def _layout(header: list[str], line: int) -> _Layout:
    index: dict[str, int] = {}
    seen: dict[str, str] = {}
    extras: list[tuple[int, str]] = []
    amount: tuple[int, str] | None = None
    known = set(REQUIRED_COLUMNS) | set(OPTIONAL_COLUMNS)
    for pos, raw in enumerate(header):
        written = raw.replace("\ufeff", "").strip()
        norm = normalize_header(written)
        if norm and norm in seen:
            raise CsvParseError(f"duplicate column (also {seen[norm]!r})", row=0, line=line, column=written)
        if norm:
            seen[norm] = written
        if norm in known:
            index[norm] = pos
        elif norm in CURRENCY_COLUMNS:
            if amount is not None:
                raise CsvParseError(
                    f"two amount (currency) columns: {amount[1]!r} and {written!r}", row=0, line=line, column=written
                )
            amount = (pos, written)
        else:
            extras.append((pos, written or f"column_{pos + 1}"))
    missing = [c for c in REQUIRED_COLUMNS if c not in index]
    if amount is None:
        missing.append(f"{AMOUNT_COLUMN} (a currency-named column such as USD)")
    if missing:
        raise CsvParseError(
            f"missing required column(s) {', '.join(missing)}; header is {[h.strip() for h in header]}",
            row=0,
            line=line,
            column=missing[0].split(" ", 1)[0],
        )
    assert amount is not None
    return _Layout(
        width=len(header),
        index=index,
        amount_index=amount[0],
        amount_header=amount[1],
        currency=amount[1].upper(),
        extras=tuple(extras),
    )


def parse_invoice_csv(text: str | bytes) -> ParsedInvoice:
    """Parse a whole invoice CSV. Raises CsvParseError (row, column, value) on anything unreadable."""
    digest = csv_sha256(text)
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8-sig")
        except UnicodeDecodeError as e:
            raise CsvParseError(f"not UTF-8 text ({e.reason} at byte {e.start})") from None
    text = text.removeprefix("\ufeff")
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    layout: _Layout | None = None
    lines: list[ParsedLine] = []
    row_no = 0
    try:
        for fields in reader:
            if not any(f.strip() for f in fields):
                continue  # blank lines (trailing ones included)
            if layout is None:
                layout = _layout(fields, reader.line_num)
                continue
            row_no += 1
            lines.append(_parse_row(fields, layout, len(lines), row_no, reader.line_num))
    except csv.Error as e:
        raise CsvParseError(f"malformed CSV: {e}", row=row_no + 1 if layout else 0, line=reader.line_num) from None
    if layout is None:
        raise CsvParseError("empty CSV: no header row")
    frozen = tuple(lines)
    return ParsedInvoice(lines=frozen, currency=layout.currency, totals=totals_of(frozen), csv_sha256=digest)


def _parse_row(fields: list[str], lay: _Layout, line_index: int, row: int, line: int) -> ParsedLine:
    if len(fields) != lay.width:
        if len(fields) < lay.width:
            missing = [n for n, p in lay.index.items() if p >= len(fields)]
            col = missing[0] if missing else (lay.amount_header if lay.amount_index >= len(fields) else None)
            raise CsvParseError(
                f"row has {len(fields)} field(s), the header has {lay.width}", row=row, line=line, column=col, value=""
            )
        raise CsvParseError(
            f"row has {len(fields)} field(s), the header has {lay.width}",
            row=row,
            line=line,
            column=f"(field {lay.width + 1}, beyond the header)",
            value=fields[lay.width],
        )

    def get(name: str) -> str:
        pos = lay.index.get(name)
        return fields[pos].strip() if pos is not None else ""

    def fail(column: str, value: str, reason: str) -> CsvParseError:
        return CsvParseError(reason, row=row, line=line, column=column, value=value)

    raw_amount = fields[lay.amount_index]
    if not raw_amount.strip():
        raise fail(lay.amount_header, raw_amount, "empty amount")
    try:
        amount = parse_minor(raw_amount, lay.currency)
    except MoneyError as e:
        raise fail(lay.amount_header, raw_amount, str(e)) from None

    def when(name: str) -> datetime | None:
        s = get(name)
        if not s:
            return None
        try:
            return parse_datetime(s)
        except ValueError as e:
            raise fail(name, s, str(e)) from None

    try:
        hours = parse_hours(get("hours"))
    except ValueError as e:
        raise fail("hours", get("hours"), str(e)) from None

    product = get("product")
    if not product:
        raise fail("product", fields[lay.index["product"]], "empty product")
    description = get("description")
    return ParsedLine(
        line_index=line_index,
        product=product,
        group_description=get("group_description"),
        description=description,
        hours=hours,
        start=when("start"),
        end=when("end"),
        amount_minor=amount,
        currency=lay.currency,
        project_name=get("project_name"),
        category=get("category"),
        is_tax=is_tax_line(description),
        extra={name: fields[pos] for pos, name in lay.extras},
    )
