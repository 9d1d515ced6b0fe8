"""Test helpers shared by integration and e2e tests (reading topics to their end, waiting)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import TypeVar

from confluent_kafka import Consumer, KafkaError, TopicPartition

from shared.kafka.records import Record
from shared.settings import Settings

T = TypeVar("T")


def read_all(settings: Settings, topic: str, *, timeout: float = 20.0, committed_only: bool = True) -> list[Record]:
    """Every record of `topic` from offset 0 to the end (detected with partition EOF, not latest offsets)."""
    c = Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap_servers,
            "group.id": f"reader-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "isolation.level": "read_committed" if committed_only else "read_uncommitted",
        }
    )
    try:
        md = c.list_topics(topic, timeout=10)
        parts = sorted(md.topics[topic].partitions)
        c.assign([TopicPartition(topic, p, 0) for p in parts])
        done: set[int] = set()
        out: list[Record] = []
        deadline = time.monotonic() + timeout
        while len(done) < len(parts):
            if time.monotonic() > deadline:
                raise TimeoutError(f"did not reach the end of {topic} in {timeout}s ({len(out)} read)")
            msg = c.poll(0.2)
            if msg is None:
                continue
            if msg.error():
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    done.add(msg.partition())
                continue
            done.discard(msg.partition())
            out.append(Record.from_message(msg))
        return out
    finally:
        c.close()


def wait_until(check: Callable[[], T], *, timeout: float = 30.0, interval: float = 0.2, what: str = "condition") -> T:
    """Poll `check` until it returns something truthy; its last value is returned."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise TimeoutError(f"{what} not reached in {timeout}s (last: {last!r})")
