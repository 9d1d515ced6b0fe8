"""The matcher's output producer on the real broker: a batch is one future, resolved once every record is
delivered; records keep their order, keys and headers, in the partition faust's producer chose (murmur2)."""

from __future__ import annotations

import asyncio

from aiokafka.partitioner import DefaultPartitioner

from services.matcher.outputs import Outputs
from shared.kafka import create_topics
from shared.kafka.records import Out
from shared.settings import Settings
from shared.topics import COST_LINES_MATCHED
from tests.helpers import read_all


def test_a_batch_is_delivered_in_order_in_the_partition_faust_chose(kafka_settings: Settings) -> None:
    create_topics(kafka_settings)
    topic = COST_LINES_MATCHED.name(kafka_settings.kafka_topic_prefix)
    keys = [f"invoice-{k}" for k in range(20)]
    outs = [Out(topic, keys[i % 20], f"line-{i}".encode(), {"x-n": str(i)}) for i in range(2_000)]
    outputs = Outputs(kafka_settings, "test-outputs")

    async def send() -> None:
        futures = [outputs.send(outs[i : i + 500]) for i in range(0, len(outs), 500)]
        await asyncio.wait_for(asyncio.gather(*[f for f in futures if f is not None]), 60)
        assert outputs.send([]) is None

    try:
        asyncio.run(send())
    finally:
        outputs.close()
    got = read_all(kafka_settings, topic)
    assert sorted(r.value for r in got) == sorted(o.value for o in outs)  # every record once
    partitions = list(range(kafka_settings.kafka_partitions))
    murmur2 = DefaultPartitioner()
    for r in got:
        assert r.partition == murmur2(r.key.encode(), partitions, partitions), r.key
        assert r.headers["x-n"] == r.value.decode().removeprefix("line-").encode()
    for key in keys:  # per key, in the order sent
        sent = [o.value for o in outs if o.key == key]
        assert [r.value for r in sorted(got, key=lambda r: r.offset) if r.key == key] == sent
