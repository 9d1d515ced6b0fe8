"""Projector + HTTP API on the real broker and PostgreSQL: every event type and a dead letter projected and
served by every endpoint; then a replay from offset 0 into empty tables rebuilds identical read models."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable

import httpx
from fastapi.testclient import TestClient
from pydantic import SecretStr

from services.api import main as api_main
from services.api import projector
from services.api.cli import mint_token
from shared.db import connect
from shared.events import EventData
from shared.kafka import EventProducer, Out, StopSignal, dead_letter
from shared.kafka.records import Record
from shared.settings import Settings
from shared.topics import (
    BALANCE,
    COST_LINES,
    COST_LINES_MATCHED,
    HISTORY,
    INVOICE_COMPLETED,
    INVOICE_DISCOVERED,
    INVOICE_PUSHED,
    RESOURCES,
)
from tests.helpers import wait_until
from tests.integration.api import api_factory as f

SECRET = "integration-secret-0123456789abcdef-0123456789abcdef-01234567"
A, B = "inv-april", "inv-march"


def _start(target: Callable[..., None], *args, **kw) -> tuple[threading.Thread, StopSignal]:
    stop = StopSignal()
    t = threading.Thread(target=target, args=(*args, stop), kwargs=kw, daemon=True)
    t.start()
    return t, stop


def _publish_everything(s: Settings) -> None:
    p, prod = s.kafka_topic_prefix, EventProducer(s, "test")

    def pub(topic, key: str, data: EventData) -> None:
        prod.publish(topic.name(p), key, data, f.ACCOUNT)

    for h, usage in ((0, 100), (1, 150), (2, 230)):
        pub(BALANCE, f.ACCOUNT, f.balance(h, usage))
    pub(HISTORY, f.ACCOUNT, f.history(1, A, amount=4110))
    pub(HISTORY, f.ACCOUNT, f.history(2))
    pub(INVOICE_DISCOVERED, A, f.discovered(A, amount=4110))
    pub(INVOICE_DISCOVERED, B, f.discovered(B, period="2026-03-01", amount=999))
    for rid, name in (("1", "web-1"), ("2", "web-2"), ("3", "web-3")):
        pub(RESOURCES, f"{f.ACCOUNT}:droplet:{rid}", f.resource(rid, name))
    prod.produce(Out(RESOURCES.name(p), f"{f.ACCOUNT}:droplet:3", None))  # web-3 is gone
    # April, revision 1: 4 droplet lines (web-1, web-2 matched) + GST; the raw lines, the end marker, matched lines.
    lines = [f.cost_line(A, 1, i, 1000) for i in range(4)] + [f.cost_line(A, 1, 4, 110, tax=True)]
    for x in lines:
        pub(COST_LINES, A, x)
    pub(COST_LINES, A, f.end(A, 1, lines))
    for x in lines:
        pub(COST_LINES_MATCHED, A, f.matched(x, str(x.line_index) if x.line_index in (1, 2) else None))
    pub(INVOICE_COMPLETED, A, f.completed(A, 1, lines, matched_count=2))
    pub(INVOICE_PUSHED, A, f.pushed(A, 1))
    # Poison the projector must dead-letter itself, and a dead letter another service wrote.
    prod.produce(Out(HISTORY.name(p), f.ACCOUNT, b"{not an event"))
    failed = Record(COST_LINES.name(p), 2, 17, A, b"\xff\xfe", {})
    prod.produce(dead_letter(failed, ValueError("unparseable CSV row"), "matcher"))
    prod.flush()


def _projected(s: Settings) -> bool:
    with connect(s) as c:
        if c.execute("SELECT to_regclass('readmodel.dead_letters') AS t").fetchone()["t"] is None:
            return False  # not migrated yet
        n = c.execute(
            "SELECT (SELECT count(*) FROM readmodel.dead_letters) AS dl,"
            " (SELECT count(*) FROM readmodel.balance_snapshots) AS bal,"
            " (SELECT count(*) FROM readmodel.history_entries) AS hist,"
            " (SELECT count(*) FROM readmodel.resources) AS res,"
            " (SELECT count(*) FROM readmodel.cost_lines WHERE current) AS lines,"
            " (SELECT count(*) FROM readmodel.invoices WHERE status_rank = 4) AS pushed,"
            " (SELECT count(*) FROM readmodel.invoices) AS invoices"
        ).fetchone()
    return n == {"dl": 2, "bal": 3, "hist": 2, "res": 2, "lines": 5, "pushed": 1, "invoices": 2}


def _dump(s: Settings) -> dict:
    with connect(s) as c:
        return f.dump(c)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_projector_and_every_endpoint_then_replay_rebuilds_identically(settings: Settings) -> None:
    s = settings.model_copy(update={"api_jwt_secret": SecretStr(SECRET), "api_port": _free_port()})
    _publish_everything(s)
    thread, stop = _start(projector.run, s)
    try:
        wait_until(lambda: _projected(s), timeout=60, what="read models projected")
    finally:
        stop.set()
        thread.join(30)
    assert not thread.is_alive()
    first = _dump(s)

    headers = {"Authorization": f"Bearer {mint_token(s, ['platform_admin'], 300, 'test')}"}
    with TestClient(api_main.create_app(s)) as client:

        def get(path: str) -> dict:
            r = client.get(path, headers=headers)
            assert r.status_code == 200, (path, r.text)
            return r.json()

        bal = get("/api/v1/billing/balance")
        assert (bal["month_to_date_usage_minor"], bal["month_to_date_usage"]) == (230, "2.30")
        hist = get("/api/v1/billing/balance/history?from=2026-05-01T08:30:00Z")["snapshots"]
        assert [x["month_to_date_usage_minor"] for x in hist] == [150, 230]

        page = get("/api/v1/billing/cost-lines?period=2026-04-01&limit=2")
        assert [x["line_index"] for x in page["items"]] == [0, 1] and page["next_cursor"]
        rest = get(f"/api/v1/billing/cost-lines?period=2026-04-01&cursor={page['next_cursor']}")
        assert [x["line_index"] for x in rest["items"]] == [2, 3, 4] and rest["next_cursor"] is None
        by_index = {x["line_index"]: x for x in page["items"] + rest["items"]}
        assert by_index[1]["resource_id"] == "1" and by_index[1]["kind"] == "droplet"
        assert by_index[0]["resource_id"] is None and by_index[0]["unmatched_reason"] == "no_such_resource"
        assert by_index[4]["is_tax"] and by_index[4]["unmatched_reason"] == "tax_line"
        droplets = get("/api/v1/billing/cost-lines?period=2026-04-01&kind=droplet")["items"]
        assert len(droplets) == 4
        assert get("/api/v1/billing/cost-lines?period=2026-03-01")["items"] == []

        invoices = get("/api/v1/billing/invoices")["items"]
        assert [x["invoice_uuid"] for x in invoices] == [A, B]
        april = invoices[0]
        assert april["status"] == "pushed" and april["finance_invoice_id"] == f"fin-{A}"
        assert (april["amount_minor"], april["amount_gross_minor"], april["amount_tax_minor"]) == (4110, 4110, 110)
        assert (april["lines_count"], april["matched_count"], april["reconciled"]) == (5, 2, True)
        assert invoices[1]["status"] == "discovered" and invoices[1]["lines_count"] is None
        assert [x["invoice_uuid"] for x in get("/api/v1/billing/invoices?status=discovered")["items"]] == [B]
        assert [x["invoice_uuid"] for x in get("/api/v1/billing/invoices?period=2026-04-01")["items"]] == [A]
        first_page = get("/api/v1/billing/invoices?limit=1")
        second = get(f"/api/v1/billing/invoices?limit=1&cursor={first_page['next_cursor']}")
        assert [x["invoice_uuid"] for x in second["items"]] == [B] and second["next_cursor"] is None

        detail = get(f"/api/v1/billing/invoices/{A}")
        assert len(detail["lines"]) == 5 and detail["revision"] == 1
        assert client.get("/api/v1/billing/invoices/nope", headers=headers).status_code == 404

        unmatched = get("/api/v1/billing/unmatched?period=2026-04-01")
        assert unmatched["total_minor"] == {"USD": 2110}
        assert {(g["reason"], g["kind"], g["lines_count"]) for g in unmatched["groups"]} == {
            ("no_such_resource", "droplet", 2),
            ("tax_line", None, 1),
        }
        assert client.get("/api/v1/billing/balance").status_code == 401
        ready = client.get("/readyz")
        assert ready.status_code == 200, ready.text

    with connect(s) as c:
        dls = c.execute("SELECT * FROM readmodel.dead_letters ORDER BY service").fetchall()
        res = c.execute("SELECT resource_id FROM readmodel.resources ORDER BY 1").fetchall()
    assert [r["resource_id"] for r in res] == ["1", "2"]
    assert [(d["service"], d["source_topic"]) for d in dls] == [
        ("matcher", COST_LINES.name(s.kafka_topic_prefix)),
        ("projector", HISTORY.name(s.kafka_topic_prefix)),
    ]
    assert dls[0]["source_offset"] == 17 and dls[0]["error_message"] == "unparseable CSV row"
    assert dls[0]["error_class"] == "builtins.ValueError" and dls[0]["failed_at"] is not None
    assert "EventDecodeError" in dls[1]["error_class"]

    # Replay: empty tables, a new consumer group from offset 0, the same read models.
    with connect(s, autocommit=True) as c:
        c.execute("DROP SCHEMA readmodel CASCADE")
    thread, stop = _start(projector.run, s, group=s.kafka_topic_prefix + "projector-replay")
    try:
        wait_until(lambda: _projected(s) and _dump(s) == first, timeout=60, what="identical rebuild")
    finally:
        stop.set()
        thread.join(30)


def test_cloudbill_run_api_serves_until_stopped(settings: Settings) -> None:
    s = settings.model_copy(update={"api_jwt_secret": SecretStr(SECRET), "api_port": _free_port()})
    thread, stop = _start(api_main.run, s)
    try:
        base = f"http://127.0.0.1:{s.api_port}"

        def up() -> bool:
            try:
                return httpx.get(base + "/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(up, timeout=30, what="api up")
        assert httpx.get(base + "/readyz", timeout=5).status_code == 200
        r = httpx.get(base + "/api/v1/billing/balance", headers={"Authorization": "Bearer x"}, timeout=5)
        assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
        token = mint_token(s, ["platform_admin"], 60, "t")
        r = httpx.get(base + "/api/v1/billing/balance", headers={"Authorization": f"Bearer {token}"}, timeout=5)
        assert r.status_code == 404  # no snapshot yet, but authorized and the schema exists
    finally:
        stop.set()
        thread.join(30)
    assert not thread.is_alive()
