from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.money import (
    Money,
    MoneyError,
    format_minor,
    loads_exact,
    money_from_json,
    parse_decimal,
    parse_minor,
    parse_money,
)


@pytest.mark.parametrize(
    ("text", "minor"),
    [
        ("$1,234.56", 123456),
        ("-12.34", -1234),
        ("$0.16", 16),
        ("86.92", 8692),
        ("$86.92", 8692),
        ("-$3.00", -300),
        ("$-3.00", -300),
        ("+5", 500),
        ("0", 0),
        ("0.5", 50),
        ("  $7.90 ", 790),
        ("$1,000,000.00", 100000000),
        ("($12.34)", -1234),
        ("12.340", 1234),  # trailing zero is exact, not ambiguous
    ],
)
def test_parses_to_minor_units(text: str, minor: int) -> None:
    assert parse_minor(text) == minor


@pytest.mark.parametrize(
    "text",
    [
        "",
        "$",
        "1,23",  # European decimal comma or a bad grouping: ambiguous
        "12,34.56",
        "1,2345.00",
        "1.2.3",
        "1e3",
        "NaN",
        "Infinity",
        "--1",
        "-$-1",
        "$$1",
        "12.345",  # more precision than cents: refuse, never round
        "0.001",
        "1 234.00",
        "(-1.00)",
        "USD 1.00",
        "1.",
        ".5",
    ],
)
def test_rejects_ambiguous_values(text: str) -> None:
    with pytest.raises(MoneyError):
        parse_minor(text)


def test_rejects_non_strings() -> None:
    with pytest.raises(MoneyError):
        parse_decimal(12.5)  # type: ignore[arg-type]


def test_currency_with_no_minor_units() -> None:
    assert parse_money("1,200", "JPY") == Money(1200, "JPY")
    with pytest.raises(MoneyError):
        parse_money("12.5", "JPY")


def test_money_addition_and_currency_guard() -> None:
    assert Money(790) + Money(7902) == Money(8692)
    assert str(Money(8692)) == "86.92"
    assert Money(-5).to_decimal() == Decimal("-0.05")
    with pytest.raises(MoneyError):
        Money(1, "USD") + Money(1, "EUR")


@pytest.mark.parametrize(
    ("minor", "text"), [(0, "0.00"), (5, "0.05"), (-5, "-0.05"), (8692, "86.92"), (-123456, "-1234.56")]
)
def test_format_minor(minor: int, text: str) -> None:
    assert format_minor(minor) == text


@given(st.integers(min_value=-(10**12), max_value=10**12))
def test_format_then_parse_round_trips(minor: int) -> None:
    assert parse_minor(format_minor(minor)) == minor


@given(st.integers(min_value=0, max_value=10**12))
def test_grouped_dollar_form_round_trips(minor: int) -> None:
    whole, cents = divmod(minor, 100)
    assert parse_minor(f"${whole:,}.{cents:02d}") == minor
    assert parse_minor(f"-${whole:,}.{cents:02d}") == -minor


@pytest.mark.parametrize(
    "text",
    ["$١٢.٣٤", "１２.34", "12.３4", "$1²", "৪.00"],  # Arabic-Indic, full-width, superscript, Bengali
)
def test_non_ascii_digits_are_refused_naming_the_character(text: str) -> None:
    with pytest.raises(MoneyError, match="non-ASCII digit"):
        parse_minor(text)


def test_amounts_beyond_18_digits_in_minor_units_are_refused() -> None:
    assert parse_minor("9999999999999999.99") == 999999999999999999  # 18 digits
    for text in ("10000000000000000.00", "-10000000000000000", "1" + "0" * 400):
        with pytest.raises(MoneyError, match="beyond 18 digits"):
            parse_minor(text)


def test_long_fractions_are_not_rounded_by_the_decimal_context() -> None:
    with pytest.raises(MoneyError, match="more decimals"):
        parse_minor("1.000000000000000000000000000001")
    assert parse_minor("1.000000000000000000000000000000") == 100


def test_json_money_is_exact_and_never_a_float() -> None:
    body = loads_exact(b'{"a": "12.34", "b": 12.34, "c": 1234567890123456.78, "d": 7}')
    assert body["b"] == Decimal("12.34") and isinstance(body["b"], Decimal)
    assert [money_from_json(body[k]) for k in "abcd"] == [1234, 1234, 123456789012345678, 700]
    for bad in (12.34, True, None, [1]):
        with pytest.raises(MoneyError):
            money_from_json(bad)
    with pytest.raises(ValueError):
        loads_exact('{"a": NaN}')
