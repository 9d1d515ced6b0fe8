"""One stage alone, fed from a pre-filled topic: what it can do when nothing upstream holds it back.

In the whole pipeline a stage only goes as fast as the slowest one before it; replaying a stage over records
already on the broker measures its own capacity (and shows what batching its writes buys).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, date, datetime
from typing import Any

from pydantic import SecretStr

from shared.db import connect, migrate
from shared.devinfra import KafkaFlavor, free_port, wait_for_port
from shared.events import CostLine, CostLineMatched, InvoiceCompleted, InvoiceEnd, Reconciliation, encode
from shared.kafka import StopSignal, create_topics
from shared.kafka.admin import high_watermarks, read_topic
from shared.kafka.producer import EventProducer
from shared.kafka.records import Out
from shared.reconciliation import Expected, reconcile
from shared.settings import Settings
from shared.topics import COST_LINES, COST_LINES_MATCHED, INVOICE_COMPLETED

ACCOUNT = "bench"
STALL_S = 30.0


def _matched_line(inv: str, i: int) -> CostLineMatched:
    line = CostLine(
        invoice_uuid=inv,
        revision=1,
        line_index=i,
        product="Droplets",
        description=f"web-{i:05d} (s-1vcpu-1gb)",
        hours=720,
        start=datetime(2026, 4, 1, tzinfo=UTC),
        end=datetime(2026, 5, 1, tzinfo=UTC),
        amount_minor=100 + i % 900,
        project_name="proj",
        category="iaas",
        is_tax=False,
    )
    if i % 2:
        return CostLineMatched(line=line, unmatched_reason="no_such_resource", kind="droplet", name=line.description)
    return CostLineMatched(
        line=line, kind="droplet", name=f"web-{i:05d}", resource_id=str(i), resource_key=f"bench:droplet:{i}", rule="n"
    )


def _proven(gross: int, tax: int) -> Reconciliation:
    """The reconciliation of an invoice whose billing-history and invoice-list amounts agree with its lines."""
    return reconcile(
        gross_minor=gross,
        tax_minor=tax,
        csv_currency="USD",
        expected=Expected(currency="USD", history_minor=gross, listed_minor=gross),
    )


def _invoice_fields(inv: str, lines: int, gross_minor: int) -> dict[str, Any]:
    """The header and totals an end marker and a completion of a bench invoice share (revision 1, April)."""
    return {
        "invoice_uuid": inv,
        "revision": 1,
        "period": "2026-04-01",
        "invoice_date": date(2026, 5, 1),
        "line_count": lines,
        "amount_net_minor": gross_minor,
        "amount_tax_minor": 0,
        "amount_gross_minor": gross_minor,
    }


def _invoice_end(inv: str, lines: int, gross_minor: int, recon: Reconciliation) -> InvoiceEnd:
    return InvoiceEnd(
        **_invoice_fields(inv, lines, gross_minor), csv_sha256="0" * 64, parser_version="bench", reconciliation=recon
    )


def seed_projector_input(settings: Settings, invoices: int, lines: int) -> None:
    """Each invoice as the projector sees it in a run: its raw lines and end marker, its matched lines, its
    completion."""
    p = settings.kafka_topic_prefix
    producer = EventProducer(settings, "bench-seed")
    recon = _proven(0, 0)
    try:
        for k in range(invoices):
            inv = str(uuid.UUID(int=k + 1))
            end = _invoice_end(inv, lines, 0, recon)
            matched = [_matched_line(inv, i) for i in range(lines)]
            for m in matched:
                producer.produce(Out(COST_LINES.name(p), inv, encode(m.line, ACCOUNT)))
            producer.produce(Out(COST_LINES.name(p), inv, encode(end, ACCOUNT)))
            for m in matched:
                producer.produce(Out(COST_LINES_MATCHED.name(p), inv, encode(m, ACCOUNT)))
            done = InvoiceCompleted(**_invoice_fields(inv, lines, 0), matched_count=lines // 2, reconciliation=recon)
            producer.produce(Out(INVOICE_COMPLETED.name(p), inv, encode(done, ACCOUNT)))
        producer.flush(120)
    finally:
        producer.close()


def projector_replay(bootstrap: str, database_url: str, *, invoices: int = 20, lines: int = 2500) -> dict[str, float]:
    """Cost lines per second the projector writes into the read model, from topics filled beforehand."""
    from services.projector import main as projector

    settings = Settings(
        _env_file=None,
        kafka_bootstrap_servers=bootstrap,
        kafka_topic_prefix=f"bench-{uuid.uuid4().hex[:8]}.",
        kafka_partitions=3,
        kafka_session_timeout_ms=6000,
        kafka_heartbeat_interval_ms=1000,
        database_url=database_url,
    )
    create_topics(settings)
    migrate(settings, ["readmodel"])
    with connect(settings, autocommit=True) as conn:
        conn.execute("TRUNCATE readmodel.cost_lines, readmodel.invoices")
    seed_projector_input(settings, invoices, lines)
    total = invoices * lines
    records = 2 * total + 2 * invoices  # raw and matched lines, each invoice's end marker and completion
    stop = StopSignal()
    loop, proj = projector.build(settings, stop)
    thread = threading.Thread(target=loop.run, name="bench-projector", daemon=True)
    thread.start()
    first = done = None
    last, last_change = -1, time.perf_counter()
    try:
        # The loop's own counters (read from this thread, cheap): no query competes with the projector's writes.
        while time.perf_counter() - last_change < STALL_S and thread.is_alive():
            now = time.perf_counter()
            if loop.processed != last:
                last, last_change = loop.processed, now
            if first is None and loop.processed:
                first = now
            if loop.processed >= records and proj.batches and not proj.pending:
                done = now
                break
            time.sleep(0.005)
    finally:
        stop.set()
        thread.join(60)
        proj.close()
    with connect(settings, autocommit=True) as conn:
        row = conn.execute(
            "SELECT (SELECT count(*) FROM readmodel.cost_lines WHERE current) AS n,"
            " (SELECT count(*) FROM readmodel.invoices WHERE status_rank >= 3) AS completed"
        ).fetchone()
    assert row is not None
    complete = done is not None and row["n"] == total and row["completed"] == invoices
    if not complete or first is None or done is None:
        return {"lines": total, "complete": False, "projected": row["n"]}
    return {
        "lines": total,
        "complete": True,
        "batches": proj.batches,
        "seconds": round(done - first, 2),
        "lines_per_s": round(total / max(done - first, 1e-6)),
    }


def seed_matcher_input(settings: Settings, invoices: int, lines: int) -> None:
    """Each invoice's raw lines and end marker on the cost-lines topic, as the ingester writes them."""
    p = settings.kafka_topic_prefix
    producer = EventProducer(settings, "bench-seed")
    recon = _proven(0, 0)
    try:
        for k in range(invoices):
            inv = str(uuid.UUID(int=k + 1))
            for i in range(lines):
                producer.produce(Out(COST_LINES.name(p), inv, encode(_matched_line(inv, i).line, ACCOUNT)))
            end = _invoice_end(inv, lines, 1234 * lines, recon)
            producer.produce(Out(COST_LINES.name(p), inv, encode(end, ACCOUNT)))
        producer.flush(120)
    finally:
        producer.close()


def matcher_replay(
    bootstrap: str,
    flavor: KafkaFlavor,
    *,
    invoices: int = 40,
    lines: int = 500,
    cleanup: contextlib.ExitStack | None = None,
) -> dict[str, Any]:
    """Cost lines per second, and CPU µs per line, of the matcher (a process, as in production) over a
    cost-lines topic filled beforehand: from its first output to its last completion."""
    import psutil

    prefix = f"bench-{uuid.uuid4().hex[:8]}."
    settings = Settings(
        _env_file=None,
        kafka_bootstrap_servers=bootstrap,
        kafka_broker_flavor=flavor,
        kafka_topic_prefix=prefix,
        kafka_partitions=3,
    )
    create_topics(settings)
    seed_matcher_input(settings, invoices, lines)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "MATCHER_"))} | {
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "KAFKA_BROKER_FLAVOR": flavor,
        "KAFKA_TOPIC_PREFIX": prefix,
        "KAFKA_PARTITIONS": "3",
        "KAFKA_SESSION_TIMEOUT_MS": "6000",
        "KAFKA_HEARTBEAT_INTERVAL_MS": "1000",
        "CLOUDBILL_DEV_ENV": "off",
        "LOG_LEVEL": "WARNING",
        "METRICS_PORT": "0",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "cloudbill", "run", "matcher"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    if cleanup is not None:
        cleanup.callback(stop_process, proc)
    ps = psutil.Process(proc.pid)
    matched_topic, completed_topic = COST_LINES_MATCHED.name(prefix), INVOICE_COMPLETED.name(prefix)
    first: tuple[float, float, int] | None = None
    done: tuple[float, float, int] | None = None
    last, last_change = -1, time.perf_counter()
    try:
        while time.perf_counter() - last_change < STALL_S and proc.poll() is None:
            matched = sum(high_watermarks(settings, matched_topic).values())
            completed = sum(high_watermarks(settings, completed_topic).values())
            now = time.perf_counter()
            if matched + completed != last:
                last, last_change = matched + completed, now
            if first is None and matched:
                first = (now, _cpu_s(ps), matched)
            if completed >= invoices:
                done = (now, _cpu_s(ps), matched)
                break
            time.sleep(0.1)
    finally:
        stop_process(proc)
    if done is None:
        return {"lines": invoices * lines, "complete": False}
    return {"lines": invoices * lines, "complete": True, **_matcher_rates(settings, invoices * lines, first, done)}


def _matcher_rates(
    settings: Settings, lines: int, first: tuple[float, float, int] | None, done: tuple[float, float, int]
) -> dict[str, Any]:
    """The rate from the records' own timestamps (the first enriched line to the last completion: exact even
    when a small run is done between two samples); CPU per line from the samples, when they are far apart."""
    p = settings.kafka_topic_prefix
    started = min(r.timestamp_ms or 0 for r in read_topic(settings, COST_LINES_MATCHED.name(p)))
    ended = max(r.timestamp_ms or 0 for r in read_topic(settings, INVOICE_COMPLETED.name(p)))
    seconds = max(ended - started, 1) / 1000
    out: dict[str, Any] = {"seconds": round(seconds, 2), "lines_per_s": round(lines / seconds)}
    if first is not None and done[0] - first[0] >= 1.0 and done[2] > first[2]:
        out["cpu_us_per_line"] = round((done[1] - first[1]) / (done[2] - first[2]) * 1e6)
    return out


def _cpu_s(ps: Any) -> float:
    t = ps.cpu_times()
    return float(t.user + t.system)


def seed_pusher_input(settings: Settings, invoices: int) -> None:
    """Completed invoices (consistent totals, 2 lines each) on the invoice-completed topic."""
    p = settings.kafka_topic_prefix
    producer = EventProducer(settings, "bench-seed")
    recon = _proven(1100, 100)  # the money gates let it through: billing history and invoice list agree
    try:
        for k in range(invoices):
            inv = str(uuid.UUID(int=k + 1))
            done = InvoiceCompleted(
                invoice_uuid=inv,
                invoice_id=str(100_000 + k),
                revision=1,
                period="2026-04-01",
                invoice_date=date(2026, 5, 1),
                line_count=2,
                matched_count=1,
                amount_net_minor=1000,
                amount_tax_minor=100,
                amount_gross_minor=1100,
                reconciliation=recon,
            )
            producer.produce(Out(INVOICE_COMPLETED.name(p), inv, encode(done, ACCOUNT)))
        producer.flush(60)
    finally:
        producer.close()


def pusher_replay(
    bootstrap: str, database_url: str, *, invoices: int = 200, cleanup: contextlib.ExitStack | None = None
) -> dict[str, float]:
    """Invoices per second the finance pusher pushes to the finance simulator (a separate process, also
    registered with `cleanup`, so that an interrupted bench stops it)."""
    from services.finance_pusher import main as pusher

    port, secret = free_port(), secrets.token_hex(32)
    settings = Settings(
        _env_file=None,
        kafka_bootstrap_servers=bootstrap,
        kafka_topic_prefix=f"bench-{uuid.uuid4().hex[:8]}.",
        kafka_partitions=3,
        kafka_session_timeout_ms=6000,
        kafka_heartbeat_interval_ms=1000,
        database_url=database_url,
        skyai_finance_url=f"http://127.0.0.1:{port}",
        skyai_finance_jwt_secret=SecretStr(secret),
    )
    create_topics(settings)
    migrate(settings, ["finance_pusher", "finance_sim"])
    with connect(settings, autocommit=True) as conn:
        conn.execute("TRUNCATE finance_pusher.pushes, finance_pusher.invoices CASCADE")
    seed_pusher_input(settings, invoices)
    env = os.environ | {"SKYAI_FINANCE_JWT_SECRET": secret, "LOG_LEVEL": "WARNING"}
    sim = subprocess.Popen(
        [sys.executable, "-m", "cloudbill", "sim", "finance", "--port", str(port), "--database-url", database_url],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    if cleanup is not None:
        cleanup.callback(stop_process, sim)
    stop = StopSignal()
    thread = threading.Thread(target=pusher.run, args=(settings, stop), name="bench-pusher", daemon=True)
    first: float | None = None
    done: float | None = None
    try:
        if not wait_for_port("127.0.0.1", port, 60):
            raise RuntimeError("the finance simulator did not listen")
        thread.start()
        first, done = _watch_pushes(settings, invoices, thread)
    finally:
        stop.set()
        thread.join(60)
        stop_process(sim)
    if first is None or done is None:
        return {"invoices": invoices, "complete": False}
    return {
        "invoices": invoices,
        "complete": True,
        "seconds": round(done - first, 2),
        "invoices_per_s": round((invoices - 1) / max(done - first, 1e-6), 1),
    }


def _watch_pushes(settings: Settings, invoices: int, pusher: threading.Thread) -> tuple[float | None, float | None]:
    """When the first invoice was pushed and when the last was: until all are, or nothing moved for STALL_S (an
    invoice the money gates hold, a dead pusher)."""
    first = done = None
    last, last_change = -1, time.perf_counter()
    with connect(settings, autocommit=True) as conn:
        while time.perf_counter() - last_change < STALL_S and pusher.is_alive():
            row = conn.execute(
                "SELECT count(*) AS n FROM finance_pusher.pushes WHERE published_at IS NOT NULL"
            ).fetchone()
            assert row is not None
            now = time.perf_counter()
            if row["n"] != last:
                last, last_change = row["n"], now
            if first is None and row["n"]:
                first = now
            if row["n"] >= invoices:
                done = now
                break
            time.sleep(0.02)
    return first, done


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL after 20 s; nothing when it already ended (safe to call twice)."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
