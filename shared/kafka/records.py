"""A consumed message as a plain value, decoupled from confluent-kafka's Message."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

from confluent_kafka import Message, Producer

from shared.events import Envelope, EventData, decode


@dataclass(frozen=True)
class Record:
    topic: str
    partition: int
    offset: int
    key: str | None
    value: bytes | None
    headers: dict[str, bytes] = field(default_factory=dict)
    timestamp_ms: int | None = None

    @classmethod
    def from_message(cls, msg: Message) -> Record:
        key = msg.key()
        ts_type, ts = msg.timestamp()
        return cls(
            # A consumed message always has its topic, partition and offset (None only on a message not yet produced).
            topic=cast(str, msg.topic()),
            partition=cast(int, msg.partition()),
            offset=cast(int, msg.offset()),
            key=key.decode("utf-8", "replace") if isinstance(key, bytes) else key,
            value=msg.value(),
            # A consumed message's headers are a list of (key, bytes or None).
            headers={k: (v or b"") for k, v in cast("list[tuple[str, bytes | None]]", msg.headers() or [])},
            timestamp_ms=ts if ts_type else None,
        )

    @property
    def is_tombstone(self) -> bool:
        return self.value is None

    def event(self) -> tuple[Envelope, EventData]:
        """Decode the envelope; raises EventDecodeError (which dead-letters) for anything unknown."""
        return decode(self.value)


@dataclass(frozen=True)
class Out:
    """A record to produce."""

    topic: str
    key: str | None
    value: bytes | None
    headers: dict[str, str] = field(default_factory=dict)


def produce_out(
    producer: Producer,
    out: Out,
    *,
    on_delivery: Callable[[Any, Message], None] | None = None,
    wait_for_room: Callable[[], object] | None = None,
) -> None:
    """Produce `out`; while librdkafka's local queue is full (the broker is behind), wait for room and try
    again: never drop a record. Waiting serves delivery reports (`producer.poll`), which free the room, unless
    `wait_for_room` says otherwise."""
    kwargs: dict[str, Any] = {"on_delivery": on_delivery} if on_delivery is not None else {}
    while True:
        try:
            producer.produce(
                out.topic, key=out.key, value=out.value, headers=list(out.headers.items()) or None, **kwargs
            )
            return
        except BufferError:
            if wait_for_room is None:
                producer.poll(0.1)
            else:
                wait_for_room()


def topic_partition(msg: Message) -> tuple[str, int]:
    """A consumed message's (topic, partition); both are always set on a message a consumer returns."""
    return cast(str, msg.topic()), cast(int, msg.partition())
