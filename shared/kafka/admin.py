"""Topic creation (idempotent), and the offsets/lag view that `cloudbill status` and tests use."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import takewhile
from typing import cast

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    ConsumerGroupState,
    ConsumerGroupTopicPartitions,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic  # confluent_kafka.admin re-exports it, but not explicitly

from shared.kafka.config import base_config
from shared.kafka.records import Record
from shared.settings import Settings
from shared.topics import specs

log = logging.getLogger(__name__)


def admin(settings: Settings) -> AdminClient:
    return AdminClient(base_config(settings, "cloudbill-admin"))


def create_topics(settings: Settings, timeout: float = 30.0) -> dict[str, str]:
    """Create every registry topic that is missing. Returns {topic: "created" | "exists"}."""
    wanted = specs(settings)
    return ensure_topics(
        settings,
        [NewTopic(s.name, s.partitions, settings.kafka_replication_factor, config=s.config) for s in wanted],
        timeout,
    )


def ensure_topics(settings: Settings, topics: list[NewTopic], timeout: float = 30.0) -> dict[str, str]:
    """Create the missing ones among `topics`, then wait until the broker's metadata lists every one.

    Apache Kafka propagates a new topic's metadata asynchronously: a metadata request right after the
    create may not list it yet (seen: a KeyError on the topic just created). Returns {name: created|exists}.
    """
    client = admin(settings)
    existing = set(client.list_topics(timeout=timeout).topics)
    result = {t.topic: "exists" for t in topics if t.topic in existing}
    new = [t for t in topics if t.topic not in existing]
    if new:
        for name, fut in client.create_topics(new, operation_timeout=timeout).items():
            try:
                fut.result(timeout=timeout + 5)
                result[name] = "created"
            except KafkaException as e:
                if e.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise
                result[name] = "exists"
    deadline = time.monotonic() + timeout
    while True:
        md = client.list_topics(timeout=timeout)
        missing = [
            t.topic for t in new if t.topic not in md.topics or len(md.topics[t.topic].partitions) < t.num_partitions
        ]
        if not missing:
            return result
        if time.monotonic() > deadline:
            raise KafkaException(KafkaError(KafkaError._TIMED_OUT, f"topics not visible within {timeout}s: {missing}"))
        time.sleep(0.1)


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
        if err := msg.error():
            if err.code() == KafkaError._PARTITION_EOF:
                return
            continue
        yield msg
    raise KafkaException(KafkaError(KafkaError._TIMED_OUT, f"no partition end within {timeout}s"))


def high_watermarks(settings: Settings, topic: str, timeout: float = 10.0) -> dict[int, int]:
    """High watermark per partition.

    Apache Kafka answers the *latest offset* lookup exactly. The embedded broker's answer is wrong for
    batched writes (the last batch's first offset + 1, never more than the truth), so there we seek just
    before that answer and read to the partition's end: the EOF event carries the true high watermark.
    At most one batch is read.
    """
    probe = _probe(settings, "watermarks", **{"isolation.level": "read_uncommitted", "fetch.max.bytes": 1048576})
    try:
        md = probe.list_topics(topic, timeout=timeout)
        parts = sorted(md.topics[topic].partitions) if topic in md.topics else []
        if not parts:
            return {}
        reported = {
            p: probe.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout, cached=False)[1] for p in parts
        }
        if settings.kafka_broker_flavor != "embedded":
            return reported
        probe.assign([TopicPartition(topic, p, max(0, hi - 1)) for p, hi in reported.items()])
        highs: dict[int, int] = {}
        deadline = time.monotonic() + timeout
        while len(highs) < len(parts):
            if time.monotonic() > deadline:
                raise KafkaException(KafkaError(KafkaError._TIMED_OUT, f"no end of {topic} within {timeout}s"))
            msg = probe.poll(0.2)
            if msg is not None and (err := msg.error()) and err.code() == KafkaError._PARTITION_EOF:
                highs[cast(int, msg.partition())] = cast(int, msg.offset())  # both set on a consumed message
        return highs
    finally:
        probe.close()


def committed_offsets(
    settings: Settings, group: str, topic: str, partitions: list[int], timeout: float = 10.0
) -> dict[int, int]:
    """The group's committed offset per partition (negative: none), read by a consumer of the group that never
    joins it. Not the admin client's list_consumer_group_offsets: librdkafka 2.x crashes (SIGSEGV) when that
    request meets a coordinator that is not ready (NOT_COORDINATOR, load in progress: a fresh Apache Kafka, a
    group seen for the first time); it hands the retry to a consumer-group handle an admin client does not have
    (traced with gdb: rd_kafka_cgrp_op from rd_kafka_handle_OffsetFetch; librdkafka issue 5040).
    """
    if not partitions:
        return {}
    probe = Consumer(base_config(settings, "cloudbill-offsets") | {"group.id": group, "enable.auto.commit": False})
    try:
        res = probe.committed([TopicPartition(topic, p) for p in partitions], timeout=timeout)
        return {tp.partition: tp.offset for tp in res}
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
    out: list[PartitionLag] = []
    for topic in topics:
        highs = high_watermarks(settings, topic, timeout)
        committed: dict[int, int] = {}
        try:
            committed = committed_offsets(settings, group, topic, sorted(highs), timeout)
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
        return sum(1 for _ in takewhile(lambda m: cast(int, m.offset()) < end, _until_eof(probe, timeout)))
    finally:
        probe.close()


def read_topic(settings: Settings, topic: str, *, timeout: float = 20.0, committed_only: bool = True) -> list[Record]:
    """Every record of `topic` from its first offset to its end (partition EOF, right on any broker).

    For small topics (dead letters, tests, checks): everything is held in memory.
    """
    probe = _probe(
        settings, "reader", **{"isolation.level": "read_committed" if committed_only else "read_uncommitted"}
    )
    try:
        md = probe.list_topics(topic, timeout=10)
        if topic not in md.topics or md.topics[topic].error is not None:
            return []
        parts = sorted(md.topics[topic].partitions)
        probe.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
        done: set[int] = set()
        out: list[Record] = []
        deadline = time.monotonic() + timeout
        while len(done) < len(parts):
            if time.monotonic() > deadline:
                raise TimeoutError(f"did not reach the end of {topic} in {timeout}s ({len(out)} read)")
            msg = probe.poll(0.2)
            if msg is None:
                continue
            if err := msg.error():
                if err.code() == KafkaError._PARTITION_EOF:
                    done.add(cast(int, msg.partition()))  # set on a consumed message
                continue
            done.discard(cast(int, msg.partition()))
            out.append(Record.from_message(msg))
        return out
    finally:
        probe.close()


def latest_values(settings: Settings, topic: str, timeout: float = 20.0) -> dict[str, bytes | None]:
    """The last value per key of a (compacted) topic, None for a tombstone; {} without the topic.

    Existence is checked in the full topic list first: asking for the topic by name may make a broker
    auto-create it (the embedded broker would, with 4 partitions).
    """
    if topic not in admin(settings).list_topics(timeout=timeout).topics:
        return {}
    return {r.key: r.value for r in read_topic(settings, topic, timeout=timeout) if r.key is not None}


def read_record(settings: Settings, topic: str, partition: int, offset: int, timeout: float = 10.0) -> Record | None:
    """The record at one offset, or None when there is none (a marker's offset, or past the end)."""
    probe = _probe(settings, "reader", **{"isolation.level": "read_uncommitted"})
    try:
        probe.assign([TopicPartition(topic, partition, offset)])
        for msg in _until_eof(probe, timeout):
            return Record.from_message(msg) if msg.offset() == offset else None
        return None
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

    Apache Kafka answers "none" (-1) for a time past the end. The embedded broker answers 0 there, so on
    it an answer is checked by reading the record it points at: one older than `ts_ms` means "past the end".
    """
    highs = high_watermarks(settings, topic, timeout)
    probe = _probe(settings, "offsets-for-time")
    verify = settings.kafka_broker_flavor == "embedded"
    try:
        asked = [TopicPartition(topic, p, ts_ms) for p in sorted(highs)]
        found = {tp.partition: tp.offset for tp in probe.offsets_for_times(asked, timeout=timeout)}
        out: dict[int, int] = {}
        for p, hi in highs.items():
            off = found.get(p, -1)
            if off < 0 or off >= hi:
                out[p] = hi
                continue
            if not verify:
                out[p] = off
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
