"""DigitalOcean invoice CSV → parsed lines and totals. Pure: bytes in, values out, no I/O.

Why it is this strict and this lenient at once:
- **Bytes first.** The body is read as received: its sha256 (the ledger's "same content") is over the raw
  bytes, and it is decoded here as strict UTF-8 (a UTF-8 BOM allowed), never by the HTTP library with
  replacement characters. A byte sequence that is not UTF-8, a NUL or any other control character (only CR
  and LF, the line structure, are allowed) rejects the whole invoice with a reason naming the byte offset,
  its value and the line: PostgreSQL cannot store a NUL and a silently replaced character is a changed name.
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
- Tax or net: the one rule of `shared/tax.py` (product `Taxes`, or a tax named as a word), with the configured
  names; `parser_version` carries a fingerprint of non-default names, so changing them re-ingests.
- Whether the body ends with a line break is reported (`ends_with_line_break`), not judged here: a body cut
  at a byte mostly stops mid-row, and the reconciliation holds such an invoice (shared/reconciliation.py).
- Unknown columns are kept verbatim in `extra` (a new DigitalOcean column is data, not an error).
- Anything unreadable (a missing required column, a bad amount, date or hours, a row with the wrong number of
  fields) raises ONE `CsvParseError` naming the row, column and value: the whole invoice fails, since
  emitting part of an invoice would be worse than emitting none.

`PARSER_VERSION` is recorded with every ingested revision: bump it whenever a change to this module can
change the parsed lines, so the ledger re-ingests invoices parsed by an older version as a new revision.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import io
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime

from shared.money import MINOR_DIGITS, MoneyError, parse_minor
from shared.tax import DEFAULT_RULE, TaxRule

# 2: strict UTF-8 bytes, control characters refused, the shared tax rule (product `Taxes`, tax names as words).
PARSER_VERSION = "2"
UTF8_BOM = b"\xef\xbb\xbf"
# C0 and C1 control characters and DEL, except CR and LF (line ends, also inside quoted fields).
_CONTROL_RE = re.compile("[\x00-\x09\x0b\x0c\x0e-\x1f\x7f-\x9f]")

# Known columns (normalized names). The amount column is recognised by its currency-code name.
REQUIRED_COLUMNS: tuple[str, ...] = ("product", "description", "hours", "start", "end")
OPTIONAL_COLUMNS: tuple[str, ...] = ("group_description", "project_name", "category")
AMOUNT_COLUMN = "amount"  # the logical name used in errors when no currency column exists
CURRENCY_COLUMNS = frozenset(c.lower() for c in MINOR_DIGITS)

_MAX_VALUE_IN_ERROR = 200
_HOURS_RE = re.compile(r"^(?:[0-9]{1,3}(?:,[0-9]{3})+|[0-9]+)(?:\.0+)?$")
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
        byte: int | None = None,
    ) -> None:
        self.reason = reason
        self.row = row
        self.line = line
        self.column = column
        self.byte = byte
        self.value = None if value is None else value[:_MAX_VALUE_IN_ERROR]
        where = []
        if row is not None:
            where.append("header" if row == 0 else f"row {row}")
        if line is not None:
            where.append(f"line {line}")
        if byte is not None:
            where.append(f"byte offset {byte}")
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
    ends_with_line_break: bool = True

    @property
    def line_count(self) -> int:
        return len(self.lines)


# ------------------------------------------------------------------------------------------ small rules
def normalize_header(name: str) -> str:
    """`Group Description`, ` group-description `, `GROUP_DESCRIPTION` → `group_description`."""
    return _SEP_RE.sub("_", name.replace("\ufeff", "").strip().lower()).strip("_")


def is_tax_line(product: str, description: str, rule: TaxRule = DEFAULT_RULE) -> bool:
    """The one tax rule (shared/tax.py): product `Taxes`, or a tax named as a word in the description."""
    return rule.is_tax(product, description)


def parser_version(rule: TaxRule = DEFAULT_RULE) -> str:
    """PARSER_VERSION, plus the tax names' fingerprint when they are not the contract's defaults."""
    return PARSER_VERSION if rule.is_default else f"{PARSER_VERSION}+tax.{rule.fingerprint}"


def totals_of(lines: tuple[ParsedLine, ...] | list[ParsedLine]) -> Totals:
    """Tax lines into tax, every other line into net; gross is the sum of all lines (= net + tax)."""
    tax = sum(ln.amount_minor for ln in lines if ln.is_tax)
    net = sum(ln.amount_minor for ln in lines if not ln.is_tax)
    return Totals(net_minor=net, tax_minor=tax, gross_minor=net + tax)


def csv_sha256(body: str | bytes) -> str:
    """Content hash of the CSV's raw bytes as received (the ledger's 'same content' test)."""
    raw = body.encode("utf-8") if isinstance(body, str) else body
    return hashlib.sha256(raw).hexdigest()


def _line_of(raw: bytes, offset: int) -> int:
    """1-based physical line of a byte offset (LF-separated; a CR alone does not start a line here)."""
    return raw.count(b"\n", 0, offset) + 1


def decode_csv_bytes(raw: bytes) -> str:
    """Strict UTF-8 (BOM allowed, dropped) without control characters, or a CsvParseError naming the byte."""
    bom = len(UTF8_BOM) if raw.startswith(UTF8_BOM) else 0
    try:
        text = raw[bom:].decode("utf-8")
    except UnicodeDecodeError as e:
        at = bom + e.start
        bad = raw[at : bom + e.end]
        raise CsvParseError(
            f"not UTF-8: byte 0x{raw[at]:02X} ({e.reason}; bytes {bad.hex(' ').upper()})",
            line=_line_of(raw, at),
            byte=at,
        ) from None
    m = _CONTROL_RE.search(text)
    if m is not None:
        ch = m.group()
        at = bom + len(text[: m.start()].encode("utf-8"))
        name = "NUL" if ch == "\x00" else f"control character U+{ord(ch):04X}"
        raise CsvParseError(
            f"{name} (byte 0x{raw[at]:02X}) in a field: control characters are refused",
            line=_line_of(raw, at),
            byte=at,
        )
    return text


@functools.lru_cache(maxsize=4096)
def parse_datetime(text: str) -> datetime:
    """`2020-07-01 00:00:00 +0000` (DigitalOcean's CSV) or ISO-8601 with an offset, as an aware UTC datetime.

    Cached: an invoice's rows repeat a handful of start/end times, and strptime was half the parser's time."""
    s = text.strip()
    if not s.isascii():
        raise ValueError("a date has only ASCII characters (YYYY-MM-DD HH:MM:SS +0000)")
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


def parse_invoice_csv(body: bytes | str, *, tax_rule: TaxRule = DEFAULT_RULE) -> ParsedInvoice:
    """Parse a whole invoice CSV (its raw bytes; text is taken as its UTF-8 encoding).

    Raises CsvParseError (row, line, column, value or byte) on anything unreadable.
    """
    raw = body.encode("utf-8") if isinstance(body, str) else bytes(body)
    digest = csv_sha256(raw)
    text = decode_csv_bytes(raw)
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
            lines.append(_parse_row(fields, layout, len(lines), row_no, reader.line_num, tax_rule))
    except csv.Error as e:
        raise CsvParseError(f"malformed CSV: {e}", row=row_no + 1 if layout else 0, line=reader.line_num) from None
    if layout is None:
        raise CsvParseError("empty CSV: no header row")
    frozen = tuple(lines)
    return ParsedInvoice(
        lines=frozen,
        currency=layout.currency,
        totals=totals_of(frozen),
        csv_sha256=digest,
        parser_version=parser_version(tax_rule),
        ends_with_line_break=text.endswith(("\n", "\r")),
    )


def _check_width(fields: list[str], lay: _Layout, row: int, line: int) -> None:
    """A row has exactly the header's fields: the error names the first missing column, or the first extra value."""
    if len(fields) == lay.width:
        return
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


def _parse_row(fields: list[str], lay: _Layout, line_index: int, row: int, line: int, rule: TaxRule) -> ParsedLine:
    _check_width(fields, lay, row, line)

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
        is_tax=rule.is_tax(product, description),
        extra={name: fields[pos] for pos, name in lay.extras},
    )
