"""Money as integer minor units plus a currency, parsed from strings through Decimal: never a float.

Only ASCII digits are money (Python's `\\d` and `Decimal` also read Arabic-Indic or full-width digits, which
no DigitalOcean amount contains: such a value is refused, not guessed), and an amount needs at most
`MAX_MINOR_DIGITS` digits in minor units, so it always fits the `bigint` columns and finance's integers.
JSON from DigitalOcean is read with `loads_exact`: a JSON number becomes a Decimal, never a float.
"""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass
from decimal import Context, Decimal, InvalidOperation
from typing import Any

MINOR_DIGITS = {"USD": 2, "EUR": 2, "GBP": 2, "AUD": 2, "CAD": 2, "SGD": 2, "INR": 2, "JPY": 0}

# Optional sign (before or after the currency symbol), optional `$`, digits either plain or grouped
# by thousands with commas, optional decimals. Anything else ("1,23", "1.2.3", "12,34.5,6", "1e3",
# "NaN", "--1", "$") is ambiguous and rejected.
_MONEY_RE = re.compile(
    r"""^(?P<sign1>[-+])?\s*(?P<cur>\$)?\s*(?P<sign2>[-+])?
        (?P<int>[0-9]{1,3}(?:,[0-9]{3})+|[0-9]+)
        (?:\.(?P<frac>[0-9]+))?$""",
    re.VERBOSE | re.ASCII,
)
# Minor units fit in 18 digits: below 2**63 (PostgreSQL bigint, finance's integers) with room to sum.
MAX_MINOR_DIGITS = 18


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
    _refuse_foreign_digits(text)
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


def _refuse_foreign_digits(text: str) -> None:
    """A digit that is not 0-9 (Arabic-Indic, full-width, superscript...) is refused with its code point."""
    for ch in text:
        if not ("0" <= ch <= "9") and (ch.isdigit() or unicodedata.category(ch) == "Nd"):
            name = unicodedata.name(ch, "unnamed")
            raise MoneyError(f"money value {text!r} has a non-ASCII digit {ch!r} (U+{ord(ch):04X} {name})")


def to_minor(value: Decimal, currency: str = "USD") -> int:
    """Exact conversion to minor units; more precision than the currency has is an error, not a rounding.

    More than MAX_MINOR_DIGITS digits in minor units is refused: it cannot be stored or pushed exactly.
    """
    if not value.is_finite():
        raise MoneyError(f"{value} is not a finite amount")
    digits = minor_digits(currency)
    if value and value.adjusted() + digits >= MAX_MINOR_DIGITS:
        raise MoneyError(f"{value} {currency} is beyond {MAX_MINOR_DIGITS} digits in minor units")
    # An exact scale: a context wide enough for every digit given (the default 28 would round long fractions).
    exact = Context(prec=len(value.as_tuple().digits) + digits + 2)
    q = value.scaleb(digits, context=exact)
    if q != q.to_integral_value():
        raise MoneyError(f"{value} has more decimals than {currency} allows")
    return int(q)


def money_from_json(value: Any, currency: str = "USD", *, what: str = "amount") -> int:
    """A DigitalOcean JSON money value (a string such as "12.34", or an exact JSON number) → minor units.

    A float never reaches here through `loads_exact`; one that does is refused rather than trusted.
    """
    if isinstance(value, bool) or value is None:
        raise MoneyError(f"{what} must be a money string, got {value!r}")
    if isinstance(value, float):
        raise MoneyError(f"{what} arrived as a binary float ({value!r}): JSON money must be read exactly")
    if isinstance(value, int | Decimal):
        return to_minor(Decimal(value), currency)
    if not isinstance(value, str):
        raise MoneyError(f"{what} must be a money string, got {type(value).__name__}")
    return parse_minor(value, currency)


def _no_constant(name: str) -> Any:
    raise ValueError(f"JSON constant {name} is not a number")


def loads_exact(data: str | bytes) -> Any:
    """JSON with every number exact: decimals as Decimal (never float); NaN/Infinity refused."""
    return json.loads(data, parse_float=Decimal, parse_constant=_no_constant)


def parse_money(text: str, currency: str = "USD") -> Money:
    return Money(to_minor(parse_decimal(text), currency), currency.upper())


def parse_minor(text: str, currency: str = "USD") -> int:
    return parse_money(text, currency).minor


def format_minor(minor: int, currency: str = "USD") -> str:
    """Minor units as a plain decimal string (`-12.34`), the inverse of parse_minor for plain input."""
    digits = minor_digits(currency)
    d = Decimal(minor).scaleb(-digits)
    return f"{d:.{digits}f}"
