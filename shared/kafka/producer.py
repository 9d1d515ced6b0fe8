"""Idempotent producer (acks=all) with delivery errors raised, never lost in a callback."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer

from shared.events import EventData, encode
from shared.kafka.config import producer_config
from shared.kafka.records import Out, produce_out
from shared.settings import Settings

log = logging.getLogger(__name__)


class DeliveryError(KafkaException):
    pass


class EventProducer:
    def __init__(self, settings: Settings, client_id: str, *, config: dict[str, Any] | None = None) -> None:
        self._producer = Producer(producer_config(settings, client_id) | (config or {}))
        self._errors: list[KafkaError] = []
        self._closed = False
        self.sent = 0

    def _on_delivery(self, err: KafkaError | None, _msg: object) -> None:
        if err is not None:
            self._errors.append(err)

    def produce(self, out: Out) -> None:
        produce_out(self._producer, out, on_delivery=self._on_delivery)
        self._producer.poll(0)
        self.sent += 1

    def produce_many(self, outs: Iterable[Out]) -> None:
        for o in outs:
            self.produce(o)

    def publish(self, topic: str, key: str | None, data: EventData, account: str) -> None:
        self.produce(Out(topic, key, encode(data, account)))

    def flush(self, timeout: float = 30.0) -> None:
        """Wait for every delivery; raise if any failed or the timeout passed with messages in flight."""
        remaining = self._producer.flush(timeout)
        if self._errors:
            err, self._errors = self._errors[0], []
            raise DeliveryError(err)
        if remaining:
            raise DeliveryError(
                KafkaError(KafkaError._TIMED_OUT, f"{remaining} message(s) not delivered in {timeout}s")
            )

    def close(self, timeout: float = 10.0) -> None:
        """Deliver what is queued, then release the client (its connections and threads) now, not at GC.

        A delivery failure still raises (from flush); the client is released either way. Idempotent.
        """
        if self._closed:
            return
        try:
            self.flush(timeout)
        finally:
            self._closed = True
            self._producer.close()

    @property
    def raw(self) -> Producer:
        return self._producer
