"""The commit verifier on both real brokers, real Postgres and the DigitalOcean simulator, at account size.

The loss it repairs is made exactly as the broker made it: the ingester's handler emits a revision, its records
go into a Kafka transaction that is aborted, and the ledger is told the commit succeeded (what a broker restart
between PrepareCommit and the partition's COMMIT marker, then the producer's `init_transactions`, did to a CI run).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from confluent_kafka import Producer
from psycopg.rows import dict_row

from cloudbill.status import unverified_revisions
from services.ingester import main
from services.ingester.handler import IngestHandler
from services.ingester.ledger import Ledger
from services.ingester.verify import CommitVerifier
from shared.db import make_pool, migrate
from shared.events import InvoiceEnd, decode, encode
from shared.kafka import Record, StopSignal, create_topics
from shared.kafka.admin import high_watermarks
from shared.kafka.config import producer_config
from shared.kafka.records import produce_out
from shared.settings import Settings
from shared.topics import COST_LINES, INVOICE_DISCOVERED
from sims.do.app import create_app
from sims.generate import generate
from sims.server import run_in_thread
from tests.conftest import KafkaUnderTest, settings_for
from tests.helpers import read_all, wait_until
from tests.integration.ingester.support import ACCOUNT, discovered_events, publish, running

INVOICES, LINES = 40, 250  # 10,000 lines, plus the lost invoice's


@pytest.fixture
def account(tmp_path: Path) -> Path:
    out = tmp_path / "account"
    generate(out, invoices=INVOICES + 1, lines=LINES, resources=40, seed=7)
    return out


@pytest.fixture
def verify_settings(
    any_kafka: KafkaUnderTest, topic_prefix: str, database_url: str, account: Path
) -> Iterator[Settings]:
    server = run_in_thread(create_app(account))
    try:
        yield settings_for(
            any_kafka,
            topic_prefix,
            database_url=database_url,
            digitalocean_api_url=server.url,
            digitalocean_token="dop_v1_" + "0123456789abcdef" * 4,
            ingester_verify_interval_s=0.5,
        )
    finally:
        server.stop()


def lose_after_commit(s: Settings, ledger: Ledger, rec: Record) -> int:
    """Emit `rec`'s revision into a transaction that is aborted, then tell the ledger it committed."""
    stop = StopSignal()
    clients = main.do_clients(s, stop)
    try:
        handler = IngestHandler(s, ledger, clients.get, known_accounts=sorted(clients))
        outs = handler.transform(rec)
    finally:
        for c in clients.values():
            c.close()
    assert len(outs) == LINES + 1
    p = Producer(producer_config(s, "test-lost", transactional_id=f"{s.kafka_topic_prefix}lost"))
    p.init_transactions(30)
    p.begin_transaction()
    for o in outs:
        produce_out(p, o)
    assert p.flush(30) == 0
    p.abort_transaction(30)
    handler.after_commit(rec)  # what the ingester did when commit_transaction returned
    [row] = ledger.revisions(rec.key or "")
    assert row["state"] == "committed" and row["verified_at"] is None
    return int(row["revision"])


def ledger_state(s: Settings) -> dict[str, dict[str, Any]]:
    with psycopg.connect(s.database_url, row_factory=dict_row) as conn:
        rows = conn.execute(
            "SELECT invoice_uuid, revision, state, verified_at, reemits, line_count FROM ingester.invoice_revisions"
        ).fetchall()
    return {r["invoice_uuid"]: r for r in rows}


def readable_markers(s: Settings) -> dict[str, list[tuple[int, str]]]:
    """Per invoice: (revision, event id) of each end marker a read_committed reader gets."""
    out: dict[str, list[tuple[int, str]]] = {}
    for r in read_all(s, COST_LINES.name(s.kafka_topic_prefix), timeout=60):
        env, data = decode(r.value)
        if isinstance(data, InvoiceEnd):
            out.setdefault(data.invoice_uuid, []).append((data.revision, env.event_id))
    return out


def test_a_revision_aborted_after_its_commit_is_emitted_again_and_no_other_is(
    verify_settings: Settings, account: Path, any_kafka: KafkaUnderTest
) -> None:
    s = verify_settings
    migrate(s, ["ingester"])
    create_topics(s)
    events = list(discovered_events(account).values())
    assert len(events) == INVOICES + 1
    lost = events[0]
    pool = make_pool(s, name="verify-test")
    try:
        ledger = Ledger(pool)
        ledger.remember(ACCOUNT, lost)
        rec = Record(INVOICE_DISCOVERED.name(s.kafka_topic_prefix), 0, 0, lost.invoice_uuid, encode(lost, ACCOUNT))
        revision = lose_after_commit(s, ledger, rec)

        # Until the verifier runs, the loss is visible in `cloudbill status` once a minute old.
        with psycopg.connect(s.database_url, row_factory=dict_row) as conn:
            assert unverified_revisions(conn) == []
            conn.execute(
                "UPDATE ingester.invoice_revisions SET committed_at = committed_at - %s", (timedelta(minutes=2),)
            )
            [shown] = unverified_revisions(conn)
        assert (shown["invoice_uuid"], shown["revision"], shown["reemits"]) == (lost.invoice_uuid, revision, 0)
        assert shown["age_s"] >= 120

        # Every invoice discovered, the lost one again too: its next discovery is "unchanged" to the ledger.
        publish(s, events)
        with running(s):
            wait_until(
                lambda: (
                    len(ledger_state(s)) == INVOICES + 1
                    and all(r["verified_at"] is not None for r in ledger_state(s).values())
                ),
                timeout=240,
                interval=1.0,
                what="every revision verified",
            )
            # The verifier stores how far it read: to the end of every partition (past the last commit markers).
            topic = COST_LINES.name(s.kafka_topic_prefix)
            highs = high_watermarks(s, topic)
            wait_until(
                lambda: all(ledger.read_to(topic).get(p, 0) >= h for p, h in highs.items()),
                timeout=60,
                what=f"the verifier's stored positions at the ends {highs}",
            )
        state = ledger_state(s)
        markers = readable_markers(s)
        # Every invoice is readable exactly once, as revision 1, with all its lines.
        assert {u: [rev for rev, _ in m] for u, m in markers.items()} == {e.invoice_uuid: [1] for e in events}
        assert all(r["revision"] == 1 and r["line_count"] == LINES for r in state.values())
        # No false alarm: none of the 40 revisions committed normally was emitted twice.
        assert {u: r["reemits"] for u, r in state.items() if r["reemits"]} == (
            {lost.invoice_uuid: 1} if any_kafka.flavor == "apache" else {}
        )  # the embedded broker shows aborted records: there the aborted copy is readable and verified as is
        # The re-emission is the same revision with the same event ids as the aborted copy.
        [(rev, _)] = markers[lost.invoice_uuid]
        assert rev == revision
        lines = [
            decode(r.value)[1]
            for r in read_all(s, COST_LINES.name(s.kafka_topic_prefix), timeout=60)
            if r.key == lost.invoice_uuid
        ]
        assert len(lines) == LINES + 1
        with psycopg.connect(s.database_url, row_factory=dict_row) as conn:
            assert unverified_revisions(conn) == []

        # A restarted verifier reads on from where the ledger says, not from the beginning.
        again = CommitVerifier(s, ledger, StopSignal())
        try:
            assert sum(again.poll_once(2.0) for _ in range(3)) == 0
        finally:
            assert again._consumer is not None
            again._consumer.close()
    finally:
        pool.close()
