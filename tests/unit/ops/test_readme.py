"""The README documents every configuration variable and starts with the two commands."""

from pathlib import Path

from services.matcher.options import MatcherOptions
from shared.settings import Settings

README = Path(__file__).resolve().parents[3] / "README.md"


def test_every_setting_is_in_the_configuration_table() -> None:
    text = README.read_text()
    names = [n.upper() for n in Settings.model_fields] + [f"MATCHER_{n.upper()}" for n in MatcherOptions.model_fields]
    missing = [n for n in names if f"| `{n}` |" not in text]
    assert not missing, f"README configuration table lacks {missing}"


def test_readme_starts_with_the_two_commands() -> None:
    head = README.read_text().split("\n")[:6]
    assert any(line.startswith("make demo") for line in head)
    assert any(line.startswith("make test") for line in head)
