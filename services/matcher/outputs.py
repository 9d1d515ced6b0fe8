"""The matcher's output records (enriched lines, completions, dead letters) through librdkafka, not faust.

faust's producer (aiokafka, pure Python) cost about 180 CPU µs per record in the matcher, a third of its
work per cost line (measured by the bench's matcher stage alone: 527 → 348 µs per line without the enriched
lines' sends). confluent-kafka produces in C. Delivery keeps faust's contract: each batch's records are one
asyncio future, resolved by a background thread that serves librdkafka's delivery reports, and handed to
faust's producer buffer (`faust_patches.track_delivery`), so an offset commit waits until the records its
batch produced are delivered, and a failed delivery fails the commit (the batch is processed again:
at-least-once, with byte-identical outputs).

Partitions are chosen as faust's producer chose them (murmur2 of the key, Java's partitioner), so an
invoice's records stay in the partition they were in before this module existed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Sequence

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from shared.kafka.config import producer_config
from shared.kafka.records import Out, produce_out
from shared.settings import Settings

log = logging.getLogger(__name__)


class OutputNotDelivered(KafkaException):
    """A record of the batch was not delivered (the broker refused it, or it timed out)."""


class _Batch:
    """One batch's records in flight: its future resolves on the event loop when the last is reported."""

    def __init__(self, loop: asyncio.AbstractEventLoop, count: int) -> None:
        self.loop = loop
        self.future: asyncio.Future[None] = loop.create_future()
        self.left = count
        self.error: KafkaError | None = None

    def on_delivery(self, err: KafkaError | None, _msg: Message) -> None:
        """librdkafka's delivery report (on the poll thread)."""
        if err is not None and self.error is None:
            self.error = err
        self.left -= 1
        if self.left == 0:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
                self.loop.call_soon_threadsafe(self._resolve)

    def _resolve(self) -> None:
        if self.future.done():
            return
        if self.error is None:
            self.future.set_result(None)
        else:
            self.future.set_exception(OutputNotDelivered(self.error))


class Outputs:
    """An idempotent librdkafka producer and the thread that serves its delivery reports."""

    def __init__(self, settings: Settings, client_id: str) -> None:
        self._producer = Producer(producer_config(settings, client_id) | {"partitioner": "murmur2_random"})
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve_reports, name=f"{client_id}-deliveries", daemon=True)
        self._thread.start()

    def _serve_reports(self) -> None:
        while not self._stop.is_set():
            self._producer.poll(0.05)

    def send(self, outs: Sequence[Out]) -> asyncio.Future[None] | None:
        """Produce `outs` in order; the future resolves once all are delivered (None: nothing to send).
        Call from the event loop."""
        if not outs:
            return None
        batch = _Batch(asyncio.get_running_loop(), len(outs))
        for o in outs:
            # A full queue: the broker is behind; the report thread's polls free room.
            produce_out(self._producer, o, on_delivery=batch.on_delivery, wait_for_room=lambda: time.sleep(0.01))
        return batch.future

    def close(self, timeout: float = 10.0) -> None:
        """Deliver what is queued (bounded), stop the report thread, release the client. Idempotent."""
        if self._stop.is_set():
            return
        remaining = self._producer.flush(timeout)
        if remaining:
            log.warning("%d output record(s) not delivered at close: their batches are processed again", remaining)
        self._stop.set()
        self._thread.join(timeout)
        self._producer.close()  # its connections and threads now, not when the app is garbage-collected
