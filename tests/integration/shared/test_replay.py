"""Rewinding a stage's consumer group (the mechanism behind `cloudbill replay`)."""

from __future__ import annotations

import threading
import time

import pytest

from shared.events import BillingHistoryEntry
from shared.kafka import ConsumerLoop, EventProducer, Record, StopSignal
from shared.kafka.admin import GroupActiveError, group_lag, rewind_group
from shared.settings import Settings
from shared.topics import HISTORY


def _publish(s: Settings, topic: str, start: int, n: int) -> None:
    prod = EventProducer(s, "test")
    for i in range(start, start + n):
        prod.publish(
            topic,
            f"k{i % 5}",
            BillingHistoryEntry(
                entry_type="Payment", description=f"p{i}", amount_minor=-i, date="2024-01-01T00:00:00Z"
            ),
            "a",
        )
    prod.flush()


def _consume(s: Settings, group: str, topic: str, expect: int) -> tuple[list[int], ConsumerLoop, threading.Thread]:
    seen: list[int] = []
    stop = StopSignal()

    def handle(rec: Record) -> None:
        seen.append(-rec.event()[1].amount_minor)
        if len(seen) >= expect:
            stop.set()

    loop = ConsumerLoop(s, service="t", group=group, topics=[topic], handler=handle, stop=stop)
    t = threading.Thread(target=loop.run, daemon=True)
    t.start()
    return seen, loop, t


def test_rewind_to_beginning_and_to_a_time(kafka_settings: Settings) -> None:
    s = kafka_settings
    topic = HISTORY.name(s.kafka_topic_prefix)
    group = s.kafka_topic_prefix + "replay"
    _publish(s, topic, 0, 10)
    time.sleep(0.05)  # two distinct arrival times on both sides of `cut` (not a readiness wait)
    cut = int(time.time() * 1000)
    time.sleep(0.05)
    _publish(s, topic, 10, 5)

    seen, _loop, t = _consume(s, group, topic, 15)
    t.join(30)
    assert sorted(seen) == list(range(15))
    assert sum(p.lag for p in group_lag(s, group, [topic])) == 0

    plan = rewind_group(s, group, [topic])
    assert sum(plan[topic].values()) == 0
    assert sum(p.lag for p in group_lag(s, group, [topic])) == 15
    seen, _loop, t = _consume(s, group, topic, 15)
    t.join(30)
    assert sorted(seen) == list(range(15))

    rewind_group(s, group, [topic], to_ms=cut)
    assert sum(p.lag for p in group_lag(s, group, [topic])) == 5
    seen, _loop, t = _consume(s, group, topic, 5)
    t.join(30)
    assert sorted(seen) == list(range(10, 15))

    # A time past the end: nothing to replay (the embedded broker would answer 0 here; we correct it).
    rewind_group(s, group, [topic], to_ms=int(time.time() * 1000) + 60_000)
    assert sum(p.lag for p in group_lag(s, group, [topic])) == 0


def test_rewind_refuses_while_the_group_has_members(kafka_settings: Settings) -> None:
    s = kafka_settings
    topic = HISTORY.name(s.kafka_topic_prefix)
    group = s.kafka_topic_prefix + "busy"
    _publish(s, topic, 0, 1)
    seen, loop, t = _consume(s, group, topic, 10**6)
    try:
        from tests.helpers import wait_until

        wait_until(lambda: seen, timeout=30, what="first record consumed")
        with pytest.raises(GroupActiveError, match="stop that stage first"):
            rewind_group(s, group, [topic])
    finally:
        loop.stop.set()
        t.join(30)


def test_lag_counts_records_not_transaction_markers(kafka_settings: Settings) -> None:
    """A consumer that read every record of a transactional topic has no lag, though offsets remain."""
    from confluent_kafka import Producer

    from shared.kafka.config import producer_config

    s = kafka_settings
    topic = HISTORY.name(s.kafka_topic_prefix)
    group = s.kafka_topic_prefix + "txlag"
    p = Producer(producer_config(s, "t", transactional_id=s.kafka_topic_prefix + "txlag"))
    p.init_transactions(30)
    for i in range(3):
        p.begin_transaction()
        for j in range(4):
            p.produce(topic, key="same-partition", value=_entry_bytes(i * 4 + j))
        p.commit_transaction(30)
    seen, _loop, t = _consume(s, group, topic, 12)
    t.join(30)
    assert len(seen) == 12
    lags = group_lag(s, group, [topic])
    assert sum(x.high for x in lags) == 15  # 12 records + 3 transaction markers
    assert sum(x.lag for x in lags) == 0


def _entry_bytes(i: int) -> bytes:
    from shared.events import encode

    return encode(
        BillingHistoryEntry(entry_type="Payment", description=f"p{i}", amount_minor=-i, date="2024-01-01T00:00:00Z"),
        "a",
    )
