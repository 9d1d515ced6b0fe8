"""Topic creation (idempotent), and the offsets/lag view that `cloudbill status` and tests use."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import takewhile

from confluent_kafka import (
    Consumer,
    ConsumerGroupState,
    ConsumerGroupTopicPartitions,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)
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
                fut.result(timeout=timeout + 5)
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
    pending: int | None = None  # records still to process, when counted (see group_lag)

    @property
    def lag(self) -> int:
        if self.pending is not None:
            return self.pending
        return self.high - (self.committed if self.committed is not None and self.committed >= 0 else 0)


def _probe(settings: Settings, name: str, **extra: object) -> Consumer:
    """A throwaway consumer for reading offsets and records: never commits, reports partition ends."""
    return Consumer(
        base_config(settings, f"cloudbill-{name}")
        | {"group.id": f"cloudbill-{name}-probe", "enable.auto.commit": False, "enable.partition.eof": True}
        | extra
    )


def _until_eof(probe: Consumer, timeout: float) -> Iterator[Message]:
    """The assigned partition's records up to its end; a TimeoutError-like KafkaException past `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        msg = probe.poll(0.2)
        if msg is None:
            continue
        if msg.error():
            if msg.error().code() == KafkaError._PARTITION_EOF:
                return
            continue
        yield msg
    raise KafkaException(KafkaError(KafkaError._TIMED_OUT, f"no partition end within {timeout}s"))


def high_watermarks(settings: Settings, topic: str, timeout: float = 10.0) -> dict[int, int]:
    """High watermark per partition, read from the fetch side.

    The embedded broker's *latest offset* lookup is wrong for batched writes (it answers the last
    batch's first offset + 1, never more than the truth). So we seek just before that answer and read
    to the partition's end: the EOF event carries the true high watermark. At most one batch is read.
    """
    probe = _probe(settings, "watermarks", **{"isolation.level": "read_uncommitted", "fetch.max.bytes": 1048576})
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


def group_lag(
    settings: Settings, group: str, topics: list[str], timeout: float = 10.0, *, count_below: int = 1000
) -> list[PartitionLag]:
    """Per partition: committed offset, high watermark and the records still to process.

    Offsets are not records: a transactional topic holds a control record after every transaction,
    which no consumer ever receives, so a caught-up consumer of it stays an offset or more behind the
    high watermark. Where the offset difference is small (< count_below) the records left are counted
    by reading them; above that the offset difference is reported (control records are a rounding error).
    """
    client = admin(settings)
    out: list[PartitionLag] = []
    for topic in topics:
        highs = high_watermarks(settings, topic, timeout)
        req = [ConsumerGroupTopicPartitions(group, [TopicPartition(topic, p) for p in sorted(highs)])]
        committed: dict[int, int] = {}
        try:
            res = client.list_consumer_group_offsets(req, request_timeout=timeout)[group].result(timeout=timeout + 5)
            committed = {tp.partition: tp.offset for tp in res.topic_partitions}
        except KafkaException as e:
            log.debug("no committed offsets for %s on %s: %s", group, topic, e)
        for p, hi in sorted(highs.items()):
            lag = PartitionLag(topic, p, committed.get(p), hi)
            if 0 < lag.lag < count_below:
                start = lag.committed if lag.committed is not None and lag.committed >= 0 else 0
                lag = PartitionLag(
                    topic, p, committed.get(p), hi, count_records(settings, topic, p, start, hi, timeout)
                )
            out.append(lag)
    return out


def count_records(settings: Settings, topic: str, partition: int, start: int, end: int, timeout: float = 10.0) -> int:
    """Records a read_committed consumer would receive in [start, end) of one partition."""
    probe = _probe(settings, "lag-count", **{"isolation.level": "read_committed"})
    try:
        probe.assign([TopicPartition(topic, partition, start)])
        return sum(1 for _ in takewhile(lambda m: m.offset() < end, _until_eof(probe, timeout)))
    finally:
        probe.close()


class GroupActiveError(RuntimeError):
    """Kafka refuses to move a group's offsets while it has members."""


def group_members(settings: Settings, group: str, timeout: float = 10.0) -> list[str]:
    """Who holds the group: member client ids, or its state when the broker lists no members.

    Empty means nobody consumes (state EMPTY, DEAD or unknown group). The embedded broker reports a
    STABLE group with an empty member list, so the state is checked as well as the members.
    """
    client = admin(settings)
    desc = client.describe_consumer_groups([group], request_timeout=timeout)[group].result(timeout=timeout + 5)
    members = [f"{m.client_id}@{m.host}" for m in desc.members]
    idle = {ConsumerGroupState.EMPTY, ConsumerGroupState.DEAD, ConsumerGroupState.UNKNOWN}
    if not members and desc.state not in idle:
        members = [f"(group state {desc.state.name.lower()})"]
    return members


def offsets_for_time(settings: Settings, topic: str, ts_ms: int, timeout: float = 10.0) -> dict[int, int]:
    """First offset at or after `ts_ms` per partition; the end when there is none.

    The embedded broker answers 0 for a time past the end (Kafka answers the end), so an answer is
    checked by reading the record it points at: one older than `ts_ms` means "past the end".
    """
    highs = high_watermarks(settings, topic, timeout)
    probe = _probe(settings, "offsets-for-time")
    try:
        asked = [TopicPartition(topic, p, ts_ms) for p in sorted(highs)]
        found = {tp.partition: tp.offset for tp in probe.offsets_for_times(asked, timeout=timeout)}
        out: dict[int, int] = {}
        for p, hi in highs.items():
            off = found.get(p, -1)
            if off < 0 or off >= hi:
                out[p] = hi
                continue
            probe.assign([TopicPartition(topic, p, off)])
            ts = next((m.timestamp()[1] for m in _until_eof(probe, timeout)), None)
            out[p] = hi if ts is not None and ts < ts_ms else off
            probe.unassign()
        return out
    finally:
        probe.close()


def rewind_group(
    settings: Settings, group: str, topics: list[str], *, to_ms: int | None = None, timeout: float = 10.0
) -> dict[str, dict[int, int]]:
    """Move a stopped group's offsets to the beginning (to_ms=None) or to a point in time.

    Refuses, with the members named, while the group has members: Kafka would refuse too, and a
    running stage would overwrite the offsets at its next commit anyway.
    """
    members = group_members(settings, group, timeout)
    if members:
        raise GroupActiveError(
            f"consumer group {group!r} has {len(members)} active member(s) ({', '.join(members)}): "
            "stop that stage first, then replay"
        )
    plan: dict[str, dict[int, int]] = {}
    for topic in topics:
        if to_ms is None:
            plan[topic] = {p: 0 for p in high_watermarks(settings, topic, timeout)}
        else:
            plan[topic] = offsets_for_time(settings, topic, to_ms, timeout)
    req = [
        ConsumerGroupTopicPartitions(group, [TopicPartition(t, p, o) for t, po in plan.items() for p, o in po.items()])
    ]
    client = admin(settings)  # keep a reference: a collected client never resolves its futures
    try:
        client.alter_consumer_group_offsets(req, request_timeout=timeout)[group].result(timeout=timeout + 5)
    except KafkaException as e:
        if e.args[0].code() in (KafkaError.UNKNOWN_MEMBER_ID, KafkaError.REBALANCE_IN_PROGRESS):
            raise GroupActiveError(f"consumer group {group!r} became active: stop that stage first") from e
        raise
    return plan
