"""The matcher app's faust settings that its correctness rests on (no broker needed)."""

from __future__ import annotations

import asyncio
import inspect

from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread
from mode.utils.queues import FlowControlEvent, FlowControlQueue

from services.matcher import faust_patches
from services.matcher.app import MAX_POLL_RECORDS, InventoryGate, MatcherOptions, create_app
from shared.settings import Settings


def test_a_poll_fits_in_the_room_faust_leaves_above_its_high_pressure_mark() -> None:
    """A poll larger than that room fills a stream's queue, and faust's conductor then waits for room with every
    partition behind it: the lines agent, waiting for the inventory gate, blocked the inventory's records."""
    faust_patches.apply_all()

    async def conf() -> tuple[int | None, int]:
        s = Settings(_env_file=None, kafka_bootstrap_servers="127.0.0.1:1", kafka_topic_prefix="t.")
        app = create_app(s, MatcherOptions(_env_file=None), InventoryGate({}, 0))
        return app.conf.broker_max_poll_records, app.conf.stream_buffer_maxsize

    max_poll_records, maxsize = asyncio.run(conf())
    assert max_poll_records == MAX_POLL_RECORDS
    queue: FlowControlQueue[object] = FlowControlQueue(maxsize=maxsize, flow_control=FlowControlEvent())
    assert 0 < MAX_POLL_RECORDS < queue.maxsize - queue.pressure_high_size
    # faust hands the setting to aiokafka's consumer, whose getmany returns at most that many records.
    assert "max_poll_records=conf.broker_max_poll_records" in inspect.getsource(AIOKafkaConsumerThread)
