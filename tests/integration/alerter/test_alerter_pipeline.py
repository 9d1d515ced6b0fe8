"""A generated scenario with a usage spike, through the DigitalOcean simulator, the poller, the alerter and the
projector, to a test webhook receiver: exactly one anomaly alert (the spike day), the budget thresholds each
crossed once per month on actual and forecast, across a restart and a second alerter replaying everything at
the same time; every alert once on billing.alerts.v1, once in the API, and delivered once (signed) to the
webhook after its first answers failed."""

from __future__ import annotations

import csv
import hashlib
import hmac
import io
import json
import threading
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from fastapi import FastAPI, Request, Response
from fastapi.testclient import TestClient
from pydantic import SecretStr

from services.alerter import main as alerter_main
from services.alerter.domain import threshold_amount
from services.api import main as api_main
from services.api.cli import mint_token
from services.poller import main as poller_main
from services.projector import main as projector
from shared.db import connect
from shared.forecast import Snapshot, backtest, daily_usage, forecast, month_start
from shared.kafka import StopSignal
from shared.kafka.admin import group_lag
from shared.settings import Settings
from shared.topics import ALERTS, BALANCE, group_id
from sims.do.app import create_app as do_app
from sims.generate import Balances, generate
from sims.scenario import load_scenario
from sims.server import run_in_thread
from tests.helpers import read_all, wait_until

pytestmark = pytest.mark.integration

WEBHOOK_SECRET = "whsec-test-0123456789abcdef"
API_SECRET = "alerts-api-secret-0123456789abcdef-0123456789abcdef-0123456789ab"
THRESHOLDS = (50, 80, 100)


class Receiver:
    """A webhook endpoint that answers 503 to its first `fail_first` calls and checks every signature."""

    def __init__(self, fail_first: int) -> None:
        self.fail_first = fail_first
        self.calls = 0
        self.delivered: list[dict] = []
        self.bad_signatures = 0
        self.lock = threading.Lock()
        self.app = FastAPI()

        @self.app.post("/hook")
        async def hook(request: Request) -> Response:
            body = await request.body()
            ts = request.headers.get("x-cloudbill-timestamp", "")
            want = "sha256=" + hmac.new(WEBHOOK_SECRET.encode(), ts.encode() + b"." + body, hashlib.sha256).hexdigest()
            with self.lock:
                self.calls += 1
                if not hmac.compare_digest(want, request.headers.get("x-cloudbill-signature", "")):
                    self.bad_signatures += 1
                    return Response(status_code=401)
                if self.calls <= self.fail_first:
                    return Response(status_code=503)
                payload = json.loads(body)
                assert payload["cloudbill"]["alert_id"] == request.headers["x-cloudbill-alert-id"]
                assert payload["text"]
                self.delivered.append(payload)
            return Response(status_code=200)


def _snapshots(scenario_dir: Path) -> list[Snapshot]:
    raw = json.loads((scenario_dir / "balance.json").read_text())
    return [
        Snapshot(
            datetime.fromisoformat(b["generated_at"].replace("Z", "+00:00")),
            int(Decimal(b["month_to_date_usage"]) * 100),
        )
        for b in raw
    ]


def _invoice_nets(scenario_dir: Path) -> dict[date, int]:
    sc = load_scenario(scenario_dir)
    out = {}
    for inv in sc.invoices:
        rows = csv.DictReader(io.StringIO(sc.csv_bytes(inv["invoice_uuid"]).decode()))
        net = sum(int(Decimal(r["USD"].replace("$", "")) * 100) for r in rows if r["product"] != "Taxes")
        out[date.fromisoformat(inv["invoice_period"] + "-01")] = net
    return out


def _expected_budget_alerts(snaps: list[Snapshot], budget: int, min_days: int) -> set[tuple[str, str, int]]:
    """(kind, period, threshold): actual from each month's highest month-to-date (plain arithmetic); forecast from
    shared/forecast.py at every snapshot (its math is unit-tested; here the plumbing is)."""
    out: set[tuple[str, str, int]] = set()
    for i, s in enumerate(snaps):
        period = month_start(s.at)
        for pct in THRESHOLDS:
            if s.mtd_usage_minor >= threshold_amount(budget, pct):
                out.add(("budget_actual", period.isoformat(), pct))
        start = datetime(period.year, period.month, 1, tzinfo=UTC)
        prev = [x for x in snaps[:i] if start - timedelta(days=2) <= x.at < start]
        fc = forecast(snaps[: i + 1], previous_month_total_minor=prev[-1].mtd_usage_minor if prev else None)
        days = [d for d in daily_usage(snaps[: i + 1]) if d >= period]
        if fc is None or len(days) < min_days:
            continue
        for pct in THRESHOLDS:
            if fc.forecast_minor >= threshold_amount(budget, pct):
                out.add(("budget_forecast", period.isoformat(), pct))
    return out


def test_spike_scenario_raises_one_anomaly_and_the_budget_thresholds_once_each(
    settings: Settings, tmp_path: Path
) -> None:
    scenario = tmp_path / "spike"
    generate(
        scenario,
        invoices=4,
        lines=12,
        resources=20,
        seed=11,
        balances=Balances(months=3, step_hours=6, current_days=14, spike_day=10, spike_factor=6),
    )
    snaps = _snapshots(scenario)
    nets = _invoice_nets(scenario)
    may = max(x.mtd_usage_minor for x in snaps if x.at >= datetime(2026, 5, 1, tzinfo=UTC))
    budget = may * 10 // 6  # May (spike included) ends its 14 days at 60% of the budget
    receiver = Receiver(fail_first=2)
    do = run_in_thread(do_app(load_scenario(scenario)))
    hook = run_in_thread(receiver.app)
    s = settings.model_copy(
        update={
            "digitalocean_api_url": do.url,
            "digitalocean_token": SecretStr("dop_v1_" + "cd" * 32),
            "api_jwt_secret": SecretStr(API_SECRET),
            "budgets": {"default": f"{Decimal(budget) / 100:.2f}"},
            "alert_thresholds": list(THRESHOLDS),
            "alert_webhook_url": SecretStr(f"{hook.url}/hook"),
            "alert_webhook_secret": SecretStr(WEBHOOK_SECRET),
            "alert_webhook_backoff_s": 0.2,
            "alert_webhook_max_backoff_s": 1.0,
        }
    )
    replay_group = group_id(s, "alerter") + ".replica"
    threads: list[tuple[threading.Thread, StopSignal]] = []

    def start(target: Callable[..., None], **kw: object) -> StopSignal:
        stop = StopSignal()
        t = threading.Thread(target=target, args=(s, stop), kwargs=kw, daemon=True)
        t.start()
        threads.append((t, stop))
        return stop

    def caught_up(group: str) -> bool:
        lags = group_lag(s, group, [BALANCE.name(s.kafka_topic_prefix)])
        return bool(lags) and sum(x.lag for x in lags) == 0 and all(x.committed is not None for x in lags)

    poller, close = poller_main.build(s)
    try:
        start(projector.run)
        first = start(alerter_main.run)
        half = len(snaps) // 2
        results = [r for _ in range(half) for r in poller.poll("balance")]
        wait_until(lambda: caught_up(group_id(s, "alerter")), timeout=120, what="alerter read the first half")
        first.set()  # a restart: the same group goes on where it stopped
        threads[-1][0].join(30)
        start(alerter_main.run)
        start(alerter_main.run, group=replay_group)  # and a replica replaying everything at the same time
        results += [r for _ in range(len(snaps) - half) for r in poller.poll("balance")]
        assert not [r for r in results if r.failed] and len(results) == len(snaps)
        for g in (group_id(s, "alerter"), replay_group):
            wait_until(lambda g=g: caught_up(g), timeout=180, what=f"{g} caught up")

        with connect(s) as conn:
            rows = conn.execute("SELECT alert_id, kind, period, event FROM alerter.alerts ORDER BY seq").fetchall()
        wait_until(lambda: len(receiver.delivered) >= len(rows), timeout=60, what="every alert delivered")
    finally:
        close()
        for _, stop in threads:
            stop.set()
        for t, _ in threads:
            t.join(30)
        do.stop()

    events = {r["alert_id"]: r["event"] for r in rows}
    anomalies = [e for e in events.values() if e["kind"].startswith("anomaly")]
    assert [(a["kind"], a["subject"]) for a in anomalies] == [("anomaly_daily_spike", "2026-05-10")]
    got = {(e["kind"], e["period"], e["threshold_pct"]) for e in events.values() if e["kind"].startswith("budget")}
    expected = _expected_budget_alerts(snaps, budget, s.alert_forecast_min_days)
    assert got == expected
    assert {("budget_actual", "2026-05-01", 50), ("budget_forecast", "2026-05-01", 100)} <= got  # the spiky month

    # Once on the topic, once at the webhook (two 503s first, then retried), once in the API.
    records = read_all(s, ALERTS.name(s.kafka_topic_prefix))
    ids = [rec.event()[1].alert_id for rec in records]
    assert sorted(ids) == sorted(events)  # one record per alert, whichever replica raised it
    assert len({rec.event()[0].event_id for rec in records}) == len(records)
    delivered = [p["cloudbill"]["alert_id"] for p in receiver.delivered]
    assert sorted(delivered) == sorted(events) and receiver.bad_signatures == 0 and receiver.calls == len(events) + 2
    with connect(s) as conn:
        states = conn.execute("SELECT webhook_state, count(*) AS n FROM alerter.alerts GROUP BY 1").fetchall()
    assert {r["webhook_state"]: r["n"] for r in states} == {"delivered": len(events)}

    headers = {"Authorization": f"Bearer {mint_token(s, ['platform_admin'], 300, 'alerts')}"}
    with TestClient(api_main.create_app(s)) as client:
        wait_until(
            lambda: (
                len(client.get("/api/v1/billing/alerts?limit=1000", headers=headers).json()["items"]) == len(events)
            ),
            timeout=60,
            what="alerts projected",
        )
        served = client.get("/api/v1/billing/alerts?limit=1000", headers=headers).json()["items"]
        assert {a["alert_id"] for a in served} == set(events)
        spike = client.get("/api/v1/billing/alerts?kind=anomaly_daily_spike", headers=headers).json()["items"]
        assert [a["subject"] for a in spike] == ["2026-05-10"]
        fc = client.get("/api/v1/billing/forecast?account=default", headers=headers).json()["accounts"][0]
        assert fc["period"] == "2026-05-01" and fc["basis"] == "trailing_days" and fc["budget_minor"] == budget
        assert [m["period"] for m in fc["accuracy"]] == ["2026-02-01", "2026-03-01", "2026-04-01"]
        metrics = client.get("/metrics").text
        assert "cloudbill_invoices" in metrics or "cloudbill_dead_letters" in metrics

    # The forecast's measured error on the scenario's past months, against their invoices (printed for the record).
    for m in backtest(snaps, nets):
        print(
            f"forecast error {m.period:%Y-%m} (actual {m.actual_minor / 100:.2f}, {m.actual_source}): "
            + ", ".join(f"day {c.day} {c.error_pct:+}%" for c in m.checkpoints)
            + f"; mean |error| {m.mean_abs_error_pct}%"
        )
