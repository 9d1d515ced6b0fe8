"""The money gates end to end, on both brokers: every service and both simulators as OS processes.

A small account: the April 2026 invoice, an invoice of tax traps, one that is not UTF-8, one with a NUL in a
field, and one whose billing-history amount its CSV never reaches. Then, against the running stack:
- the April CSV arrives cut after a whole row (it parses): held, never in finance, visible with its variance in
  the API, `cloudbill status` and the gauge; once the simulator serves the whole file again, the ingester's
  re-fetch releases it and finance gets 8692;
- the tax traps are split by the one rule; the two bad-byte CSVs are dead-lettered with their reasons and no
  line of them reaches the read models;
- A → B → A (B: one line split in two, the same money) ends with A in finance, three different keys;
- the short invoice stays held until `cloudbill invoices release`, recorded with who and why.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from psycopg.rows import dict_row

from cloudbill.stack import Stack, StackConfig
from shared.auth import mint
from shared.devinfra import free_port
from sims.scenario import APRIL_2026_INVOICE_UUID, SCENARIOS_DIR, items_from_csv, summary_from_items
from tests.conftest import KafkaUnderTest
from tests.helpers import wait_until

APRIL = APRIL_2026_INVOICE_UUID
TRAPS = "7a1d0c1e-0000-4000-8000-000000000001"
LATIN1 = "7a1d0c1e-0000-4000-8000-000000000002"
NUL = "7a1d0c1e-0000-4000-8000-000000000003"
SHORT = "7a1d0c1e-0000-4000-8000-000000000004"
HEADER = "product,group_description,description,hours,start,end,USD,project_name,category\n"
PERIOD = "2026-03-01 00:00:00 +0000,2026-03-31 23:59:59 +0000"
TRAPS_CSV = HEADER + "".join(
    f"{p},,{d},{h},{PERIOD},{a},,iaas\n"
    for p, d, h, a in [
        ("Droplets", "syntax-highlighter (s-1vcpu-1gb)", "720", "$6.00"),  # "tax" inside a name: net
        ("Spaces Subscription", "taxonomy-data", "720", "$5.00"),  # net
        ("Taxes", "VAT (20%)", "", "$2.20"),  # tax (product Taxes; the seed's substring rule said net)
        ("Taxes", "HST", "", "$1.00"),  # tax
        ("Other", "QST (9.975%)", "", "$0.50"),  # tax: named as a word under another product
        ("Credits", "Promotional credit", "", "-$1.00"),  # net, negative
    ]
)
TRAPS_GROSS, TRAPS_TAX = 1370, 370


def _history(uuid_: str, invoice_id: str, amount: str, date: str, month: str) -> dict[str, str]:
    return {
        "description": f"Invoice for {month}",
        "amount": amount,
        "invoice_id": invoice_id,
        "invoice_uuid": uuid_,
        "date": date,
        "type": "Invoice",
    }


def write_scenario(root: Path) -> Path:
    """The small account, in the simulator's scenario format."""
    april_dir = SCENARIOS_DIR / "april-2026"
    d = root / "money-gates"
    (d / "invoices").mkdir(parents=True)
    shutil.copy(april_dir / "balance.json", d / "balance.json")
    shutil.copy(april_dir / "resources.json", d / "resources.json")
    shutil.copy(april_dir / "invoices" / f"{APRIL}.csv", d / "invoices" / f"{APRIL}.csv")
    one = HEADER + f"Droplets,,web-01 (s-1vcpu-1gb),720,{PERIOD},$9.00,,iaas\n"
    (d / "invoices" / f"{TRAPS}.csv").write_text(TRAPS_CSV)
    (d / "invoices" / f"{LATIN1}.csv").write_bytes(one.replace("web-01", "café-01").encode("latin-1"))
    (d / "invoices" / f"{NUL}.csv").write_bytes(one.replace("web-01", "web\x0001").encode())
    (d / "invoices" / f"{SHORT}.csv").write_text(one)
    history = [
        {"description": "Payment (MC 5454)", "amount": "-86.92", "date": "2026-05-02T11:57:37Z", "type": "Payment"},
        _history(APRIL, "9217394", "86.92", "2026-05-01T08:57:37Z", "April 2026"),
        {"description": "Service credit", "amount": "-5.00", "date": "2026-04-11T02:30:00Z", "type": "Credit"},
        _history(TRAPS, "9100001", "13.70", "2026-04-01T08:00:00Z", "March 2026"),
        _history(LATIN1, "9100002", "9.00", "2026-03-01T08:00:00Z", "February 2026"),
        _history(NUL, "9100003", "9.00", "2026-02-01T08:00:00Z", "January 2026"),
        _history(SHORT, "9100004", "10.00", "2026-01-01T08:00:00Z", "December 2025"),  # the CSV says 9.00
    ]
    (d / "billing_history.json").write_text(json.dumps(history, indent=1))
    # DigitalOcean's summary of the traps invoice: its taxes include the QST row under product "Other".
    inv = {"invoice_uuid": TRAPS, "invoice_id": "9100001", "amount": "13.70", "invoice_period": "2026-03"}
    summary = summary_from_items(inv, items_from_csv(TRAPS_CSV.encode())) | {
        "taxes": {"name": "Taxes", "amount": "3.70"}
    }
    (d / "invoices" / f"{TRAPS}.summary.json").write_text(json.dumps(summary))
    return d


# ------------------------------------------------------------------------------------------------ helpers
def api(stack: Stack) -> httpx.Client:
    token = mint(stack.cfg.api_secret, algorithm="HS256", ttl_s=900, claims={"roles": ["platform_admin"]})
    return httpx.Client(
        base_url=f"http://127.0.0.1:{stack.cfg.api_port}", headers={"Authorization": f"Bearer {token}"}, timeout=10
    )


def invoice(stack: Stack, uuid_: str) -> dict[str, Any] | None:
    dead = stack.dead()
    assert not dead, f"{dead[0].name} died:\n{dead[0].tail(60)}"
    with api(stack) as c:
        r = c.get(f"/api/v1/billing/invoices/{uuid_}")
    return r.json() if r.status_code == 200 else None


def status_is(stack: Stack, uuid_: str, status: str, **fields: Any) -> dict[str, Any] | None:
    inv = invoice(stack, uuid_)
    if inv and inv["status"] == status and all(inv.get(k) == v for k, v in fields.items()):
        return inv
    return None


def finance_rows(stack: Stack, uuid_: str) -> list[dict[str, Any]]:
    r = httpx.get(f"http://127.0.0.1:{stack.cfg.finance_port}/api/v1/invoices", params={"external_id": uuid_})
    return r.json()["invoices"]


def do_sim(stack: Stack, method: str, path: str, **kw: Any) -> httpx.Response:
    r = httpx.request(method, f"http://127.0.0.1:{stack.cfg.do_port}{path}", timeout=10, **kw)
    r.raise_for_status()
    return r


def cli(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cloudbill", *args], env=stack.env(), capture_output=True, text=True, timeout=120
    )


def db(stack: Stack, sql: str, *params: Any) -> list[dict[str, Any]]:
    with psycopg.connect(stack.database_url, row_factory=dict_row) as conn:
        return conn.execute(sql, params).fetchall()


@pytest.fixture
def stack(any_kafka: KafkaUnderTest, database_url: str, tmp_path: Path):
    cfg = StackConfig(
        scenario=str(write_scenario(tmp_path)),
        workdir=tmp_path / "stack",
        kafka_bootstrap=any_kafka.bootstrap,
        kafka_flavor=any_kafka.flavor,  # type: ignore[arg-type]
        database_url=database_url,
        topic_prefix=f"mg{uuid.uuid4().hex[:8]}.",
        do_port=free_port(),
        finance_port=free_port(),
        api_port=free_port(),
        extra_env={"HELD_REFETCH_INITIAL_S": "1", "HELD_REFETCH_MAX_S": "3"},
    )
    s = Stack(cfg)
    try:
        yield s.up()
    finally:
        s.stop()


# -------------------------------------------------------------------------------------------------- test
def test_money_gates_end_to_end(stack: Stack) -> None:
    # The April CSV arrives cut after a whole row, again and again, until the simulator is told otherwise.
    april_csv = f"/v2/customers/my/invoices/{APRIL}/csv"
    do_sim(stack, "POST", "/_sim/faults", json={"truncate_csv": 1000, "truncate_mode": "rows", "paths": april_csv})
    stack.poll_now("all")

    # 1. Truncated April: held, never in finance; expected / actual / variance in the API, status and gauge.
    held = wait_until(lambda: status_is(stack, APRIL, "held"), timeout=120, interval=1, what="April held")
    rec = held["reconciliation"]
    assert rec["status"] == "mismatch" and rec["expected_minor"] == 8692
    assert rec["actual_minor"] == held["amount_gross_minor"] < 8692 and rec["difference_minor"] < 0
    assert held["lines_count"] < 33 and "billing history says 8692" in held["hold_reason"]
    with api(stack) as c:
        assert APRIL in [i["invoice_uuid"] for i in c.get("/api/v1/billing/invoices?status=held").json()["items"]]
        metrics = c.get("/metrics").text
    assert "cloudbill_invoices_held" in metrics and f'invoice_uuid="{APRIL}"' in metrics
    report = json.loads(cli(stack, "status", "--json").stdout)
    assert APRIL in [h["invoice_uuid"] for h in report["held"]] and report["invoices"]["held"] >= 1
    assert finance_rows(stack, APRIL) == []

    # 2. The tax traps split by the one rule, pushed: net 1000 + tax 370 = gross 1370.
    traps = wait_until(lambda: status_is(stack, TRAPS, "pushed"), timeout=120, interval=1, what="traps pushed")
    assert (traps["amount_net_minor"], traps["amount_tax_minor"], traps["amount_gross_minor"]) == (1000, 370, 1370)
    assert {ln["description"]: ln["is_tax"] for ln in traps["lines"]} == {
        "syntax-highlighter (s-1vcpu-1gb)": False,
        "taxonomy-data": False,
        "VAT (20%)": True,
        "HST": True,
        "QST (9.975%)": True,
        "Promotional credit": False,
    }
    assert [c["source"] for c in traps["reconciliation"]["checks"]] == [
        "billing_history",
        "invoice_list",
        "summary_amount",
        "summary_taxes",
    ]
    (row,) = finance_rows(stack, TRAPS)
    assert (row["amount_net_minor"], row["amount_tax_minor"], row["amount_gross_minor"]) == (1000, 370, 1370)

    # 3. Not UTF-8, and a NUL in a field: dead-lettered with their reasons; no line of them in the read models.
    def dead_letters() -> dict[str, str]:
        rows = db(
            stack,
            "SELECT record_key, error_message FROM readmodel.dead_letters WHERE record_key = ANY(%s)",
            [LATIN1, NUL],
        )
        return {r["record_key"]: r["error_message"] for r in rows} if len(rows) == 2 else {}

    reasons = wait_until(dead_letters, timeout=60, interval=1, what="bad-byte CSVs dead-lettered")
    assert "not UTF-8: byte 0xE9" in reasons[LATIN1] and "line 2" in reasons[LATIN1]
    assert "NUL (byte 0x00)" in reasons[NUL] and "line 2" in reasons[NUL]
    assert (
        db(stack, "SELECT count(*) AS n FROM readmodel.cost_lines WHERE invoice_uuid = ANY(%s)", [LATIN1, NUL])[0]["n"]
        == 0
    )
    assert invoice(stack, LATIN1)["status"] == invoice(stack, NUL)["status"] == "discovered"

    # 4. The simulator serves the whole April file again: the next re-fetch releases it, finance gets 8692.
    do_sim(stack, "DELETE", "/_sim/faults")
    april = wait_until(
        lambda: status_is(stack, APRIL, "pushed", amount_gross_minor=8692), timeout=120, interval=1, what="April pushed"
    )
    assert april["lines_count"] == 33 and april["amount_tax_minor"] == 790
    assert any(a["action"] == "refetch" and a["actor"] == "ingester" for a in april["actions"])
    (row,) = finance_rows(stack, APRIL)
    assert (row["amount_gross_minor"], row["amount_tax_minor"], row["lines_count"]) == (8692, 790, 33)

    # 5. A → B → A: B splits one line in two (the same money); finance ends with A, three different keys.
    whole = (SCENARIOS_DIR / "april-2026" / "invoices" / f"{APRIL}.csv").read_bytes()
    web = next(ln for ln in whole.split(b"\n") if b"web-01 (s-1vcpu-1gb)" in ln)
    split = web.replace(b"$6.00", b"$4.00") + b"\n" + web.replace(b"web-01", b"web-01b").replace(b"$6.00", b"$2.00")
    do_sim(stack, "PUT", f"/_sim/invoices/{APRIL}/csv", content=whole.replace(web, split))
    assert cli(stack, "invoices", "refetch", APRIL, "--reason", "revised invoice", "--by", "e2e").returncode == 0
    wait_until(lambda: [r["lines_count"] for r in finance_rows(stack, APRIL)] == [34], timeout=120, what="B in finance")
    do_sim(stack, "DELETE", f"/_sim/invoices/{APRIL}/csv")
    assert cli(stack, "invoices", "refetch", APRIL, "--by", "e2e").returncode == 0
    wait_until(lambda: [r["lines_count"] for r in finance_rows(stack, APRIL)] == [33], timeout=120, what="A again")
    (row,) = finance_rows(stack, APRIL)
    assert (row["amount_gross_minor"], row["amount_tax_minor"]) == (8692, 790)
    calls = httpx.get(f"http://127.0.0.1:{stack.cfg.finance_port}/_sim/calls").json()
    april_calls = [c for c in calls["calls"] if c["external_id"] == APRIL]
    assert [c["outcome"] for c in april_calls] == ["created", "updated", "updated"]
    assert len({c["idempotency_key"] for c in april_calls}) == 3

    # 6. A source that never agrees: held until an admin releases it, recorded with who and why.
    short = wait_until(lambda: status_is(stack, SHORT, "held"), timeout=60, interval=1, what="short invoice held")
    assert (short["reconciliation"]["expected_minor"], short["reconciliation"]["actual_minor"]) == (1000, 900)
    assert finance_rows(stack, SHORT) == []
    refused = cli(stack, "invoices", "release", APRIL, "--reason", "x")
    assert refused.returncode == 2 and "not held" in refused.stderr
    done = cli(stack, "invoices", "release", SHORT, "--reason", "credit note for 1.00", "--by", "e2e-admin")
    assert done.returncode == 0, done.stderr

    def released() -> list[tuple[str, str, str]] | None:
        inv = status_is(stack, SHORT, "pushed")  # the release and the push are on two topics: wait for both
        acts = [
            (a["action"], a["actor"], a["reason"]) for a in (inv or {}).get("actions", []) if a["action"] == "release"
        ]
        return acts or None

    acts = wait_until(released, timeout=60, interval=1, what="released, pushed and recorded")
    assert acts == [("release", "e2e-admin", "credit note for 1.00")]
    assert [r["amount_gross_minor"] for r in finance_rows(stack, SHORT)] == [900]

    # Payments and credits are served too.
    with api(stack) as c:
        payments = c.get("/api/v1/billing/history?type=payment").json()["items"]
        credits = c.get("/api/v1/billing/history?type=Credit").json()["items"]
    assert [(p["entry_type"], p["amount_minor"]) for p in payments] == [("Payment", -8692)]
    assert [(x["entry_type"], x["amount_minor"]) for x in credits] == [("Credit", -500)]
