"""The original system's own verification, end to end, with every service as a separate OS process.

- 137 invoices discovered back to 2014;
- April 2026: 33 lines, 6 matched, $86.92;
- one finance row: gross 8692, tax 790, source digitalocean, tenant platform-admin; vendor DigitalOcean
  (category cloud) auto-created;
- the whole cycle again: no duplicate. In the same deployment the unchanged invoice is not pushed again
  (the pusher's ledger); a fresh deployment (new topics, new database) against the same finance service gets
  "updated", not "created" — and finance still has exactly one row.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx
import pytest

from cloudbill.stack import Stack, StackConfig
from shared.auth import mint
from shared.devinfra import free_port
from shared.events import decode
from shared.topics import INVOICE_PUSHED
from sims.scenario import APRIL_2026_INVOICE_UUID
from tests.conftest import KafkaUnderTest
from tests.helpers import read_all, wait_until

APRIL = APRIL_2026_INVOICE_UUID


def _api(stack: Stack) -> httpx.Client:
    token = mint(stack.cfg.api_secret, algorithm="HS256", ttl_s=600, claims={"roles": ["platform_admin"]})
    return httpx.Client(
        base_url=f"http://127.0.0.1:{stack.cfg.api_port}", headers={"Authorization": f"Bearer {token}"}, timeout=10
    )


def _all_invoices(api: httpx.Client) -> list[dict]:
    out, cursor = [], None
    while True:
        params = {"limit": 100} | ({"cursor": cursor} if cursor else {})
        page = api.get("/api/v1/billing/invoices", params=params).json()
        out += page["items"]
        cursor = page.get("next_cursor")
        if not cursor:
            return out


def _pushed(stack: Stack) -> list[tuple[str, str]]:
    s = stack.settings()
    return [
        (d.invoice_uuid, d.action)
        for r in read_all(s, INVOICE_PUSHED.name(s.kafka_topic_prefix))
        for _, d in [decode(r.value)]
    ]


def _run_cycle(stack: Stack, timeout: float = 240) -> dict:
    stack.poll_now("all")
    api = _api(stack)

    def april_pushed() -> dict | None:
        dead = stack.dead()
        assert not dead, f"{dead[0].name} died:\n{dead[0].tail(60)}"
        r = api.get(f"/api/v1/billing/invoices/{APRIL}")
        return r.json() if r.status_code == 200 and r.json()["status"] == "pushed" else None

    return wait_until(april_pushed, timeout=timeout, interval=1, what="April 2026 invoice pushed")


@pytest.fixture
def stack_factory(any_kafka: KafkaUnderTest, postgres_server: str, tmp_path: Path):
    """Stacks on Apache Kafka and on the embedded broker (what `make demo` uses by default)."""
    kafka = any_kafka
    stacks: list[Stack] = []
    ports = {"do_port": free_port(), "finance_port": free_port()}
    secrets = {"finance_secret": uuid.uuid4().hex * 2, "api_secret": uuid.uuid4().hex * 2}

    def make(database_url: str, *, start_sims: bool) -> Stack:
        cfg = StackConfig(
            workdir=tmp_path / f"stack{len(stacks)}",
            kafka_bootstrap=kafka.bootstrap,
            kafka_flavor=kafka.flavor,
            database_url=database_url,
            topic_prefix=f"e2e{uuid.uuid4().hex[:8]}.",
            api_port=free_port(),
            start_sims=start_sims,
            **ports,
            **secrets,
        )
        stack = Stack(cfg)
        stacks.append(stack)
        return stack.up()

    yield make
    for s in reversed(stacks):
        s.stop()


def test_original_acceptance_end_to_end(stack_factory, database_url: str, postgres_server: str) -> None:
    first = stack_factory(database_url, start_sims=True)
    april = _run_cycle(first)

    # 137 invoices discovered, going back to 2014.
    api = _api(first)
    invoices = wait_until(lambda: (inv := _all_invoices(api)) and len(inv) >= 137 and inv, what="137 invoices")
    assert len(invoices) == 137
    assert min(i["period"] for i in invoices) < "2015-01-01"

    # April 2026: 33 lines, 6 matched, $86.92.
    assert april["lines_count"] == 33
    assert april["matched_count"] == 6
    assert (april["amount_net_minor"], april["amount_tax_minor"], april["amount_gross_minor"]) == (7902, 790, 8692)
    detail_lines = april.get("lines") or []
    assert len(detail_lines) == 33
    assert sum(1 for line in detail_lines if line["still_exists"]) == 6  # the seed's figure: current resources

    # One finance row, vendor auto-created.
    fin = httpx.Client(base_url=f"http://127.0.0.1:{first.cfg.finance_port}", timeout=10)
    rows = [r for r in fin.get("/api/v1/invoices").json()["invoices"] if r["external_id"] == APRIL]
    assert len(rows) == 1
    row = rows[0]
    assert (row["amount_gross_minor"], row["amount_tax_minor"]) == (8692, 790)
    assert (row["source"], row["tenant_id"]) == ("digitalocean", "platform-admin")
    vendors = fin.get("/api/v1/vendors").json()["vendors"]
    assert [(v["name"], v["category"]) for v in vendors] == [("DigitalOcean", "cloud")]
    assert (APRIL, "created") in _pushed(first)

    # The whole cycle again, same deployment: nothing new is pushed for the unchanged invoice.
    first.poll_now("all")
    wait_until(lambda: len(_pushed(first)) >= 137, timeout=120, what="every invoice pushed")
    assert [p for p in _pushed(first) if p[0] == APRIL] == [(APRIL, "created")]

    # The whole pipeline again from scratch (new topics, new cloudbill database), same finance service:
    # finance answers "updated", not "created", and still holds exactly one row.
    import psycopg

    from shared.devinfra import url_with_database

    name = f"e2e_again_{uuid.uuid4().hex[:6]}"
    with psycopg.connect(postgres_server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    second = stack_factory(url_with_database(postgres_server, name), start_sims=False)
    _run_cycle(second)
    assert (APRIL, "updated") in _pushed(second)
    rows = [r for r in fin.get("/api/v1/invoices").json()["invoices"] if r["external_id"] == APRIL]
    assert len(rows) == 1
    assert rows[0]["update_count"] >= 1
    assert len(fin.get("/api/v1/invoices").json()["invoices"]) == 137
