"""Example-based tests of the invoice CSV parser: the real shapes, the original's gotchas, every failure."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

import pytest

from services.ingester.csv_parser import (
    PARSER_VERSION,
    CsvParseError,
    csv_sha256,
    is_tax_line,
    normalize_header,
    parse_datetime,
    parse_hours,
    parse_invoice_csv,
)
from shared.tax import TaxRule

HEADER9 = "product,group_description,description,hours,start,end,USD,project_name,category"
HEADER8 = "product,group_description,description,hours,start,end,USD,project_name"
REFERENCE_SAMPLE = (
    HEADER9
    + "\n"
    + "Floating IPs,,Unused Floating IP - 1.1.1.1,100,2020-07-01 00:00:00 +0000,2020-07-22 18:14:39 +0000,$3.11,,iaas\n"
    "Taxes,,STATE SALES TAX (6.25%),,2020-07-01 00:00:00 +0000,2020-07-31 23:59:59 +0000,$0.16,,iaas\n"
    "Volumes,,volume-sfo2-01 (sfo2) 100GB,744,2019-01-01 00:00:00 +0000,2019-01-31 23:59:59 +0000,$10.00,,\n"
    "Droplets,,indra (s-2vcpu-4gb),446,2019-01-13 09:39:51 +0000,2019-02-01 00:00:00 +0000,$13.27,,\n"
)


def utc(*a: int) -> datetime:
    return datetime(*a, tzinfo=UTC)


def test_reference_sample_parses_every_field() -> None:
    inv = parse_invoice_csv(REFERENCE_SAMPLE)
    assert inv.line_count == 4
    assert inv.currency == "USD"
    assert inv.parser_version == PARSER_VERSION
    fip, tax, vol, drop = inv.lines
    assert fip.product == "Floating IPs"
    assert fip.description == "Unused Floating IP - 1.1.1.1"
    assert fip.hours == 100
    assert fip.start == utc(2020, 7, 1)
    assert fip.end == utc(2020, 7, 22, 18, 14, 39)
    assert fip.amount_minor == 311
    assert fip.category == "iaas"
    assert not fip.is_tax
    assert tax.is_tax and tax.hours is None and tax.amount_minor == 16
    assert tax.end == utc(2020, 7, 31, 23, 59, 59)  # period end style 1
    assert drop.end == utc(2019, 2, 1)  # period end style 2: next month's 00:00:00
    assert vol.category == "" and vol.project_name == "" and vol.group_description == ""
    assert [ln.line_index for ln in inv.lines] == [0, 1, 2, 3]
    assert inv.totals.net_minor == 311 + 1000 + 1327
    assert inv.totals.tax_minor == 16
    assert inv.totals.gross_minor == 311 + 16 + 1000 + 1327
    assert inv.csv_sha256 == csv_sha256(REFERENCE_SAMPLE)


# ----------------------------------------------------------------------- the original's three gotchas
def test_gotcha_underscored_headers_and_spaced_headers_are_the_same_columns() -> None:
    spaced = "Product,Group Description,Description,Hours,Start,End,USD,Project Name,Category\n"
    row = "Droplets,k8s-prod,pool-abc (s-2vcpu-4gb),10,2026-04-01 00:00:00 +0000,2026-04-01 10:00:00 +0000,$1.00,prod,iaas\n"
    a = parse_invoice_csv(HEADER9 + "\n" + row).lines[0]
    b = parse_invoice_csv(spaced + row).lines[0]
    assert a == b
    assert a.group_description == "k8s-prod" and a.project_name == "prod"


def test_gotcha_dollar_amounts() -> None:
    inv = parse_invoice_csv(HEADER8 + "\nDroplets,,web (s),1,,,$1.23,\nDroplets,,web2 (s),1,,,4.56,\n")
    assert [ln.amount_minor for ln in inv.lines] == [123, 456]


def test_gotcha_space_separated_dates_with_rfc822_offset() -> None:
    assert parse_datetime("2026-04-30 23:59:59 +0000") == utc(2026, 4, 30, 23, 59, 59)
    assert parse_datetime("2026-04-01 02:00:00 +0200") == utc(2026, 4, 1)  # converted to UTC
    assert parse_datetime("2026-04-01T00:00:00Z") == utc(2026, 4, 1)  # ISO-8601 accepted too


# --------------------------------------------------------------------------------------- variants
def test_eight_and_nine_column_variants() -> None:
    row8 = "Droplets,,web (s-1vcpu-1gb),744,2019-01-01 00:00:00 +0000,2019-02-01 00:00:00 +0000,$5.00,proj"
    inv8 = parse_invoice_csv(HEADER8 + "\n" + row8 + "\n")
    inv9 = parse_invoice_csv(HEADER9 + "\n" + row8 + ",paas\n")
    assert inv8.lines[0].category == ""
    assert inv9.lines[0].category == "paas"
    assert inv8.lines[0].project_name == inv9.lines[0].project_name == "proj"


def test_any_column_order() -> None:
    cols = HEADER9.split(",")
    values = ["Volumes", "", "vol (nyc3) 10GB", "5", "2026-04-01 00:00:00 +0000", "", "$0.50", "p", "iaas"]
    order = [6, 2, 0, 8, 4, 1, 3, 7, 5]
    text = ",".join(cols[i] for i in order) + "\n" + ",".join(values[i] for i in order) + "\n"
    assert parse_invoice_csv(text).lines == parse_invoice_csv(HEADER9 + "\n" + ",".join(values) + "\n").lines


@pytest.mark.parametrize(
    ("raw", "minor"),
    [
        ("$1,234.56", 123456),
        ("-$3.00", -300),
        ("$-3.00", -300),
        ("-12.34", -1234),
        ("($5.00)", -500),
        ("$0.00", 0),
        ("$1,000,000.01", 100000001),
        (" $7.90 ", 790),
        ("$5", 500),
    ],
)
def test_amount_shapes(raw: str, minor: int) -> None:
    inv = parse_invoice_csv(f'{HEADER8}\nDroplets,,x,1,,,"{raw}",\n')
    assert inv.lines[0].amount_minor == minor


def test_negative_credit_line_lowers_net() -> None:
    inv = parse_invoice_csv(
        f"{HEADER8}\nDroplets,,a (s),1,,,$10.00,\nCredits,,Promo credit,,,,-$4.00,\nTaxes,,GST (10%),,,,$0.60,\n"
    )
    assert inv.totals.net_minor == 600
    assert inv.totals.tax_minor == 60
    assert inv.totals.gross_minor == 660


def test_quoted_fields_with_commas_quotes_and_newlines() -> None:
    text = (
        f'{HEADER8}\nApp Platform,"grp, with comma","my-app (basic-xxs), ""v2""\nsecond line",1,,,"$1,001.00","a,b"\n'
    )
    ln = parse_invoice_csv(text).lines[0]
    assert ln.group_description == "grp, with comma"
    assert ln.description == 'my-app (basic-xxs), "v2"\nsecond line'
    assert ln.amount_minor == 100100
    assert ln.project_name == "a,b"


def test_bom_crlf_and_trailing_blank_lines() -> None:
    body = f"{HEADER9}\r\nDroplets,,a (s),1,2026-04-01 00:00:00 +0000,2026-05-01 00:00:00 +0000,$1.00,,iaas\r\n\r\n\r\n  \r\n"
    as_text = parse_invoice_csv("\ufeff" + body)
    as_bytes = parse_invoice_csv(b"\xef\xbb\xbf" + body.encode())
    plain = parse_invoice_csv(body.replace("\r\n", "\n"))
    assert as_text.lines == as_bytes.lines == plain.lines
    assert as_text.line_count == 1
    # The hash is of the content as received: a BOM or CRLF is a different content.
    assert as_text.csv_sha256 != plain.csv_sha256
    assert as_text.csv_sha256 == as_bytes.csv_sha256


def test_blank_lines_between_rows_do_not_shift_line_indexes() -> None:
    inv = parse_invoice_csv(f"\n\n{HEADER8}\n\nDroplets,,a,1,,,$1.00,\n\nDroplets,,b,1,,,$2.00,\n")
    assert [(ln.line_index, ln.description) for ln in inv.lines] == [(0, "a"), (1, "b")]


def test_unknown_columns_are_kept_verbatim_in_extra() -> None:
    text = f"{HEADER9},Resource UUID,\nDroplets,,a (s),1,,,$1.00,,iaas, abc-123 ,\n"
    ln = parse_invoice_csv(text).lines[0]
    assert ln.extra == {"Resource UUID": " abc-123 ", "column_11": ""}


def test_header_only_invoice_has_no_lines_and_zero_totals() -> None:
    inv = parse_invoice_csv(HEADER9 + "\n")
    assert inv.lines == ()
    assert (inv.totals.net_minor, inv.totals.tax_minor, inv.totals.gross_minor) == (0, 0, 0)


def test_other_currency_column_sets_the_currency() -> None:
    inv = parse_invoice_csv("product,description,hours,start,end,EUR\nDroplets,a,1,,,€1.00\n".replace("€", ""))
    assert inv.currency == "EUR"
    assert inv.lines[0].currency == "EUR"
    assert inv.lines[0].amount_minor == 100


def test_values_are_stripped_of_surrounding_spaces() -> None:
    ln = parse_invoice_csv(f"{HEADER8}\n  Droplets , g ,  web (s) , 7 ,,, $1.00 , p \n").lines[0]
    assert (ln.product, ln.group_description, ln.description, ln.hours, ln.project_name) == (
        "Droplets",
        "g",
        "web (s)",
        7,
        "p",
    )


# ------------------------------------------------------------------------------------------ is_tax
@pytest.mark.parametrize(
    ("product", "description", "tax"),
    [
        ("Taxes", "GST (10%)", True),
        ("Taxes", "Regional levy", True),  # product Taxes first, whatever the description
        ("Other", "gst", True),
        ("Taxes", "STATE SALES TAX (6.25%)", True),
        ("Other", "Sales Tax", True),
        ("Other", "VAT (20%)", True),  # the seed's rule called this net
        ("Other", "HST", True),
        ("Other", "QST (9.975%)", True),
        ("Other", "PST 7%", True),
        ("Droplets", "syntax-highlighter (s-1vcpu-1gb)", False),  # the seed's rule called these tax
        ("Spaces", "taxonomy-data", False),
        ("Droplets", "gst-worker (s-1vcpu-1gb)", False),
        ("Droplets", "web-01 (s-1vcpu-1gb)", False),
        ("Spaces Subscription", "Spaces Subscription", False),
        ("Credits", "Promotional credit", False),
        ("Other", "", False),
    ],
)
def test_is_tax_rule(product: str, description: str, tax: bool) -> None:
    assert is_tax_line(product, description) is tax


def test_the_parser_applies_the_one_rule_product_first() -> None:
    inv = parse_invoice_csv(
        f"{HEADER8}\nTaxes,,Regional levy,,,,$1.00,\nDroplets,,gst-worker (s),1,,,$2.00,\nOther,,VAT (20%),,,,$0.40,\n"
    )
    assert [ln.is_tax for ln in inv.lines] == [True, False, True]
    assert (inv.totals.net_minor, inv.totals.tax_minor) == (200, 140)


def test_configured_tax_names_change_the_split_and_the_parser_version() -> None:
    body = f"{HEADER8}\nOther,,IVA 21%,,,,$0.21,\nOther,,VAT (20%),,,,$0.20,\n"
    default = parse_invoice_csv(body)
    iva = parse_invoice_csv(body, tax_rule=TaxRule(("IVA",)))
    assert [ln.is_tax for ln in default.lines] == [False, True]
    assert [ln.is_tax for ln in iva.lines] == [True, False]
    assert default.parser_version == PARSER_VERSION != iva.parser_version
    assert iva.parser_version.startswith(PARSER_VERSION + "+tax.")


# --------------------------------------------------------------------------------------- helpers
@pytest.mark.parametrize(
    ("raw", "norm"),
    [
        ("group_description", "group_description"),
        ("Group Description", "group_description"),
        (" GROUP-DESCRIPTION ", "group_description"),
        ("\ufeffproduct", "product"),
        ("Project  Name", "project_name"),
        ("USD", "usd"),
    ],
)
def test_normalize_header(raw: str, norm: str) -> None:
    assert normalize_header(raw) == norm


@pytest.mark.parametrize(("raw", "hours"), [("", None), ("  ", None), ("744", 744), ("1,000", 1000), ("12.0", 12)])
def test_parse_hours(raw: str, hours: int | None) -> None:
    assert parse_hours(raw) == hours


# ---------------------------------------------------------------------------------------- failures
def _err(text: str) -> CsvParseError:
    with pytest.raises(CsvParseError) as ei:
        parse_invoice_csv(text)
    return ei.value


@pytest.mark.parametrize("column", ["product", "description", "hours", "start", "end", "USD"])
def test_missing_required_column_fails_naming_it(column: str) -> None:
    cols = [c for c in HEADER9.split(",") if c != column]
    e = _err(",".join(cols) + "\n" + ",".join("x" for _ in cols) + "\n")
    assert e.row == 0
    assert "missing required column" in str(e)
    assert (column if column != "USD" else "amount") in str(e)


def test_optional_columns_may_be_missing() -> None:
    inv = parse_invoice_csv("product,description,hours,start,end,USD\nDroplets,a (s),1,,,$1.00\n")
    assert inv.lines[0].group_description == inv.lines[0].project_name == inv.lines[0].category == ""


def test_bad_amount_names_row_line_column_and_value() -> None:
    e = _err(f"{HEADER8}\nDroplets,,a,1,,,$1.00,\nDroplets,,b,1,,,$1.2.3,\n")
    assert (e.row, e.line, e.column, e.value) == (2, 3, "USD", "$1.2.3")
    assert "row 2" in str(e) and "'USD'" in str(e) and "'$1.2.3'" in str(e)


@pytest.mark.parametrize("amount", ["", "abc", "$1,23", "$1.234", "1e3", "--1", "$"])
def test_unparsable_amounts_fail(amount: str) -> None:
    e = _err(f'{HEADER8}\nDroplets,,a,1,,,"{amount}",\n')
    assert e.column == "USD" and e.row == 1


@pytest.mark.parametrize("value", ["2026-04-01", "2026/04/01 00:00:00 +0000", "2026-04-01 00:00:00", "yesterday"])
def test_unparsable_dates_fail(value: str) -> None:
    e = _err(f"{HEADER8}\nDroplets,,a,1,{value},,$1.00,\n")
    assert (e.column, e.value, e.row) == ("start", value, 1)


@pytest.mark.parametrize("value", ["1.5", "-3", "ten", "1,00"])
def test_unparsable_hours_fail(value: str) -> None:
    e = _err(f'{HEADER8}\nDroplets,,a,"{value}",,,$1.00,\n')
    assert (e.column, e.value) == ("hours", value)


def test_short_row_fails() -> None:
    e = _err(f"{HEADER9}\nDroplets,,a,1,,,$1.00,\n")
    assert e.row == 1 and "8 field(s), the header has 9" in str(e)
    assert e.column == "category"


def test_long_row_fails() -> None:
    e = _err(f"{HEADER8}\nDroplets,,a,1,,,$1.00,,surprise\n")
    assert e.row == 1 and e.value == "surprise"


def test_duplicate_column_fails() -> None:
    e = _err("product,Product,description,hours,start,end,USD\n")
    assert e.row == 0 and "duplicate" in str(e)


def test_two_currency_columns_fail() -> None:
    e = _err("product,description,hours,start,end,USD,EUR\n")
    assert "two amount" in str(e)


def test_empty_product_fails() -> None:
    e = _err(f"{HEADER8}\n,,a,1,,,$1.00,\n")
    assert e.column == "product"


@pytest.mark.parametrize("text", ["", "\n\n", "\ufeff", "  \r\n"])
def test_empty_csv_fails(text: str) -> None:
    assert "no header row" in str(_err(text))


def test_unterminated_quote_fails() -> None:
    e = _err(f'{HEADER8}\nDroplets,,"a,1,,,$1.00,\n')
    assert "malformed" in str(e) or "field(s)" in str(e)


def test_not_utf8_bytes_fail() -> None:
    assert "UTF-8" in str(_err(HEADER8.encode() + b"\nDroplets,,\xff\xfe,1,,,$1.00,\n"))


@pytest.mark.parametrize(
    ("body", "bad", "line", "what"),
    [
        (HEADER8.encode() + b"\nDroplets,,caf\xe9 (s),1,,,$1.00,\n", b"\xe9", 2, "byte 0xE9"),  # latin-1 é
        (b"\xef\xbb\xbf" + HEADER8.encode() + b"\nDroplets,,caf\xe9 (s),1,,,$1.00,\n", b"\xe9", 2, "byte 0xE9"),
        (HEADER8.encode() + b"\nDroplets,,a\x00b (s),1,,,$1.00,\n", b"\x00", 2, "NUL"),
        (HEADER8.encode() + b'\nDroplets,,"a\nb\x07" (s),1,,,$1.00,\n', b"\x07", 3, "U+0007"),
        (HEADER8.encode() + b"\nDroplets,,a\tb (s),1,,,$1.00,\n", b"\t", 2, "U+0009"),
        (HEADER8.encode() + "\nDroplets,,a\u0085b (s),1,,,$1.00,\n".encode(), b"\xc2\x85", 2, "U+0085"),
    ],
)
def test_bytes_that_are_not_clean_utf8_text_fail_naming_the_byte_and_line(
    body: bytes, bad: bytes, line: int, what: str
) -> None:
    e = _err(body)
    byte = body.index(bad)
    assert (e.line, e.byte) == (line, byte)
    assert what in str(e) and f"line {line}" in str(e) and f"byte offset {byte}" in str(e)


def test_utf8_text_and_a_bom_are_fine_and_hashed_as_received() -> None:
    body = HEADER8 + "\nDroplets,,café-01 (s),1,,,$1.00,\n"
    plain, with_bom = parse_invoice_csv(body.encode()), parse_invoice_csv(b"\xef\xbb\xbf" + body.encode())
    assert plain.lines == with_bom.lines and plain.lines[0].description == "café-01 (s)"
    assert plain.csv_sha256 == hashlib.sha256(body.encode()).hexdigest() != with_bom.csv_sha256


@pytest.mark.parametrize("amount", ["$１.00", "$١٢.00", "$1²", "$12345678901234567.00"])
def test_amounts_with_foreign_digits_or_beyond_18_digits_fail_clearly(amount: str) -> None:
    e = _err(f"{HEADER8}\nDroplets,,a,1,,,{amount},\n")
    assert e.column == "USD" and ("non-ASCII digit" in str(e) or "beyond 18 digits" in str(e))


def test_the_end_of_the_body_is_reported() -> None:
    assert parse_invoice_csv(f"{HEADER8}\nDroplets,,a,1,,,$1.00,\n").ends_with_line_break
    assert not parse_invoice_csv(f"{HEADER8}\nDroplets,,a,1,,,$1.00,").ends_with_line_break


def test_one_bad_row_fails_the_whole_invoice() -> None:
    good = "".join(f"Droplets,,d{i} (s),1,,,$1.00,\n" for i in range(50))
    e = _err(f"{HEADER8}\n{good}Droplets,,bad,1,,,$x,\n{good}")
    assert e.row == 51


def test_error_value_is_truncated() -> None:
    e = _err(f"{HEADER8}\nDroplets,,a,1,,,{'9' * 500}x,\n")
    assert e.value is not None and len(e.value) == 200
