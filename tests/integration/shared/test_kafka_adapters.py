"""The shared Kafka adapters against the real broker the fixtures started."""

from __future__ import annotations

import threading
import time

from confluent_kafka import Consumer, Producer

from shared.events import BillingHistoryEntry, encode
from shared.kafka import (
    ConsumerLoop,
    EventProducer,
    Out,
    Record,
    StopSignal,
    TransactionalProcessor,
    create_topics,
)
from shared.kafka import deadletter as dl
from shared.kafka.admin import committed_offsets
from shared.kafka.config import producer_config
from shared.kafka.records import produce_out
from shared.settings import Settings
from shared.topics import HISTORY, INVOICE_DISCOVERED
from tests.helpers import read_all, wait_until


def _entry(i: int) -> BillingHistoryEntry:
    return BillingHistoryEntry(
        entry_type="Payment", description=f"Payment {i}", amount_minor=-i, date="2024-01-01T00:00:00Z"
    )


def _run_loop(loop: ConsumerLoop) -> threading.Thread:
    t = threading.Thread(target=loop.run, daemon=True)
    t.start()
    return t


def _committed(s: Settings, group: str, topic: str) -> dict[int, int]:
    offsets = committed_offsets(s, group, topic, list(range(s.kafka_partitions)))
    return {p: o for p, o in offsets.items() if o >= 0}


def test_topics_create_is_idempotent(kafka_settings: Settings) -> None:
    again = create_topics(kafka_settings)
    assert set(again.values()) == {"exists"}
    assert HISTORY.dlq(kafka_settings.kafka_topic_prefix) in again


def test_round_trip_commits_after_processing_and_resumes_after_restart(kafka_settings: Settings) -> None:
    s = kafka_settings
    topic = HISTORY.name(s.kafka_topic_prefix)
    group = s.kafka_topic_prefix + "roundtrip"
    prod = EventProducer(s, "test")
    for i in range(10):
        prod.publish(topic, "acct", _entry(i), "acct")
    prod.flush()

    seen: list[int] = []
    stop = StopSignal()

    def handle(rec: Record) -> None:
        _env, data = rec.event()
        seen.append(-data.amount_minor)
        if len(seen) == 10:
            stop.set()

    loop = ConsumerLoop(s, service="t", group=group, topics=[topic], handler=handle, stop=stop)
    _run_loop(loop).join(30)
    assert sorted(seen) == list(range(10))
    assert sum(_committed(s, group, topic).values()) == 10

    # More records while the consumer is down; a restarted consumer resumes after the committed offset.
    for i in range(10, 15):
        prod.publish(topic, "acct", _entry(i), "acct")
    prod.flush()
    seen2: list[int] = []
    stop2 = StopSignal()

    def handle2(rec: Record) -> None:
        seen2.append(-rec.event()[1].amount_minor)
        if len(seen2) == 5:
            stop2.set()

    loop2 = ConsumerLoop(s, service="t", group=group, topics=[topic], handler=handle2, stop=stop2)
    _run_loop(loop2).join(30)
    assert sorted(seen2) == [10, 11, 12, 13, 14]


def test_poison_message_lands_in_dlq_with_headers_and_does_not_block(kafka_settings: Settings) -> None:
    s = kafka_settings
    topic = HISTORY.name(s.kafka_topic_prefix)
    prod = EventProducer(s, "test")
    prod.produce(Out(topic, "acct", b"{not json"))
    prod.produce(
        Out(
            topic,
            "acct",
            b'{"event_id":"x","type":"billing.nope","schema_version":1,'
            b'"occurred_at":"2024-01-01T00:00:00Z","account":"a","data":{}}',
        )
    )
    prod.publish(topic, "acct", _entry(1), "acct")
    prod.flush()
    good: list[str] = []
    stop = StopSignal()

    def handle(rec: Record) -> None:
        env, _ = rec.event()
        good.append(env.event_id)
        stop.set()

    loop = ConsumerLoop(
        s, service="t", group=s.kafka_topic_prefix + "poison", topics=[topic], handler=handle, stop=stop
    )
    _run_loop(loop).join(30)
    assert len(good) == 1
    dead = read_all(s, HISTORY.dlq(s.kafka_topic_prefix))
    assert len(dead) == 2
    first, second = sorted(dead, key=lambda r: int(r.headers[dl.H_OFFSET]))
    assert first.value == b"{not json"
    assert first.headers[dl.H_TOPIC].decode() == topic
    assert first.headers[dl.H_PARTITION].decode().isdigit()
    assert first.headers[dl.H_ERROR_CLASS].decode() == "shared.events.EventDecodeError"
    assert b"not an event envelope" in first.headers[dl.H_ERROR_MESSAGE]
    assert b"unknown event type 'billing.nope'" in second.headers[dl.H_ERROR_MESSAGE]


def test_a_slow_handler_gets_its_batch_cut_and_refetched_without_loss_or_duplicate(kafka_settings: Settings) -> None:
    """Records are fetched in batches; a batch that takes longer than max_batch_s is cut and the rest fetched
    again (seek), so consume() is called often enough for the group, and each record is handled once, in order."""
    s = kafka_settings
    topic = HISTORY.name(s.kafka_topic_prefix)
    prod = EventProducer(s, "test")
    for i in range(12):
        prod.publish(topic, "acct", _entry(i), "acct")  # one key: one partition, one order
    prod.flush()
    seen: list[int] = []
    stop = StopSignal()

    def slow(rec: Record) -> None:
        time.sleep(0.1)
        seen.append(-rec.event()[1].amount_minor)
        if len(seen) == 12:
            stop.set()

    loop = ConsumerLoop(
        s, service="t", group=s.kafka_topic_prefix + "slow", topics=[topic], handler=slow, stop=stop, max_batch_s=0.25
    )
    calls = 0
    consume = loop.consumer.consume

    class Counting:  # confluent-kafka's Consumer cannot be patched: wrap it
        def __getattr__(self, name: str) -> object:
            return getattr(loop_consumer, name)

        def consume(self, *a: object) -> list:
            nonlocal calls
            batch = consume(*a)
            calls += bool([m for m in batch if not m.error()])
            return batch

    loop_consumer = loop.consumer
    loop.consumer = Counting()  # type: ignore[assignment]
    _run_loop(loop).join(60)
    assert seen == list(range(12))
    assert calls >= 4  # ~3 records per 0.25 s batch: the 12 records came in several fetches
    assert sum(_committed(s, s.kafka_topic_prefix + "slow", topic).values()) == 12


def _run_transactional(s: Settings, group: str, src: str, n: int, transform) -> list[int]:
    """Seed `n` records on `src`, run a TransactionalProcessor until all `n` are committed; their offsets."""
    prod = EventProducer(s, "test")
    for i in range(n):
        prod.produce(Out(src, f"k{i}", encode(_entry(i), "acct")))
    prod.flush()
    stop = StopSignal()
    done: list[int] = []

    def after(rec: Record) -> None:
        done.append(rec.offset)
        if len(done) == n:
            stop.set()

    proc = TransactionalProcessor(
        s,
        service="t",
        group=group,
        topics=[src],
        transform=transform,
        stop=stop,
        after_commit=after,
        transactional_id=group + ".1",
    )
    t = threading.Thread(target=proc.run, daemon=True)
    t.start()
    t.join(60)
    return done


def test_transaction_commits_records_and_offsets_together(kafka_settings: Settings) -> None:
    s = kafka_settings
    src = INVOICE_DISCOVERED.name(s.kafka_topic_prefix)
    dst = HISTORY.name(s.kafka_topic_prefix)
    group = s.kafka_topic_prefix + "txn"
    done = _run_transactional(
        s, group, src, 3, lambda rec: [Out(dst, rec.key, rec.value), Out(dst, rec.key, rec.value)]
    )
    assert len(done) == 3
    out = read_all(s, dst)
    assert len(out) == 6
    assert sum(_committed(s, group, src).values()) == 3


def test_caught_up_detection_uses_partition_eof(kafka_settings: Settings) -> None:
    s = kafka_settings
    topic = HISTORY.name(s.kafka_topic_prefix)
    prod = EventProducer(s, "test")
    for i in range(50):
        prod.publish(topic, f"k{i}", _entry(i), "acct")
    prod.flush()
    from shared.kafka import high_watermarks

    highs = wait_until(
        lambda: high_watermarks(s, topic) if sum(high_watermarks(s, topic).values()) == 50 else None,
        timeout=20,
        what="watermarks",
    )
    assert sum(highs.values()) == 50
    c = Consumer({"bootstrap.servers": s.kafka_bootstrap_servers, "group.id": "x"})
    c.close()


def test_record_with_no_outputs_still_commits_its_offset(kafka_settings: Settings) -> None:
    """A transform that decides 'nothing to do' must still move the group past the record."""
    s = kafka_settings
    src = INVOICE_DISCOVERED.name(s.kafka_topic_prefix)
    group = s.kafka_topic_prefix + "noop"
    done = _run_transactional(s, group, src, 4, lambda rec: [])
    assert len(done) == 4
    assert sum(_committed(s, group, src).values()) == 4


def test_producer_close_delivers_what_is_queued_and_releases_the_client(kafka_settings: Settings) -> None:
    s = kafka_settings
    topic = HISTORY.name(s.kafka_topic_prefix)
    before = len(read_all(s, topic))
    prod = EventProducer(s, "test-close")
    for i in range(5):
        prod.publish(topic, "acct-close", _entry(i), "acct-close")
    prod.close()  # no flush first: close delivers
    prod.close()  # idempotent (owners close in `finally` blocks)
    assert len(read_all(s, topic)) == before + 5
    try:
        prod.publish(topic, "acct-close", _entry(9), "acct-close")
    except RuntimeError as e:
        assert "closed" in str(e)
    else:
        raise AssertionError("a closed producer must refuse to produce")


def test_a_full_local_queue_waits_for_room_and_drops_nothing(kafka_settings: Settings) -> None:
    """librdkafka refuses a record (BufferError) while its local queue is full, as when the broker is behind:
    `produce_out` waits for room and tries again, in order, so every record arrives once."""
    s = kafka_settings
    topic = HISTORY.name(s.kafka_topic_prefix)
    # A queue of 3 records and no lingering: 300 records overflow it many times.
    prod = Producer(producer_config(s, "test-full-queue") | {"queue.buffering.max.messages": 3, "linger.ms": 0})
    waits, delivered = [0], []

    def wait_for_room() -> None:
        waits[0] += 1
        prod.poll(0.05)

    def on_delivery(err: object, _msg: object) -> None:
        delivered.append(err)

    for i in range(300):
        produce_out(
            prod, Out(topic, "acct-full", f"r{i}".encode()), wait_for_room=wait_for_room, on_delivery=on_delivery
        )
    assert prod.flush(30) == 0
    assert waits[0] > 0  # the queue was full: the path under test ran
    assert delivered == [None] * 300  # every record reported delivered, none failed
    got = [r.value for r in read_all(s, topic) if r.key == "acct-full"]
    assert got == [f"r{i}".encode() for i in range(300)]  # one key, one partition: in order, none twice
