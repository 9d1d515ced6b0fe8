"""The lines agent's batches (services/matcher/app.py `Collected`): a collector task reads the stream, the agent
takes batches by size or deadline, whatever the stream does meanwhile."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from hypothesis import given, settings
from hypothesis import strategies as st

from services.matcher.app import Collected


async def _then_parked(events: list[int], parked: asyncio.Event) -> AsyncIterator[int]:
    """A stream that hands out `events`, then waits forever: faust's stream after a stop or a rebalance
    cleared its queue (the fetcher is stopped, nothing more arrives)."""
    for e in events:
        yield e
    await parked.wait()


async def _take_all(collected: Collected, limit_s: float = 10.0) -> list[list[int]]:
    batches = []
    while (batch := await asyncio.wait_for(collected.take(), limit_s)) is not None:
        batches.append(batch)
    return batches


def test_a_partial_batch_is_taken_at_its_deadline_while_the_stream_waits_forever() -> None:
    """The CI failure: with a partial batch in hand, the old loop waited on the cleared queue, never acked, and
    faust's stop waited for those acks until its timeout. Here the agent gets the batch at its deadline."""

    async def run() -> tuple[list[int], float]:
        parked = asyncio.Event()
        collected = Collected(max_events=1000, wait_s=0.05)
        collector = asyncio.ensure_future(collected.collect(_then_parked(list(range(113)), parked)))
        loop = asyncio.get_running_loop()
        began = loop.time()
        batch = await asyncio.wait_for(collected.take(), 5.0)
        took = loop.time() - began
        assert not collector.done()  # still parked on the stream
        collector.cancel()
        assert batch is not None
        return batch, took

    batch, took = asyncio.run(run())
    assert batch == list(range(113))
    assert took < 2.0  # the deadline (0.05 s), not the 5 s guard


def test_a_full_batch_is_taken_at_once_and_the_collector_waits_for_room() -> None:
    async def run() -> tuple[list[int], int, list[int]]:
        parked = asyncio.Event()
        collected = Collected(max_events=10, wait_s=60.0)  # only size can end a batch in this test
        collector = asyncio.ensure_future(collected.collect(_then_parked(list(range(25)), parked)))
        first = await asyncio.wait_for(collected.take(), 5.0)
        await asyncio.sleep(0.01)  # the collector runs: it may fill the next batch, never past 10
        waiting = len(collected.events)
        second = await asyncio.wait_for(collected.take(), 5.0)
        collector.cancel()
        assert first is not None and second is not None
        return first, waiting, second

    first, waiting, second = asyncio.run(run())
    assert first == list(range(10))
    assert waiting == 10
    assert second == list(range(10, 20))


def test_the_end_of_the_stream_hands_over_the_rest_then_none() -> None:
    async def run() -> list[list[int]]:
        async def three() -> AsyncIterator[int]:
            for e in (1, 2, 3):
                yield e

        collected = Collected(max_events=100, wait_s=60.0)
        collector = asyncio.ensure_future(collected.collect(three()))
        batches = await _take_all(collected)
        await collector  # it ended by itself
        return batches

    assert asyncio.run(run()) == [[1, 2, 3]]


def test_a_stream_that_fails_hands_over_what_it_gave_then_its_error() -> None:
    class BrokerGone(Exception):
        pass

    async def run() -> tuple[list[int] | None, BaseException | None]:
        async def failing() -> AsyncIterator[int]:
            yield 1
            yield 2
            raise BrokerGone("the stream failed")

        collected = Collected(max_events=100, wait_s=60.0)
        collector = asyncio.ensure_future(collected.collect(failing()))
        first = await asyncio.wait_for(collected.take(), 5.0)
        try:
            await asyncio.wait_for(collected.take(), 5.0)
        except BrokerGone as e:
            assert collector.exception() is e  # the collector task failed with it too
            return first, e
        return first, None

    first, error = asyncio.run(run())
    assert first == [1, 2]
    assert isinstance(error, BrokerGone)


@settings(max_examples=60, deadline=None)
@given(
    chunks=st.lists(st.lists(st.integers(), max_size=40), max_size=12),
    max_events=st.integers(min_value=1, max_value=50),
)
def test_batches_are_the_stream_in_order_none_lost_none_doubled_none_too_big(
    chunks: list[list[int]], max_events: int
) -> None:
    """However the stream delivers (bursts with pauses between them), the batches put together are the stream."""

    async def run() -> list[list[int]]:
        async def bursts() -> AsyncIterator[int]:
            for chunk in chunks:
                for e in chunk:
                    yield e
                await asyncio.sleep(0.001)

        collected = Collected(max_events=max_events, wait_s=0.002)
        collector = asyncio.ensure_future(collected.collect(bursts()))
        batches = await _take_all(collected)
        await collector
        return batches

    batches = asyncio.run(run())
    assert [e for b in batches for e in b] == [e for c in chunks for e in c]
    assert all(0 < len(b) <= max_events for b in batches)
