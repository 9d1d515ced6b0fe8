"""`cloudbill status` and `cloudbill replay` through the CLI, on the real broker and PostgreSQL."""

from __future__ import annotations

import json
import threading

import psycopg
import pytest
from typer.testing import CliRunner

from cloudbill.cli import app
from shared.db import migrate
from shared.events import encode
from shared.kafka import ConsumerLoop, EventProducer, Out, Record, StopSignal
from shared.settings import Settings, get_settings
from shared.topics import INVOICE_COMPLETED, INVOICE_DISCOVERED, STAGES
from tests.factories import invoice_discovered
from tests.helpers import settings_env


@pytest.fixture
def cli(settings: Settings, monkeypatch: pytest.MonkeyPatch):
    for k, v in settings_env(settings).items():
        monkeypatch.setenv(k, v)
    get_settings.cache_clear()
    yield CliRunner()
    get_settings.cache_clear()


def _consume_all(s: Settings, stage: str, n: int) -> None:
    st = STAGES[stage]
    seen: list[int] = []
    stop = StopSignal()

    def handle(rec: Record) -> None:
        seen.append(rec.offset)
        if len(seen) >= n:
            stop.set()

    loop = ConsumerLoop(
        s,
        service=stage,
        group=st.group(s),
        topics=[t.name(s.kafka_topic_prefix) for t in st.inputs],
        handler=handle,
        stop=stop,
    )
    t = threading.Thread(target=loop.run, daemon=True)
    t.start()
    t.join(60)
    assert len(seen) >= n


def test_status_shows_lag_dead_letters_and_statuses(cli: CliRunner, settings: Settings) -> None:
    s = settings
    migrate(s)
    prod = EventProducer(s, "test")
    for i in range(7):
        d = invoice_discovered(invoice_uuid=f"inv-{i}", invoice_id=None, amount_minor=i, date="2026-05-01T00:00:00Z")
        prod.produce(Out(INVOICE_DISCOVERED.name(s.kafka_topic_prefix), f"inv-{i}", encode(d, "acct")))
    prod.produce(Out(INVOICE_DISCOVERED.dlq(s.kafka_topic_prefix), "bad", b"poison"))
    prod.produce(Out(INVOICE_COMPLETED.name(s.kafka_topic_prefix), "x", b"{}"))
    prod.flush()

    res = cli.invoke(app, ["status", "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.output)
    by = {st["stage"]: st for st in report["stages"]}
    assert by["ingester"]["lag"] == 7 and by["ingester"]["dead_letters"] == 1
    assert by["finance-pusher"]["lag"] == 1
    assert report["polls"] == [] and report["invoices"] == {}

    _consume_all(s, "ingester", 7)
    report = json.loads(cli.invoke(app, ["status", "--json"]).output)
    assert {st["stage"]: st["lag"] for st in report["stages"]}["ingester"] == 0

    table = cli.invoke(app, ["status"])
    assert table.exit_code == 0 and "ingester" in table.output and "Invoices by status" in table.output
    assert report["unverified"] == [] and "Committed, not readable" not in table.output


def test_status_lists_a_committed_revision_the_verifier_never_read(cli: CliRunner, settings: Settings) -> None:
    """The ingester's commit verifier has not read the revision on cost-lines for 3 minutes: shown with its age."""
    migrate(settings)
    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO ingester.invoice_revisions (invoice_uuid, revision, account, csv_sha256, parser_version,"
            " line_count, currency, amount_net_minor, amount_tax_minor, amount_gross_minor, state, reserved_at,"
            " committed_at, reemits) VALUES"
            " ('lost-inv', 2, 'acct', 'x', 'v', 250, 'USD', 100, 10, 110, 'committed', now(), now() - interval '3 minutes', 1),"
            " ('fresh-inv', 1, 'acct', 'y', 'v', 10, 'USD', 100, 10, 110, 'committed', now(), now(), 0)"
        )
    report = json.loads(cli.invoke(app, ["status", "--json"]).output)
    [shown] = report["unverified"]  # the fresh one is within the verifier's minute
    assert (shown["invoice_uuid"], shown["revision"], shown["line_count"], shown["reemits"]) == ("lost-inv", 2, 250, 1)
    assert 180 <= shown["age_s"] < 600
    table = cli.invoke(app, ["status"])
    assert table.exit_code == 0
    assert "Committed, not readable" in table.output and "lost-inv" in table.output and "3m" in table.output
    assert "fresh-inv" not in table.output


def test_replay_rewinds_a_stopped_stage(cli: CliRunner, settings: Settings) -> None:
    s = settings
    prod = EventProducer(s, "test")
    for i in range(5):
        d = invoice_discovered(invoice_uuid=f"inv-{i}", invoice_id=None, amount_minor=i, date="2026-05-01T00:00:00Z")
        prod.produce(Out(INVOICE_DISCOVERED.name(s.kafka_topic_prefix), f"inv-{i}", encode(d, "acct")))
    prod.flush()
    _consume_all(s, "ingester", 5)

    res = cli.invoke(app, ["replay", "ingester", "--from-beginning"])
    assert res.exit_code == 0, res.output
    assert "5 record(s) to reprocess" in res.output

    res = cli.invoke(app, ["replay", "ingester", "--from-datetime", "2999-01-01T00:00:00Z"])
    assert res.exit_code == 0, res.output
    assert "0 record(s) to reprocess" in res.output

    bad = cli.invoke(app, ["replay", "ingester"])
    assert bad.exit_code != 0
    bad = cli.invoke(app, ["replay", "ingester", "--from-datetime", "yesterday"])
    assert bad.exit_code != 0
