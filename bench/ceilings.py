"""The machine's own ceilings: raw confluent-kafka produce/consume rates on the broker in use."""

from __future__ import annotations

import time
import uuid

from confluent_kafka import Consumer, KafkaError, Producer
from confluent_kafka.admin import AdminClient, NewTopic


def kafka_ceiling(bootstrap: str, messages: int = 200_000, size: int = 300, partitions: int = 3) -> dict[str, float]:
    topic = f"bench-ceiling-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})  # keep a reference until the future resolves
    admin.create_topics([NewTopic(topic, partitions, 1)])[topic].result(30)
    payload = b"x" * size
    p = Producer(
        {
            "bootstrap.servers": bootstrap,
            "linger.ms": 5,
            "acks": "all",
            "enable.idempotence": True,
            "queue.buffering.max.messages": 1_000_000,
        }
    )
    t0 = time.perf_counter()
    for i in range(messages):
        while True:
            try:
                p.produce(topic, key=str(i % 1000), value=payload)
                break
            except BufferError:
                p.poll(0.05)
        if i % 10000 == 0:
            p.poll(0)
    p.flush(120)
    produce_s = time.perf_counter() - t0
    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": topic,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "session.timeout.ms": 6000,
            "heartbeat.interval.ms": 1000,
        }
    )
    c.subscribe([topic])
    n, eof, t0 = 0, set(), None
    while len(eof) < partitions or n < messages:
        batch = c.consume(10000, 1.0)
        for m in batch:
            if m.error():
                if m.error().code() == KafkaError._PARTITION_EOF:
                    eof.add(m.partition())
                continue
            if t0 is None:
                t0 = time.perf_counter()  # exclude the group join from the rate
            n += 1
    consume_s = time.perf_counter() - (t0 or time.perf_counter())
    c.close()
    return {
        "messages": messages,
        "message_bytes": size,
        "produce_msgs_per_s": round(messages / produce_s),
        "consume_msgs_per_s": round(n / consume_s) if consume_s else 0,
    }
