"""The one tax rule (shared/tax.py) on real-shaped DigitalOcean lines, the traps included."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.settings import Settings
from shared.tax import DEFAULT_RULE, TaxRule, is_tax


@pytest.mark.parametrize(
    ("product", "description"),
    [
        ("Taxes", "GST (10%)"),  # Australian accounts
        ("Taxes", "STATE SALES TAX (6.25%)"),  # the reference's US sample
        ("Taxes", "Regional levy"),  # product first, whatever the description says
        ("taxes", ""),
        ("Other", "VAT (20%)"),
        ("Other", "HST"),
        ("Other", "HST (13%)"),
        ("Other", "PST (7%)"),
        ("Other", "QST (9.975%)"),
        ("Other", "Sales  Tax"),
        ("Other", "Tax: GST."),
        ("Credits", "Credit - tax refund"),
    ],
)
def test_tax_lines(product: str, description: str) -> None:
    assert is_tax(product, description)


@pytest.mark.parametrize(
    ("product", "description"),
    [
        ("Droplets", "syntax-highlighter (s-1vcpu-1gb)"),  # "tax" inside a word: the seed counted it as tax
        ("Spaces", "taxonomy-data"),
        ("Droplets", "tax-calculator (s-1vcpu-1gb)"),  # a resource name, joined by a hyphen
        ("Droplets", "gst_sync (s-1vcpu-1gb)"),
        ("Apps", "vat.example.com (basic)"),
        ("Droplets", "avatar-service (s-1vcpu-1gb)"),
        ("Other", "PSTN gateway"),
        ("Droplets", "hst2 (s-1vcpu-1gb)"),
        ("Credits", "Promotional credit"),  # credits are net (negative lines)
        ("Volumes", "vol-data-syd1 (syd1) 50GB"),
        ("Other", ""),
    ],
)
def test_net_lines(product: str, description: str) -> None:
    assert not is_tax(product, description)


def test_names_are_configurable_and_normalized() -> None:
    rule = TaxRule(("IVA", "  Goods and   Services Tax ", "iva"))
    assert rule.names == ("goods and services tax", "iva")
    assert rule.is_tax("Other", "goods and services TAX 10%")
    assert rule.is_tax("Other", "IVA 21%") and not rule.is_tax("Other", "VAT (20%)")
    assert rule.is_tax("Taxes", "VAT (20%)")  # product Taxes is not a name: it always counts
    assert not rule.is_default and DEFAULT_RULE.is_default
    assert rule.fingerprint != DEFAULT_RULE.fingerprint and len(rule.fingerprint) == 8
    with pytest.raises(ValueError):
        TaxRule(("  ",))


def test_settings_build_the_rule_from_tax_names() -> None:
    assert Settings(_env_file=None).tax_rule() == DEFAULT_RULE
    custom = Settings(_env_file=None, tax_names="GST, IVA").tax_rule()
    assert custom.names == ("gst", "iva")


_word = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=8)


@given(_word, _word, st.sampled_from(["gst", "vat", "hst", "pst", "qst", "tax"]))
def test_a_name_glued_inside_a_word_is_never_tax(left: str, right: str, name: str) -> None:
    for d in (f"{left}{name}{right}", f"{left}-{name}", f"{name}-{right}", f"{left}.{name}.{right}", f"{name}_{right}"):
        assert not DEFAULT_RULE.names_tax(d), d


@given(_word, st.sampled_from(["GST", "VAT", "HST", "PST", "QST", "Sales Tax", "TAX"]))
def test_a_name_between_spaces_or_punctuation_is_tax(word: str, name: str) -> None:
    for d in (f"{name} (10%)", f"{word} {name}", f"({name})", f"{name}: {word}", f"{word}, {name}."):
        assert DEFAULT_RULE.names_tax(d), d
