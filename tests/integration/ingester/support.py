"""Helpers for the ingester's integration tests: the simulator's scenario, discovered events, topic reading."""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import httpx
import psycopg
from confluent_kafka import Producer
from psycopg.rows import dict_row

from services.ingester import main
from shared.events import InvoiceDiscovered, encode
from shared.kafka import StopSignal
from shared.kafka.admin import committed_offsets
from shared.money import parse_minor
from shared.settings import Settings
from shared.topics import COST_LINES, INVOICE_DISCOVERED, group_id
from sims.scenario import SCENARIOS_DIR
from tests.assembly_reader import AssemblyReader
from tests.helpers import read_all

ACCOUNT = "default"  # Settings.digitalocean_account_name of the single-token account


@contextmanager
def running(settings: Settings) -> Iterator[None]:
    """The ingester service (`main.run`) in a thread for the block, stopped as SIGTERM would."""
    stop = StopSignal()
    t = threading.Thread(target=main.run, args=(settings, stop), daemon=True)
    t.start()
    try:
        yield
    finally:
        stop.set()
        t.join(60)
        assert not t.is_alive(), "ingester did not stop"


def copy_scenario(dest: Path, name: str = "april-2026") -> Path:
    """A private copy: the simulator reads CSVs from disk per request, so tests may rewrite them."""
    target = dest / name
    shutil.copytree(SCENARIOS_DIR / name, target)
    return target


def discovered_events(scenario_dir: Path) -> dict[str, InvoiceDiscovered]:
    """What the poller would emit for each Invoice entry of the scenario's billing history, by uuid."""
    out: dict[str, InvoiceDiscovered] = {}
    for e in json.loads((scenario_dir / "billing_history.json").read_text()):
        if e["type"] != "Invoice":
            continue
        when = datetime.fromisoformat(e["date"].replace("Z", "+00:00"))
        year, month = (when.year, when.month - 1) if when.month > 1 else (when.year - 1, 12)
        out[e["invoice_uuid"]] = InvoiceDiscovered(
            invoice_uuid=e["invoice_uuid"],
            invoice_id=e.get("invoice_id"),
            period=f"{year:04d}-{month:02d}-01",
            description=e["description"],
            amount_minor=parse_minor(e["amount"]),
            date=when,
        )
    return out


def publish(settings: Settings, events: list[InvoiceDiscovered], account: str = ACCOUNT, partition: int = 0) -> None:
    """To one partition, in order, so 'the next invoice' really is next behind a failing one."""
    p = Producer({"bootstrap.servers": settings.kafka_bootstrap_servers, "enable.idempotence": True})
    topic = INVOICE_DISCOVERED.name(settings.kafka_topic_prefix)
    for ev in events:
        p.produce(topic, key=ev.invoice_uuid, value=encode(ev, account), partition=partition)
    assert p.flush(30) == 0


def consumed(settings: Settings) -> int:
    """Records of invoice-discovered whose offsets the ingester group committed (across partitions)."""
    group = group_id(settings, "ingester")
    topic = INVOICE_DISCOVERED.name(settings.kafka_topic_prefix)
    offsets = committed_offsets(settings, group, topic, list(range(settings.kafka_partitions)))
    return sum(o for o in offsets.values() if o >= 0)


def assemble(settings: Settings) -> tuple[AssemblyReader, int]:
    """Fold the cost-lines topic by the matcher's rule (read_committed: on the embedded broker aborted records
    are in it too)."""
    recs = read_all(settings, COST_LINES.name(settings.kafka_topic_prefix))
    return AssemblyReader().read_all(recs), len(recs)


def ledger_rows(settings: Settings) -> list[dict]:
    with psycopg.connect(settings.database_url, row_factory=dict_row) as conn:
        try:
            return conn.execute(
                "SELECT invoice_uuid, revision, state, csv_sha256, line_count, amount_gross_minor"
                " FROM ingester.invoice_revisions ORDER BY invoice_uuid, revision"
            ).fetchall()
        except psycopg.errors.UndefinedTable:
            return []


def set_faults(sim_url: str, **faults: object) -> None:
    httpx.post(f"{sim_url}/_sim/faults", json=faults, timeout=5).raise_for_status()


def clear_faults(sim_url: str) -> None:
    httpx.delete(f"{sim_url}/_sim/faults", timeout=5).raise_for_status()
