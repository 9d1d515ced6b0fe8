"""The matcher's output batches: one future per batch, resolved on the event loop from librdkafka's reports
(served on another thread), failed by the first record not delivered. The producer itself: integration."""

from __future__ import annotations

import asyncio
import threading

import pytest
from confluent_kafka import KafkaError

from services.matcher.outputs import OutputNotDelivered, _Batch


def _report_from_thread(batch: _Batch, errors: list[KafkaError | None]) -> None:
    def serve() -> None:
        for err in errors:
            batch.on_delivery(err, None)  # type: ignore[arg-type]

    t = threading.Thread(target=serve)
    t.start()
    t.join()


def test_a_batch_resolves_when_its_last_record_is_reported() -> None:
    async def scenario() -> bool:
        batch = _Batch(asyncio.get_running_loop(), 3)
        _report_from_thread(batch, [None, None])
        await asyncio.sleep(0.01)
        assert not batch.future.done()
        _report_from_thread(batch, [None])
        await asyncio.wait_for(batch.future, 1)
        return True

    assert asyncio.run(scenario())


def test_a_batch_fails_with_the_first_record_not_delivered() -> None:
    async def scenario() -> None:
        batch = _Batch(asyncio.get_running_loop(), 3)
        first = KafkaError(KafkaError._MSG_TIMED_OUT, "timed out")
        _report_from_thread(batch, [None, first, KafkaError(KafkaError._TRANSPORT)])
        await asyncio.wait_for(batch.future, 1)

    with pytest.raises(OutputNotDelivered, match="timed out"):
        asyncio.run(scenario())


def test_a_report_after_the_loop_closed_is_dropped_quietly() -> None:
    loop = asyncio.new_event_loop()
    batch = _Batch(loop, 1)
    loop.close()
    _report_from_thread(batch, [None])  # no exception on the report thread
    assert not batch.future.done()
