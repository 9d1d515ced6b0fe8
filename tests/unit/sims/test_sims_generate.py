"""Synthetic scenarios: deterministic per seed, the requested size, valid for the DigitalOcean simulator."""

from __future__ import annotations

import csv
import io
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from sims.do.app import create_app
from sims.generate import GenerateError, generate
from sims.scenario import load_scenario
from sims.server import run_in_thread


def files(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path) -> None:
    generate(tmp_path / "a", invoices=4, lines=9, resources=12, seed=7)
    generate(tmp_path / "b", invoices=4, lines=9, resources=12, seed=7)
    generate(tmp_path / "c", invoices=4, lines=9, resources=12, seed=8)
    assert files(tmp_path / "a") == files(tmp_path / "b")
    assert files(tmp_path / "a") != files(tmp_path / "c")


@pytest.mark.parametrize(("invoices", "lines", "resources"), [(1, 1, 0), (3, 5, 2), (30, 40, 60)])
def test_sizes_and_totals(tmp_path: Path, invoices: int, lines: int, resources: int) -> None:
    out = tmp_path / "sc"
    summary = generate(out, invoices=invoices, lines=lines, resources=resources, seed=1)
    assert summary["history_entries"] == 2 * invoices
    sc = load_scenario(out)
    assert len(sc.invoices) == invoices
    assert sum(len(v) for v in sc.resources.values()) == resources
    for inv in sc.invoices:
        rows = list(csv.DictReader(io.StringIO(sc.csv_bytes(inv["invoice_uuid"]).decode())))
        assert len(rows) == lines
        assert rows[-1]["description"] == "GST (10%)"
        total = sum(Decimal(r["USD"].replace("$", "")) for r in rows)
        assert f"{total:.2f}" == inv["amount"]
    assert len({inv["invoice_period"] for inv in sc.invoices}) == invoices


def test_lines_name_inventoried_resources(tmp_path: Path) -> None:
    generate(tmp_path / "sc", invoices=2, lines=200, resources=30, seed=3)
    sc = load_scenario(tmp_path / "sc")
    names = {r.get("name") or r.get("ip") or r["spec"]["name"] for v in sc.resources.values() for r in v}
    rows = list(csv.DictReader(io.StringIO(sc.csv_bytes(sc.invoices[-1]["invoice_uuid"]).decode())))
    named = [
        r
        for r in rows
        if r["description"].split(" (")[0] in names
        or r["group_description"] in names
        or r["description"].rsplit(" - ", 1)[-1] in names
    ]
    assert 0 < len(named) < len(rows)
    assert any(r["description"].startswith("gone-") for r in rows)


def test_served_by_the_simulator(tmp_path: Path) -> None:
    generate(tmp_path / "sc", invoices=5, lines=3, resources=4, seed=2)
    with (
        run_in_thread(create_app(tmp_path / "sc")) as srv,
        httpx.Client(base_url=srv.url, headers={"Authorization": "Bearer t"}) as c,
    ):
        body = c.get("/v2/customers/my/invoices", params={"per_page": 2}).json()
        assert body["meta"]["total"] == 5
        uuid = body["invoices"][0]["invoice_uuid"]
        assert (
            c.get(f"/v2/customers/my/invoices/{uuid}/csv").content
            == (tmp_path / "sc" / "invoices" / f"{uuid}.csv").read_bytes()
        )


def test_refuses_non_empty_folder_and_bad_sizes(tmp_path: Path) -> None:
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "keep.txt").write_text("mine")
    with pytest.raises(GenerateError, match="not empty"):
        generate(tmp_path / "x", invoices=1, lines=1, resources=1)
    with pytest.raises(GenerateError):
        generate(tmp_path / "y", invoices=0, lines=1, resources=1)
    generate(tmp_path / "x", invoices=1, lines=2, resources=1, force=True)
    assert not (tmp_path / "x" / "keep.txt").exists()


def test_cli_generate(tmp_path: Path) -> None:
    from cloudbill.cli import app

    runner = CliRunner()
    out = tmp_path / "g"
    args = ["sim", "generate", "--invoices", "3", "--lines", "4", "--resources", "5", "--out", str(out), "--seed", "9"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "3 invoices x 4 lines" in result.output
    assert len(load_scenario(out).invoices) == 3
    again = runner.invoke(app, args)
    assert again.exit_code == 2 and "not empty" in again.output


def test_cli_do_reports_a_broken_scenario(tmp_path: Path) -> None:
    from cloudbill.cli import app

    generate(tmp_path / "sc", invoices=1, lines=1, resources=0)
    (tmp_path / "sc" / "resources.json").write_text("{")
    result = CliRunner().invoke(app, ["sim", "do", "--scenario", str(tmp_path / "sc"), "--port", "0"])
    assert result.exit_code == 2
    assert "resources.json" in result.output and "not valid JSON" in result.output


def test_cli_finance_needs_a_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    from cloudbill.cli import app

    monkeypatch.delenv("SKYAI_FINANCE_JWT_SECRET", raising=False)
    result = CliRunner().invoke(app, ["sim", "finance", "--database-url", "postgresql://nowhere/db"])
    assert result.exit_code == 2 and "JWT secret" in result.output
