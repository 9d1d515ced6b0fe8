"""Runs the FinOps Foundation's FOCUS validator (PyPI `focus-validator`) on an export, as CI does.

The newest validator for Python 3.11 is 1.0.0, whose rule set is FOCUS 1.0. Every one of its 133 rules runs,
with two documented adjustments (docs/architecture.md, "FinOps outputs", FOCUS validation):
- its rules name four columns by IDs the specification does not use (InvoiceIssuer, Provider, Publisher,
  ResourceID for FOCUS 1.0/1.2's InvoiceIssuerName, ProviderName, PublisherName, ResourceId): the file handed
  to it has those four header cells renamed, nothing else;
- `SkuPriceId_Nullable` queries `ChargeType`, a FOCUS 0.5 column that 1.0 renamed ChargeCategory: on any 1.0
  or 1.2 dataset it can only crash (KeyError), so it is skipped through the validator's own override file.
The validator reads its ISO currency list from a path relative to the working directory
(`focus_validator/utils/currency_codes.csv`), so it runs from its install folder.
"""

from __future__ import annotations

import subprocess
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

VALIDATOR_COLUMN_IDS = {
    "InvoiceIssuerName": "InvoiceIssuer",
    "ProviderName": "Provider",
    "PublisherName": "Publisher",
    "ResourceId": "ResourceID",
}
SKIPPED_RULES = ("SkuPriceId_Nullable",)


@dataclass
class ValidatorReport:
    tests: int
    failures: int
    errors: int
    skipped: int
    failed: list[str] = field(default_factory=list)
    output: str = ""


def validator_view(csv_bytes: bytes) -> bytes:
    """The export with only its header's four validator-specific column IDs swapped in."""
    header, sep, rest = csv_bytes.partition(b"\n")
    cells = [VALIDATOR_COLUMN_IDS.get(c, c) for c in header.decode().split(",")]
    return ",".join(cells).encode() + sep + rest


def run_validator(csv_bytes: bytes, workdir: Path) -> ValidatorReport:
    import focus_validator

    data = workdir / "focus-validator-input.csv"
    data.write_bytes(validator_view(csv_bytes))
    overrides = workdir / "focus-validator-overrides.yaml"
    overrides.write_text("overrides:\n" + "".join(f"  - {r}\n" for r in SKIPPED_RULES))
    junit = workdir / "focus-validator.xml"
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "focus_validator.main",
            "--data-file",
            str(data),
            "--validate-version",
            "1.0",
            "--override-file",
            str(overrides),
            "--output-type",
            "unittest",
            "--output-destination",
            str(junit),
        ],
        cwd=Path(focus_validator.__file__).resolve().parent.parent,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    root = ET.parse(junit).getroot()
    failed = [
        tc.get("name", "?")
        for tc in root.iter("testcase")
        if tc.find("failure") is not None or tc.find("error") is not None
    ]
    return ValidatorReport(
        tests=int(root.get("tests", 0)),
        failures=int(root.get("failures", 0)),
        errors=int(root.get("errors", 0)),
        skipped=int(root.get("skipped", 0)),
        failed=failed,
        output=res.stdout + res.stderr,
    )
