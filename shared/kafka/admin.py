"""Topic creation (idempotent), and the offsets/lag view that `cloudbill status` and tests use."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from confluent_kafka import Consumer, ConsumerGroupTopicPartitions, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from shared.kafka.config import base_config
from shared.settings import Settings
from shared.topics import specs

log = logging.getLogger(__name__)


def admin(settings: Settings) -> AdminClient:
    return AdminClient(base_config(settings, "cloudbill-admin"))


def create_topics(settings: Settings, timeout: float = 30.0) -> dict[str, str]:
    """Create every registry topic that is missing. Returns {topic: "created" | "exists"}."""
    client = admin(settings)
    wanted = specs(settings)
    existing = set(client.list_topics(timeout=timeout).topics)
    result = {s.name: "exists" for s in wanted if s.name in existing}
    new = [
        NewTopic(s.name, s.partitions, settings.kafka_replication_factor, config=s.config)
        for s in wanted
        if s.name not in existing
    ]
    if new:
        for name, fut in client.create_topics(new, operation_timeout=timeout).items():
            try:
                fut.result()
                result[name] = "created"
            except KafkaException as e:
                if e.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise
                result[name] = "exists"
    return result


@dataclass(frozen=True)
class PartitionLag:
    topic: str
    partition: int
    committed: int | None
    high: int

    @property
    def lag(self) -> int:
        return self.high - (self.committed if self.committed is not None and self.committed >= 0 else 0)


def high_watermarks(settings: Settings, topic: str, timeout: float = 10.0) -> dict[int, int]:
    """High watermark per partition, read from the fetch side.

    The embedded broker's *latest offset* lookup is wrong for batched writes (it answers the last
    batch's first offset + 1, never more than the truth). So we seek just before that answer and read
    to the partition's end: the EOF event carries the true high watermark. At most one batch is read.
    """
    probe = Consumer(
        base_config(settings, "cloudbill-watermarks")
        | {
            "group.id": "cloudbill-watermark-probe",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "isolation.level": "read_uncommitted",
            "fetch.max.bytes": 1048576,
        }
    )
    try:
        md = probe.list_topics(topic, timeout=timeout)
        parts = sorted(md.topics[topic].partitions) if topic in md.topics else []
        if not parts:
            return {}
        tps = []
        for p in parts:
            _low, reported = probe.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout, cached=False)
            tps.append(TopicPartition(topic, p, max(0, reported - 1)))
        probe.assign(tps)
        highs: dict[int, int] = {}
        deadline = time.monotonic() + timeout
        while len(highs) < len(parts):
            if time.monotonic() > deadline:
                raise KafkaException(KafkaError(KafkaError._TIMED_OUT, f"no end of {topic} within {timeout}s"))
            msg = probe.poll(0.2)
            if msg is not None and msg.error() and msg.error().code() == KafkaError._PARTITION_EOF:
                highs[msg.partition()] = msg.offset()
        return highs
    finally:
        probe.close()


def group_lag(settings: Settings, group: str, topics: list[str], timeout: float = 10.0) -> list[PartitionLag]:
    client = admin(settings)
    out: list[PartitionLag] = []
    for topic in topics:
        highs = high_watermarks(settings, topic, timeout)
        req = [ConsumerGroupTopicPartitions(group, [TopicPartition(topic, p) for p in sorted(highs)])]
        committed: dict[int, int] = {}
        try:
            res = client.list_consumer_group_offsets(req)[group].result()
            committed = {tp.partition: tp.offset for tp in res.topic_partitions}
        except KafkaException as e:
            log.debug("no committed offsets for %s on %s: %s", group, topic, e)
        for p, hi in sorted(highs.items()):
            out.append(PartitionLag(topic, p, committed.get(p), hi))
    return out
