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
from sims.generate import MAX_INVOICES, GenerateError, generate
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


def test_big_invoices_are_the_latest_months(tmp_path: Path) -> None:
    summary = generate(tmp_path / "sc", invoices=3, lines=4, resources=5, seed=1, big_invoices=2, big_lines=60)
    assert (summary["invoices"], summary["cost_lines"]) == (5, 3 * 4 + 2 * 60)
    sc = load_scenario(tmp_path / "sc")
    by_period = sorted(sc.invoices, key=lambda inv: inv["invoice_period"])
    sizes = [len(list(csv.DictReader(io.StringIO(sc.csv_bytes(i["invoice_uuid"]).decode())))) for i in by_period]
    assert sizes == [4, 4, 4, 60, 60]
    with pytest.raises(GenerateError, match="big-lines"):
        generate(tmp_path / "bad", invoices=1, lines=1, resources=0, big_invoices=1)
    with pytest.raises(GenerateError, match="at most"):
        generate(tmp_path / "bad", invoices=MAX_INVOICES, lines=1, resources=0, big_invoices=1, big_lines=1)


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


def _usage(d: Path) -> list[tuple[str, Decimal]]:
    import json

    return [
        (b["generated_at"], Decimal(b["month_to_date_usage"])) for b in json.loads((d / "balance.json").read_text())
    ]


def test_balance_history_accrues_each_month_to_its_invoice_net(tmp_path: Path) -> None:
    from sims.generate import Balances

    plain = tmp_path / "plain"
    generate(plain, invoices=3, lines=6, resources=5, seed=2)
    assert len(_usage(plain)) == 3  # without the options: the three May snapshots as before
    out = tmp_path / "hist"
    summary = generate(
        out, invoices=3, lines=6, resources=5, seed=2, balances=Balances(months=2, step_hours=4, current_days=5)
    )
    same = {k: v for k, v in files(plain).items() if k != "balance.json"}
    assert same == {k: v for k, v in files(out).items() if k != "balance.json"}  # the invoices are the same bytes
    usage = _usage(out)
    assert summary["balances"] == len(usage) == (31 + 30) * 6 + 4 * 6 + 3  # Mar + Apr, May 1-4, May 5 until 10:07
    assert usage[0] == ("2026-03-01T00:07:00Z", Decimal("0.00"))
    sc = load_scenario(out)
    nets = {}
    for inv in sc.invoices:
        rows = list(csv.DictReader(io.StringIO(sc.csv_bytes(inv["invoice_uuid"]).decode())))
        nets[inv["invoice_period"]] = sum(Decimal(r["USD"].replace("$", "")) for r in rows if r["product"] != "Taxes")
    by_month: dict[str, list[Decimal]] = {}
    for at, value in usage:
        by_month.setdefault(at[:7], []).append(value)
    for month in ("2026-03", "2026-04"):
        values = by_month[month]
        assert values == sorted(values)  # accrual never goes down within a month
        assert nets[month] * Decimal("0.97") < values[-1] <= nets[month]  # 20:07 of the last day: almost all


def test_spike_and_new_products(tmp_path: Path) -> None:
    from sims.generate import NEW_PRODUCTS, Balances, GenerateError

    out = tmp_path / "spike"
    b = Balances(months=1, step_hours=6, current_days=12, spike_day=10, spike_factor=8, new_products=2)
    generate(out, invoices=3, lines=8, resources=5, seed=4, balances=b)
    usage = dict(_usage(out))
    day = lambda d: usage[f"2026-05-{d:02d}T18:07:00Z"] - usage[f"2026-05-{d - 1:02d}T18:07:00Z"]  # noqa: E731
    assert day(10) > 4 * day(9) and day(11) < 3 * day(9)
    sc = load_scenario(out)
    products_by_period = {}
    for inv in sc.invoices:
        rows = csv.DictReader(io.StringIO(sc.csv_bytes(inv["invoice_uuid"]).decode()))
        products_by_period[inv["invoice_period"]] = {r["product"] for r in rows}
    assert set(NEW_PRODUCTS[:2]) <= products_by_period["2026-04"]
    assert not set(NEW_PRODUCTS) & (products_by_period["2026-03"] | products_by_period["2026-02"])
    with pytest.raises(GenerateError):
        generate(tmp_path / "bad", invoices=2, lines=3, resources=1, balances=Balances(months=3))
    with pytest.raises(GenerateError):
        generate(tmp_path / "bad2", invoices=2, lines=3, resources=1, balances=Balances(months=1, spike_day=20))
