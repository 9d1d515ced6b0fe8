"""Scenario loading: the built-in scenario loads, and every broken file is reported by name."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from sims.scenario import (
    APRIL_2026_INVOICE_UUID,
    SCENARIOS_DIR,
    ScenarioError,
    items_from_csv,
    load_scenario,
)

SMALL_CSV = (
    b"product,group_description,description,hours,start,end,USD,project_name,category\n"
    b'Droplets,,web-01 (s-1vcpu-1gb),720,2026-04-01 00:00:00 +0000,2026-05-01 00:00:00 +0000,$6.00,"A, B",iaas\n'
    b"Taxes,,GST (10%),,2026-04-01 00:00:00 +0000,2026-04-30 23:59:59 +0000,$0.60,,iaas\n"
)
UUID = "11111111-2222-4333-8444-555555555555"


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A minimal valid scenario."""
    d = tmp_path / "sc"
    (d / "invoices").mkdir(parents=True)
    (d / "balance.json").write_text(
        json.dumps(
            {
                "month_to_date_balance": "1.00",
                "account_balance": "0.00",
                "month_to_date_usage": "1.00",
                "generated_at": "2026-05-01T00:00:00Z",
            }
        )
    )
    history = [
        {
            "description": "Invoice for April 2026",
            "amount": "6.60",
            "invoice_id": "1",
            "invoice_uuid": UUID,
            "date": "2026-05-01T08:00:00Z",
            "type": "Invoice",
        },
        {"description": "Payment", "amount": "-6.60", "date": "2026-05-02T08:00:00Z", "type": "Payment"},
    ]
    (d / "billing_history.json").write_text(json.dumps(history))
    (d / "invoices" / f"{UUID}.csv").write_bytes(SMALL_CSV)
    (d / "resources.json").write_text(json.dumps({"droplets": [{"id": 1, "name": "web-01"}]}))
    return d


def test_builtin_by_name_and_path() -> None:
    by_name = load_scenario("april-2026")
    by_path = load_scenario(SCENARIOS_DIR / "april-2026")
    assert by_name.root == by_path.root
    assert len([e for e in by_name.billing_history if e["type"] == "Invoice"]) == 137
    assert by_name.invoice(APRIL_2026_INVOICE_UUID)["invoice_period"] == "2026-04"
    assert len(by_name.balances) >= 2


def test_minimal_folder_loads_and_derives(folder: Path) -> None:
    sc = load_scenario(folder)
    assert sc.invoices == [{"invoice_uuid": UUID, "invoice_id": "1", "amount": "6.60", "invoice_period": "2026-04"}]
    assert sc.csv_bytes(UUID) == SMALL_CSV
    items = sc.items(UUID)
    assert items[0]["amount"] == "6.00" and items[0]["start_time"] == "2026-04-01T00:00:00Z"
    assert items[0]["project_name"] == "A, B" and items[0]["duration_unit"] == "Hours"
    assert sc.summary(UUID)["taxes"]["amount"] == "0.60"
    assert sc.resources["volumes"] == []
    assert sc.csv_filename(UUID).startswith("DigitalOcean Invoice 2026 Apr (1-")


def test_balance_single_object_or_series(folder: Path) -> None:
    snap = json.loads((folder / "balance.json").read_text())
    (folder / "balance.json").write_text(json.dumps([snap, snap | {"generated_at": "2026-05-02T00:00:00Z"}]))
    assert len(load_scenario(folder).balances) == 2


def test_optional_items_summary_and_invoices_files(folder: Path) -> None:
    (folder / "invoices" / f"{UUID}.json").write_text(json.dumps([{"product": "X", "amount": "1.00"}]))
    (folder / "invoices" / f"{UUID}.summary.json").write_text(json.dumps({"amount": "9.99"}))
    (folder / "invoices.json").write_text(
        json.dumps([{"invoice_uuid": UUID, "invoice_id": "1", "amount": "6.60", "invoice_period": "2026-04"}])
    )
    sc = load_scenario(folder)
    assert sc.items(UUID) == [{"product": "X", "amount": "1.00"}]
    assert sc.summary(UUID) == {"amount": "9.99"}


def test_saved_api_answer_is_accepted(folder: Path) -> None:
    history = json.loads((folder / "billing_history.json").read_text())
    (folder / "billing_history.json").write_text(json.dumps({"billing_history": history, "meta": {"total": 2}}))
    assert len(load_scenario(folder).billing_history) == 2


def _break(folder: Path, name: str, content: str | bytes | None) -> None:
    p = folder / name
    if content is None:
        p.unlink()
    elif isinstance(content, bytes):
        p.write_bytes(content)
    else:
        p.write_text(content)


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("balance.json", None, "balance.json: missing file"),
        ("balance.json", "{not json", "balance.json: not valid JSON"),
        ("balance.json", "[]", "balance.json: empty list"),
        ("balance.json", '{"account_balance": "1"}', "lacks 'month_to_date_balance'"),
        (
            "balance.json",
            '{"month_to_date_balance": 1.0, "account_balance": "0", "month_to_date_usage": "1", "generated_at": "x"}',
            "must be a string",
        ),
        ("billing_history.json", None, "billing_history.json: missing file"),
        ("billing_history.json", '{"a": 1}', "must be a list"),
        (
            "billing_history.json",
            '[{"description": "x", "amount": 5, "date": "2020-01-01T00:00:00Z", "type": "Payment"}]',
            "entry 0.amount must be a string",
        ),
        (
            "billing_history.json",
            '[{"description": "x", "amount": "5", "date": "2020-01-01T00:00:00Z", "type": "Bogus"}]',
            "unknown type 'Bogus'",
        ),
        (
            "billing_history.json",
            '[{"description": "x", "amount": "5", "date": "yesterday", "type": "Payment"}]',
            "not an ISO-8601 timestamp",
        ),
        (
            "billing_history.json",
            '[{"description": "x", "amount": "5", "date": "2020-01-01T00:00:00Z", "type": "Invoice"}]',
            "needs an invoice_uuid",
        ),
        (
            "billing_history.json",
            '[{"description": "x", "amount": "1.2.3", "date": "2020-01-01T00:00:00Z", "type": "Payment"}]',
            "not a money value",
        ),
        ("resources.json", None, "resources.json: missing file"),
        ("resources.json", "[]", "must be an object keyed by listing"),
        ("resources.json", '{"buckets": []}', "unknown listing key(s) buckets"),
        (
            "resources.json",
            '{"droplets": [{"id": "1", "name": "x"}]}',
            "droplets[0] must be an object with an integer id",
        ),
        ("resources.json", '{"apps": [{"id": "a"}]}', "apps[0] must be an object with an id and spec.name"),
        ("invoices.json", '{"x": 1}', "invoices.json: must be a list"),
        (f"invoices/{UUID}.csv", None, f"invoices/{UUID}.csv: missing file"),
        (f"invoices/{UUID}.json", "{}", "must be a list of invoice items"),
        (f"invoices/{UUID}.summary.json", "[]", "must be an invoice summary object"),
        (
            "invoices/99999999-2222-4333-8444-555555555555.json",
            "[]",
            "invoices/99999999-2222-4333-8444-555555555555.csv is a missing file",
        ),
    ],
)
def test_broken_file_is_named(folder: Path, name: str, content: str | bytes | None, expected: str) -> None:
    _break(folder, name, content)
    with pytest.raises(ScenarioError) as exc:
        load_scenario(folder)
    assert expected in str(exc.value)
    assert Path(name).name in str(exc.value)
    assert Path(name).name in exc.value.file


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"", "empty CSV"),
        (b"product,description\nDroplets,x\n", "CSV header lacks USD"),
        (b"product,description,USD\nDroplets,x\n", "line 2 has 2 fields, the header 3"),
        (b"product,description,USD\nDroplets,x,lots\n", "line 2: USD not a money value"),
        (b"product,description,USD\n\xff\xfe,x,$1\n", "not UTF-8"),
        (b"product,description,USD\nDrop\x00lets,x,$1\n", "a NUL byte at offset 28"),
    ],
)
def test_a_broken_csv_is_served_byte_for_byte_with_a_warning(
    folder: Path, content: bytes, expected: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The CSV is what DigitalOcean serves: a client must meet a broken one end to end, not a refusing simulator."""
    _break(folder, f"invoices/{UUID}.csv", content)
    with caplog.at_level("WARNING"):
        sc = load_scenario(folder)
    assert sc.csv_bytes(UUID) == content
    (warning,) = sc.warnings
    assert expected in warning and f"{UUID}.csv" in warning and expected in caplog.text
    assert isinstance(sc.items(UUID), list) and isinstance(sc.summary(UUID), dict)  # lenient, never raising


def test_unknown_scenario_names_builtins(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match="april-2026"):
        load_scenario("no-such-scenario")
    with pytest.raises(ScenarioError, match="no such scenario folder"):
        load_scenario(tmp_path / "absent")


def test_builtin_is_reproducible(tmp_path: Path) -> None:
    """The committed files are exactly what the build script writes."""
    from sims.scenarios.build_april_2026 import build

    out = tmp_path / "april-2026"
    build(out)
    committed = SCENARIOS_DIR / "april-2026"
    produced = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    assert produced == sorted(p.relative_to(committed) for p in committed.rglob("*") if p.is_file())
    for rel in produced:
        assert (out / rel).read_bytes() == (committed / rel).read_bytes(), rel
    shutil.rmtree(out)


def test_items_from_csv_handles_8_columns() -> None:
    data = b"product,description,group_description,USD,hours,start,end,project_name\nVolumes,v (syd1) 5GB,,-$1.50,,,,\n"
    (item,) = items_from_csv(data)
    assert item["amount"] == "-1.50" and "category" not in item and item["duration_unit"] == ""
