"""The machine's own ceilings, on the broker and the PostgreSQL server the pipeline runs on.

- produce / consume: raw confluent-kafka rates for cost-line events (the services' producer settings);
- COPY: rows per second into the read model's cost_lines table (its indexes included), in the projector's
  batch size;
- chain: one process doing, per line, the least any stage must: consume it, produce it, COPY it (commit
  per batch). No decoding, no logic: the pipeline's cost lines per second are reported as a share of it.
- modeled chain: what the per-line work of the pipeline (3 produces, 4 consumes, 1 row, see the README)
  would allow at the raw rates measured here.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import psycopg
from confluent_kafka import Consumer, KafkaError, Producer
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic  # confluent_kafka.admin re-exports it, but not explicitly

from bench.data import COST_LINE_COLUMNS, cost_line_rows, line_event
from shared.db import migrate

PARTITIONS = 3
COPY_BATCH = 2000  # the projector's batch (services/projector/main.py)
PRODUCES_PER_LINE, CONSUMES_PER_LINE = 3, 4  # ingester, matcher, projector… see the README's Benchmark section


def _producer(bootstrap: str) -> Producer:
    return Producer(
        {
            "bootstrap.servers": bootstrap,
            "linger.ms": 5,
            "acks": "all",
            "enable.idempotence": True,
            "queue.buffering.max.messages": 1_000_000,
        }
    )


def _consumer(bootstrap: str, group: str) -> Consumer:
    return Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "session.timeout.ms": 6000,
            "heartbeat.interval.ms": 1000,
        }
    )


def _create_topics(bootstrap: str, *names: str) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})  # keep a reference until the futures resolve
    for fut in admin.create_topics([NewTopic(n, PARTITIONS, 1) for n in names]).values():
        fut.result(30)


def _produce_all(p: Producer, topic: str, messages: int, value: bytes) -> None:
    for i in range(messages):
        while True:
            try:
                p.produce(topic, key=f"inv-{i % 1000}", value=value)
                break
            except BufferError:
                p.poll(0.05)
        if i % 10000 == 0:
            p.poll(0)
    if p.flush(120):
        raise RuntimeError(f"produce ceiling: messages still undelivered after 120s on {topic}")


def produce_consume(bootstrap: str, messages: int) -> tuple[dict[str, Any], str]:
    """Raw produce and consume rates; returns them and the filled topic (the chain reads it)."""
    topic = f"bench-ceiling-{uuid.uuid4().hex[:8]}"
    _create_topics(bootstrap, topic)
    value = line_event()
    p = _producer(bootstrap)
    t0 = time.perf_counter()
    _produce_all(p, topic, messages, value)
    produce_s = time.perf_counter() - t0
    c = _consumer(bootstrap, topic)
    c.subscribe([topic])
    n, started = 0, None
    eof: set[int | None] = set()
    while len(eof) < PARTITIONS or n < messages:
        for m in c.consume(10000, 1.0):
            if err := m.error():
                if err.code() == KafkaError._PARTITION_EOF:
                    eof.add(m.partition())
                continue
            if started is None:
                started = time.perf_counter()  # the group join is not consuming
            n += 1
    consume_s = time.perf_counter() - (started or time.perf_counter())
    c.close()
    return {
        "messages": messages,
        "message_bytes": len(value),
        "produce_msgs_per_s": round(messages / produce_s),
        "consume_msgs_per_s": round(n / consume_s) if consume_s else 0,
    }, topic


def copy_rows(database_url: str, rows: int) -> dict[str, Any]:
    """COPY into readmodel.cost_lines (a fresh database of the same server), COPY_BATCH rows per transaction."""
    migrate(database_url, ["readmodel"])
    data = list(cost_line_rows(rows, seed=2))
    sql = f"COPY readmodel.cost_lines ({', '.join(COST_LINE_COLUMNS)}) FROM STDIN"
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("TRUNCATE readmodel.cost_lines")
        t0 = time.perf_counter()
        for b in range(0, rows, COPY_BATCH):
            with conn.transaction(), conn.cursor().copy(sql) as cp:
                for row in data[b : b + COPY_BATCH]:
                    cp.write_row(row)
        elapsed = time.perf_counter() - t0
        conn.execute("TRUNCATE readmodel.cost_lines")
    return {"rows": rows, "copy_rows_per_s": round(rows / elapsed)}


def chain(bootstrap: str, database_url: str, source: str, lines: int) -> dict[str, Any]:
    """consume → produce → COPY per line, committed per batch, in one process: the least a stage does."""
    target = f"{source}-chain"
    _create_topics(bootstrap, target)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS bench_chain (part integer, off bigint, key text, value bytea,"
            " PRIMARY KEY (part, off))"
        )
        conn.execute("TRUNCATE bench_chain")
        c = _consumer(bootstrap, f"{source}-chain")
        c.subscribe([source])
        p = _producer(bootstrap)
        eof: set[int] = set()
        n, started = 0, None
        while n < lines and len(eof) < PARTITIONS:
            batch = [m for m in c.consume(COPY_BATCH, 1.0) if not _eof(m, eof)]
            if not batch:
                continue
            if started is None:
                started = time.perf_counter()
            batch = batch[: lines - n]
            for m in batch:
                while True:
                    try:
                        p.produce(target, key=m.key(), value=m.value())
                        break
                    except BufferError:
                        p.poll(0.05)
            p.poll(0)
            with conn.transaction(), conn.cursor().copy("COPY bench_chain (part, off, key, value) FROM STDIN") as cp:
                for m in batch:
                    cp.write_row((m.partition(), m.offset(), m.key(), m.value()))
            c.commit(asynchronous=False)
            n += len(batch)
        if p.flush(120):
            raise RuntimeError("chain ceiling: messages still undelivered after 120s")
        elapsed = time.perf_counter() - (started or time.perf_counter())
        c.close()
        conn.execute("DROP TABLE bench_chain")
    return {"lines": n, "lines_per_s": round(n / elapsed) if elapsed else 0}


def _eof(m: Any, eof: set[int]) -> bool:
    if m.error():
        if m.error().code() == KafkaError._PARTITION_EOF:
            eof.add(m.partition())
        return True
    return False


def modeled_chain(produce: float, consume: float, copy: float) -> int:
    """Lines per second if every line cost the pipeline's produces, consumes and one row at the raw rates."""
    return round(1 / (PRODUCES_PER_LINE / produce + CONSUMES_PER_LINE / consume + 1 / copy))


def measure(bootstrap: str, database_url: str, messages: int, chain_lines: int) -> dict[str, Any]:
    kafka, topic = produce_consume(bootstrap, messages)
    copy = copy_rows(database_url, messages)
    ch = chain(bootstrap, database_url, topic, min(chain_lines, messages))
    return {
        **kafka,
        **copy,
        "chain_lines": ch["lines"],
        "chain_lines_per_s": ch["lines_per_s"],
        "modeled_chain_lines_per_s": modeled_chain(
            kafka["produce_msgs_per_s"], kafka["consume_msgs_per_s"], copy["copy_rows_per_s"]
        ),
    }
