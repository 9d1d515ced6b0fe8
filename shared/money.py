"""Money as integer minor units plus a currency, parsed from strings through Decimal: never a float."""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

MINOR_DIGITS = {"USD": 2, "EUR": 2, "GBP": 2, "AUD": 2, "CAD": 2, "SGD": 2, "INR": 2, "JPY": 0}

# Optional sign (before or after the currency symbol), optional `$`, digits either plain or grouped
# by thousands with commas, optional decimals. Anything else ("1,23", "1.2.3", "12,34.5,6", "1e3",
# "NaN", "--1", "$") is ambiguous and rejected.
_MONEY_RE = re.compile(
    r"""^(?P<sign1>[-+])?\s*(?P<cur>\$)?\s*(?P<sign2>[-+])?
        (?P<int>\d{1,3}(?:,\d{3})+|\d+)
        (?:\.(?P<frac>\d+))?$""",
    re.VERBOSE,
)


class MoneyError(ValueError):
    """A money string that cannot be read without guessing."""


@dataclass(frozen=True, slots=True)
class Money:
    minor: int
    currency: str = "USD"

    def __add__(self, other: Money) -> Money:
        if other.currency != self.currency:
            raise MoneyError(f"cannot add {other.currency} to {self.currency}")
        return Money(self.minor + other.minor, self.currency)

    def to_decimal(self) -> Decimal:
        return Decimal(self.minor).scaleb(-minor_digits(self.currency))

    def __str__(self) -> str:
        return format_minor(self.minor, self.currency)


def minor_digits(currency: str) -> int:
    return MINOR_DIGITS.get(currency.upper(), 2)


def parse_decimal(text: str) -> Decimal:
    """Parse `$1,234.56`, `-12.34`, `$-0.16`, `-$3.00` into a Decimal, rejecting anything ambiguous."""
    if not isinstance(text, str):
        raise MoneyError(f"money must be a string, got {type(text).__name__}")
    s = text.strip()
    if s.startswith("(") and s.endswith(")"):  # accounting negative: ($12.34)
        inner = s[1:-1].strip()
        if inner.startswith(("-", "+")):
            raise MoneyError(f"ambiguous money value {text!r}")
        return -parse_decimal(inner)
    m = _MONEY_RE.match(s)
    if not m or (m.group("sign1") and m.group("sign2")):
        raise MoneyError(f"not a money value: {text!r}")
    digits = m.group("int").replace(",", "") + ("." + m.group("frac") if m.group("frac") else "")
    try:
        value = Decimal(digits)
    except InvalidOperation as e:  # pragma: no cover - the regex admits only digits
        raise MoneyError(f"not a money value: {text!r}") from e
    if (m.group("sign1") or m.group("sign2")) == "-":
        value = -value
    return value


def to_minor(value: Decimal, currency: str = "USD") -> int:
    """Exact conversion to minor units; more precision than the currency has is an error, not a rounding."""
    q = value.scaleb(minor_digits(currency))
    if q != q.to_integral_value():
        raise MoneyError(f"{value} has more decimals than {currency} allows")
    return int(q)


def parse_money(text: str, currency: str = "USD") -> Money:
    return Money(to_minor(parse_decimal(text), currency), currency.upper())


def parse_minor(text: str, currency: str = "USD") -> int:
    return parse_money(text, currency).minor


def format_minor(minor: int, currency: str = "USD") -> str:
    """Minor units as a plain decimal string (`-12.34`), the inverse of parse_minor for plain input."""
    digits = minor_digits(currency)
    d = Decimal(minor).scaleb(-digits)
    return f"{d:.{digits}f}"
