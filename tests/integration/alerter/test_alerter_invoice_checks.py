"""New products and resources, read from the read model's attributed lines, alerted once (PostgreSQL only).

Two invoices are projected the projector's way (ReadModelWriter): March with Droplets, April adding GPU
Droplets at a third of the net and a new droplet. The April check waits while the read model does not serve
its revision, then raises one new-product and one new-resource alert; a second raiser (another replica,
or a replay) and a re-run raise nothing more.
"""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from services.alerter.adapters import AlertStore, InvoiceCheck, InvoiceCosts
from services.alerter.handler import Raiser, Sweeper
from services.projector.domain import Completed, LineMatched
from services.projector.store import ReadModelWriter
from shared.db import connect, make_pool, migrate
from shared.events import BillingAlert, CostLineMatched
from shared.settings import Settings
from tests.factories import cost_line, invoice_completed
from tests.helpers import proven

pytestmark = pytest.mark.integration


def _line(uuid: str, i: int, product: str, name: str | None, amount: int, rid: str | None) -> LineMatched:
    line = cost_line(
        i, amount, invoice_uuid=uuid, product=product, description=f"{name} (s-1vcpu-1gb)", is_tax=product == "Taxes"
    )
    kind = None if product in ("Taxes", "GPU Droplets") else "droplet"
    m = CostLineMatched(
        line=line, kind=kind, name=name if kind else None, resource_id=rid, rule="kind_name" if rid else None
    )
    return LineMatched("default", f"{uuid}-{i}", m)


def _invoice(uuid: str, period: str, lines: list[tuple[str, str | None, int, str | None]]) -> list:
    changes = [_line(uuid, i, *spec) for i, spec in enumerate(lines)]
    gross = sum(spec[2] for spec in lines)
    tax = sum(spec[2] for spec in lines if spec[0] == "Taxes")
    done = invoice_completed(
        invoice_uuid=uuid,
        invoice_id=uuid[-4:],
        period=period,
        line_count=len(lines),
        matched_count=0,
        amount_net_minor=gross - tax,
        amount_tax_minor=tax,
        amount_gross_minor=gross,
        reconciliation=proven(gross, tax),
    )
    return [*changes, Completed("default", f"{uuid}-done", done, date.fromisoformat(period))]


def test_new_product_and_resource_alert_once_after_the_read_model_serves_the_lines(database_url: str) -> None:
    settings = Settings(database_url=database_url)
    migrate(settings, ["readmodel", "alerter"])
    march = _invoice("inv-march", "2026-03-01", [("Droplets", "web-01", 6000, "1"), ("Taxes", None, 600, None)])
    april = _invoice(
        "inv-april",
        "2026-04-01",
        [
            ("Droplets", "web-01", 6000, "1"),
            ("Droplets", "big-02", 2500, None),
            ("GPU Droplets", None, 4500, None),
            ("Droplets", "tiny-03", 300, None),
            ("Taxes", None, 1330, None),
        ],
    )
    pool = make_pool(settings, name="alerter-test")
    published: list[BillingAlert] = []
    try:
        store = AlertStore(pool)
        raiser = Raiser(store, lambda _acc, alerts: published.extend(alerts), webhook=False, wake=lambda: None)
        sweeper = Sweeper(settings, store, InvoiceCosts(pool), raiser, None)
        with connect(settings, autocommit=True) as conn, conn.transaction():
            ReadModelWriter(conn).apply(march)
        store.queue_invoice_check(
            InvoiceCheck("inv-april", 1, "default", date(2026, 4, 1), date(2026, 5, 1), 13300, "USD")
        )
        sweeper.check_invoices()
        assert published == []  # April's lines are not served yet: the check waits
        assert [c.invoice_uuid for c in store.pending_invoice_checks()] == ["inv-april"]

        with connect(settings, autocommit=True) as conn, conn.transaction():
            ReadModelWriter(conn).apply(april)
        sweeper.check_invoices()
        got = {(a.kind, a.subject): a for a in published}
        assert set(got) == {("anomaly_new_product", "GPU Droplets"), ("anomaly_new_resource", "droplet:big-02")}
        assert got[("anomaly_new_product", "GPU Droplets")].observed_minor == 4500
        assert got[("anomaly_new_product", "GPU Droplets")].detected_at == datetime(2026, 5, 1, tzinfo=UTC)
        assert store.pending_invoice_checks() == []

        # Another replica (or a replay) checking the same revision again finds the same alerts, raises none.
        check = InvoiceCheck("inv-april", 1, "default", date(2026, 4, 1), date(2026, 5, 1), 13300, "USD")
        store.queue_invoice_check(check)
        other = Raiser(store, lambda _acc, alerts: published.extend(alerts), webhook=False, wake=lambda: None)
        again = Sweeper(settings, store, InvoiceCosts(pool), other, None)
        assert {a.alert_id for a in again.invoice_alerts(check)} == {a.alert_id for a in published}
        assert other.raise_("default", again.invoice_alerts(check)) == []
        again.check_invoices()
        assert len(published) == 2
        with connect(settings) as conn:
            rows = conn.execute(
                "SELECT kind, published_at IS NOT NULL AS published, webhook_state FROM alerter.alerts"
            ).fetchall()
        assert sorted(r["kind"] for r in rows) == ["anomaly_new_product", "anomaly_new_resource"]
        assert all(r["published"] and r["webhook_state"] == "disabled" for r in rows)
    finally:
        pool.close()


def test_cli_exports_the_period_as_focus_csv_and_parquet(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`cloudbill export focus` on the same kind of read model: every served line, sums per InvoiceId exact."""
    import pyarrow.parquet as pq
    from typer.testing import CliRunner

    from cloudbill.cli import app
    from shared.settings import get_settings

    settings = Settings(database_url=database_url)
    migrate(settings, ["readmodel"])
    with connect(settings, autocommit=True) as conn, conn.transaction():
        ReadModelWriter(conn).apply(
            _invoice("inv-a", "2026-04-01", [("Droplets", "web-01", 6000, "1"), ("Taxes", None, 600, None)])
            + _invoice("inv-b", "2026-04-01", [("GPU Droplets", None, 4501, None), ("Credits", None, -1, None)])
            + _invoice("inv-c", "2026-03-01", [("Droplets", "web-01", 6000, "1")])
        )
    monkeypatch.setenv("DATABASE_URL", database_url)
    get_settings.cache_clear()
    try:
        runner = CliRunner()
        res = runner.invoke(app, ["export", "focus", "--period", "2026-04", "--out", str(tmp_path / "f.csv")])
        assert res.exit_code == 0, res.output
        rows = list(csv.DictReader(io.StringIO((tmp_path / "f.csv").read_text())))
        sums: dict[str, Decimal] = {}
        for r in rows:
            sums[r["InvoiceId"]] = sums.get(r["InvoiceId"], Decimal(0)) + Decimal(r["BilledCost"])
        assert sums == {"nv-a": Decimal("66.00"), "nv-b": Decimal("45.00")}  # invoice ids: the uuids' last 4
        assert sorted(r["ChargeCategory"] for r in rows) == ["Credit", "Tax", "Usage", "Usage"]
        res = runner.invoke(
            app, ["export", "focus", "--period", "2026-04", "--format", "parquet", "--out", str(tmp_path / "f.parquet")]
        )
        assert res.exit_code == 0, res.output
        assert sum(pq.read_table(tmp_path / "f.parquet").column("BilledCost").to_pylist()) == Decimal("111.00")
        assert runner.invoke(app, ["export", "focus", "--period", "April", "--out", "-"]).exit_code == 2
        res = runner.invoke(app, ["forecast", "--json"])
        assert res.exit_code == 0 and json.loads(res.output) == {"accounts": []}  # no balance polled yet
    finally:
        get_settings.cache_clear()
