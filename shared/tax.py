"""The one tax rule: which invoice line is tax and which is net. Pure, used by the parser and the matcher alike.

A line is tax when its product is `Taxes` (DigitalOcean's product for tax rows), or else when its description
names a tax **as a word**: GST, VAT, HST, PST, QST, sales tax, tax (the names are configurable, `TAX_NAMES`).
A name inside another word is not a tax: `syntax-web`, `taxonomy-data`, `tax-calculator (s-1vcpu-1gb)`,
`vat.example.com` are resource names, so letters, digits, `_`, `-` and a `.` joining two word parts count as
part of the word. Case is ignored and a multi-word name (`sales tax`) allows any spacing.

Every other line is net, credits included (negative lines stay in net). The finance contract's totals
follow: net + tax = gross = the sum of all lines.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

DEFAULT_TAX_NAMES: tuple[str, ...] = ("GST", "VAT", "HST", "PST", "QST", "sales tax", "tax")
TAX_PRODUCTS: frozenset[str] = frozenset({"taxes"})

# Not a word boundary: a letter, digit, `_` or `-` next to the name, or a `.` that joins it to another word part.
_BEFORE = r"(?<![\w\-])(?<![\w\-]\.)"
_AFTER = r"(?![\w\-])(?!\.\w)"


def normalize_names(names: Iterable[str]) -> tuple[str, ...]:
    """Lower-case, single-spaced, unique, longest first (so `sales tax` is tried before `tax`)."""
    out = {" ".join(n.split()).lower() for n in names if n and n.strip()}
    return tuple(sorted(out, key=lambda n: (-len(n), n)))


@dataclass(frozen=True)
class TaxRule:
    """The rule with its configured names; `DEFAULT_RULE` is the contract's."""

    names: tuple[str, ...] = DEFAULT_TAX_NAMES
    _pattern: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        names = normalize_names(self.names)
        if not names:
            raise ValueError("the tax rule needs at least one tax name")
        object.__setattr__(self, "names", names)
        alternatives = "|".join(r"\s+".join(re.escape(w) for w in n.split(" ")) for n in names)
        object.__setattr__(self, "_pattern", re.compile(f"{_BEFORE}(?:{alternatives}){_AFTER}", re.IGNORECASE))

    @classmethod
    def from_names(cls, names: Iterable[str] | None) -> TaxRule:
        names = tuple(names or ())
        return cls(names) if names else DEFAULT_RULE

    def is_tax(self, product: str, description: str) -> bool:
        """Product `Taxes` first; otherwise a tax named as a word in the description."""
        if " ".join((product or "").split()).lower() in TAX_PRODUCTS:
            return True
        return self.names_tax(description)

    def names_tax(self, description: str) -> bool:
        """Does the description name a tax as a word?"""
        return bool(description) and self._pattern.search(description) is not None

    @property
    def is_default(self) -> bool:
        return self.names == DEFAULT_RULE.names

    @property
    def fingerprint(self) -> str:
        """Short and stable for a set of names: recorded with every parse so a rule change re-ingests."""
        return hashlib.sha256("\n".join(self.names).encode()).hexdigest()[:8]


DEFAULT_RULE = TaxRule(DEFAULT_TAX_NAMES)


def is_tax(product: str, description: str, rule: TaxRule = DEFAULT_RULE) -> bool:
    """The contract's rule with the default names (see TaxRule.is_tax)."""
    return rule.is_tax(product, description)
