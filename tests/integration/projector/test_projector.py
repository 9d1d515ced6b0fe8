"""Projector + HTTP API on the real broker and PostgreSQL: every event type and a dead letter projected and
served by every endpoint; then a replay from offset 0 into empty tables rebuilds identical read models."""

from __future__ import annotations

import threading
from collections.abc import Callable

from fastapi.testclient import TestClient
from pydantic import SecretStr

from services.api import main as api_main
from services.api.cli import mint_token
from services.projector import main as projector
from shared.db import connect
from shared.devinfra import free_port
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
from tests import factories as f
from tests.helpers import dump, wait_until

SECRET = "integration-secret-0123456789abcdef-0123456789abcdef-01234567"
SEEN = {"invoice_id": "42", "description": "Invoice"}  # the invoice as the poller saw it
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
    pub(HISTORY, f.ACCOUNT, f.billing_history_entry(1, A, amount=4110))
    pub(HISTORY, f.ACCOUNT, f.billing_history_entry(2))
    pub(
        INVOICE_DISCOVERED,
        A,
        f.invoice_discovered(invoice_uuid=A, **SEEN, amount_minor=4110),
    )
    pub(
        INVOICE_DISCOVERED,
        B,
        f.invoice_discovered(invoice_uuid=B, **SEEN, period="2026-03-01", amount_minor=999),
    )
    for rid, name in (("1", "web-1"), ("2", "web-2"), ("3", "web-3")):
        pub(
            RESOURCES,
            f"{f.ACCOUNT}:droplet:{rid}",
            f.resource(resource_id=rid, name=name, region="fra1", attributes={"size": "s-1vcpu-1gb"}),
        )
    prod.produce(Out(RESOURCES.name(p), f"{f.ACCOUNT}:droplet:3", None))  # web-3 is gone
    # April, revision 1: 4 droplet lines (web-1, web-2 matched) + GST; the raw lines, the end marker, matched lines.
    lines = [f.cost_line(i, 1000, invoice_uuid=A, billed=True) for i in range(4)] + [
        f.cost_line(4, 110, invoice_uuid=A, is_tax=True, billed=True)
    ]
    for x in lines:
        pub(COST_LINES, A, x)
    pub(COST_LINES, A, f.invoice_end(lines, invoice_uuid=A, revision=1, invoice_id="42", csv_sha256="sha-1"))
    for x in lines:
        pub(COST_LINES_MATCHED, A, f.cost_line_matched(x, str(x.line_index) if x.line_index in (1, 2) else None))
    pub(INVOICE_COMPLETED, A, f.invoice_completed(lines, invoice_uuid=A, revision=1, invoice_id="42", matched_count=2))
    pub(INVOICE_PUSHED, A, f.invoice_pushed(invoice_uuid=A, revision=1))
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
        return dump(c)


def dead_id_partition(s: Settings, dead: dict) -> str:
    """The `<partition>:<offset>` part of a dead letter's id, read back from the read model."""
    with connect(s) as c:
        row = c.execute(
            "SELECT dlq_partition, dlq_offset FROM readmodel.dead_letters WHERE service = %s", [dead["service"]]
        ).fetchone()
    return f"{row['dlq_partition']}:{row['dlq_offset']}"


def test_projector_and_every_endpoint_then_replay_rebuilds_identically(settings: Settings) -> None:
    s = settings.model_copy(update={"api_jwt_secret": SecretStr(SECRET), "api_port": free_port()})
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
        # The dead letter about April (key A) is on its detail; the projector's own one (key: the account) is not.
        [dead] = detail["dead_letters"]
        assert (dead["service"], dead["error_message"], dead["source_offset"]) == ("matcher", "unparseable CSV row", 17)
        assert dead["id"] == f"{COST_LINES.dlq(s.kafka_topic_prefix)}:{dead_id_partition(s, dead)}"
        assert get(f"/api/v1/billing/invoices/{B}")["dead_letters"] == []

        everything = get("/api/v1/billing/dead-letters")
        assert [d["service"] for d in everything["items"]] == ["projector", "matcher"]  # newest first
        assert everything["next_cursor"] is None
        one = get("/api/v1/billing/dead-letters?limit=1")
        more = get(f"/api/v1/billing/dead-letters?limit=1&cursor={one['next_cursor']}")
        assert [d["id"] for d in one["items"] + more["items"]] == [d["id"] for d in everything["items"]]
        assert more["next_cursor"] is None
        history_dlq = get(f"/api/v1/billing/dead-letters?topic={HISTORY.name(s.kafka_topic_prefix)}")["items"]
        assert [d["service"] for d in history_dlq] == ["projector"]
        assert [d["key"] for d in get(f"/api/v1/billing/dead-letters?invoice={A}")["items"]] == [A]
        assert get("/api/v1/billing/dead-letters?since=2999-01-01T00:00:00Z")["items"] == []
        assert (
            client.get("/api/v1/billing/dead-letters?cursor=bogus", headers=headers).status_code == 400
        )  # not issued here
        assert (
            client.get("/api/v1/billing/dead-letters?cursor=a%20b", headers=headers).status_code == 422
        )  # not a cursor
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
