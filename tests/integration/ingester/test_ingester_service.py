"""The ingester in a thread against the real broker, Postgres and the DigitalOcean simulator."""

from __future__ import annotations

from pathlib import Path

import psycopg
from psycopg.rows import dict_row

from services.ingester.csv_parser import PARSER_VERSION, parse_invoice_csv
from shared.events import InvoiceRefetchRequested, decode
from shared.kafka.deadletter import H_ERROR_CLASS, H_ERROR_MESSAGE, H_OFFSET, H_TOPIC
from shared.settings import Settings
from shared.topics import INVOICE_DISCOVERED
from sims.scenario import APRIL_2026_INVOICE_UUID, SCENARIOS_DIR
from sims.server import RunningServer
from tests.helpers import read_all, wait_until
from tests.integration.ingester.support import (
    assemble,
    consumed,
    discovered_events,
    ledger_rows,
    publish,
    running,
    set_faults,
)

APRIL = APRIL_2026_INVOICE_UUID


def test_april_invoice_duplicate_delivery_and_changed_csv(ingester_settings: Settings, scenario_dir: Path) -> None:
    s = ingester_settings
    ev = discovered_events(scenario_dir)[APRIL]
    csv_path = scenario_dir / "invoices" / f"{APRIL}.csv"
    original = csv_path.read_bytes()
    try:
        with running(s):
            # 1. The April 2026 invoice: 33 lines, net 7902, tax 790, gross 8692, reconciled with the history.
            publish(s, [ev])
            wait_until(lambda: assemble(s)[0].current.get(APRIL), timeout=60, what="April revision 1")
            asm, n_records = assemble(s)
            rev = asm.current[APRIL]
            assert rev.revision == 1 and n_records == 34
            assert len(rev.lines) == 33
            assert sum(ln.is_tax for ln in rev.lines) == 1
            end = rev.end
            assert (end.line_count, end.amount_net_minor, end.amount_tax_minor, end.amount_gross_minor) == (
                33,
                7902,
                790,
                8692,
            )
            assert end.reconciliation.status == "matched" and end.reconciliation.expected_minor == 8692
            assert end.parser_version == PARSER_VERSION
            assert end.csv_sha256 == parse_invoice_csv(original).csv_sha256
            assert str(end.invoice_date) == "2026-05-01" and end.period == "2026-04-01"
            assert end.invoice_id == "9217394"
            assert rev.lines[0].description == "web-01 (s-1vcpu-1gb)" and rev.lines[0].amount_minor == 600
            assert rev.lines[0].project_name == "Arcadia, Production"
            wait_until(lambda: [r["state"] for r in ledger_rows(s)] == ["committed"], what="ledger committed")

            # 2. The same discovered event again: skipped, no new revision, its offset still committed.
            publish(s, [ev])
            wait_until(lambda: consumed(s) == 2, timeout=30, what="second delivery consumed")
            assert assemble(s)[1] == 34
            assert [(r["revision"], r["state"]) for r in ledger_rows(s)] == [(1, "committed")]

            # 3. DigitalOcean now serves a different CSV for the invoice: revision 2 replaces revision 1.
            csv_path.write_bytes(original.replace(b"$6.00", b"$6.50", 1))
            publish(s, [ev])
            wait_until(lambda: assemble(s)[0].current[APRIL].revision == 2, timeout=30, what="revision 2")
            asm, n_records = assemble(s)
            rev2 = asm.current[APRIL]
            assert n_records == 68 and len(rev2.lines) == 33
            assert rev2.end.amount_gross_minor == 8742
            assert rev2.end.reconciliation.status == "mismatch" and rev2.end.reconciliation.difference_minor == 50
            assert asm.conflicts == []
            wait_until(
                lambda: [(r["revision"], r["state"]) for r in ledger_rows(s)] == [(1, "committed"), (2, "committed")],
                what="ledger revision 2 committed",
            )
    finally:
        csv_path.write_bytes(original)


def test_bad_input_goes_to_the_dlq_and_the_next_invoice_is_processed(
    ingester_settings: Settings, scenario_dir: Path
) -> None:
    s = ingester_settings
    events = discovered_events(scenario_dir)
    bad_uuid, next_uuid = [u for u in events if u != APRIL][:2]
    bad_path = scenario_dir / "invoices" / f"{bad_uuid}.csv"
    original = bad_path.read_bytes()
    lines = original.decode().splitlines(keepends=True)
    header = [h.strip() for h in lines[0].split(",")]
    usd = header.index("USD")
    cells = lines[2].rstrip("\r\n").split(",")
    cells[usd] = "$1.2.3"
    lines[2] = ",".join(cells) + "\n"
    missing_uuid = "00000000-0000-4000-8000-000000000404"
    ghost = events[next_uuid].model_copy(update={"invoice_uuid": "11111111-0000-4000-8000-000000000001"})
    try:
        bad_path.write_text("".join(lines))
        with running(s):
            publish(s, [events[bad_uuid]])  # malformed CSV (row 2, column USD)
            publish(s, [ghost], account="ghost")  # an account with no token configured
            publish(s, [events[APRIL].model_copy(update={"invoice_uuid": missing_uuid})])  # 404 at DigitalOcean
            publish(s, [events[next_uuid]])  # a good invoice behind them on the same partition
            wait_until(lambda: next_uuid in assemble(s)[0].current, timeout=60, what="next invoice ingested")
            wait_until(lambda: consumed(s) == 4, timeout=30, what="all four consumed")

        asm, _ = assemble(s)
        assert set(asm.current) == {next_uuid}  # nothing at all of the bad invoice
        dlq = read_all(s, INVOICE_DISCOVERED.dlq(s.kafka_topic_prefix))
        by_key = {r.key: r.headers for r in dlq}
        assert len(dlq) == 3
        h = {k: v.decode() for k, v in by_key[bad_uuid].items()}
        assert h[H_ERROR_CLASS].endswith("CsvParseError")
        assert (h["dlq.csv.row"], h["dlq.csv.column"], h["dlq.csv.value"]) == ("2", "USD", "$1.2.3")
        assert "row 2" in h[H_ERROR_MESSAGE] and "'USD'" in h[H_ERROR_MESSAGE] and "$1.2.3" in h[H_ERROR_MESSAGE]
        assert h[H_TOPIC] == INVOICE_DISCOVERED.name(s.kafka_topic_prefix) and h[H_OFFSET] == "0"
        g = {k: v.decode() for k, v in by_key[ghost.invoice_uuid].items()}
        assert g[H_ERROR_CLASS].endswith("UnknownAccount") and "'ghost'" in g[H_ERROR_MESSAGE]
        m = {k: v.decode() for k, v in by_key[missing_uuid].items()}
        assert m[H_ERROR_CLASS].endswith("DigitalOceanNotFound")
        assert "dop_v1_" not in "".join(h.values()) + "".join(g.values()) + "".join(m.values())
        assert [r["invoice_uuid"] for r in ledger_rows(s)] == [next_uuid]
    finally:
        bad_path.write_bytes(original)


def test_a_truncated_csv_is_held_and_fetched_again_until_whole(
    ingester_settings: Settings, do_sim: RunningServer
) -> None:
    """The simulator cuts the April CSV after a whole row twice (it parses: only the amounts tell it is short);
    the ingester holds it, its re-fetch clock asks again with backoff, and the whole CSV releases it."""
    s = ingester_settings.model_copy(update={"held_refetch_initial_s": 0.5})
    ev = discovered_events(SCENARIOS_DIR / "april-2026")[APRIL]
    set_faults(do_sim.url, truncate_csv=2, truncate_mode="rows", paths=f"/v2/customers/my/invoices/{APRIL}/csv")
    with running(s):
        publish(s, [ev])
        wait_until(lambda: assemble(s)[0].current.get(APRIL), timeout=60, what="the short revision")
        short = assemble(s)[0].current[APRIL]
        assert short.revision == 1 and short.end.line_count < 33 and short.end.amount_gross_minor < 8692
        rec = short.end.reconciliation
        assert (
            rec.status == "mismatch" and rec.expected_minor == 8692 and rec.actual_minor == short.end.amount_gross_minor
        )
        wait_until(
            lambda: assemble(s)[0].current[APRIL].revision == 2,
            timeout=60,
            what="the whole CSV re-fetched (revision 2)",
        )
    whole = assemble(s)[0].current[APRIL]
    assert (whole.end.line_count, whole.end.amount_gross_minor, whole.end.reconciliation.status) == (
        33,
        8692,
        "matched",
    )
    requests = [
        d
        for r in read_all(s, INVOICE_DISCOVERED.name(s.kafka_topic_prefix))
        for _, d in [decode(r.value)]
        if isinstance(d, InvoiceRefetchRequested)
    ]
    assert [r.attempt for r in requests][:2] == [1, 2] and {r.requested_by for r in requests} == {"ingester"}
    with psycopg.connect(s.database_url, row_factory=dict_row) as conn:
        row = conn.execute("SELECT held_revision FROM ingester.invoices WHERE invoice_uuid = %s", (APRIL,)).fetchone()
    assert row["held_revision"] is None
