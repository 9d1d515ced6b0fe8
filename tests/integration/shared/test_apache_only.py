"""Behaviour only Apache Kafka has (docs/architecture.md, Brokers): run whenever the fixtures got Apache Kafka."""

from __future__ import annotations

import time

import pytest
from confluent_kafka import Producer

from shared.kafka.config import producer_config
from shared.settings import Settings
from shared.topics import HISTORY, RESOURCES
from tests.helpers import read_all, wait_until


@pytest.mark.apache_kafka
def test_aborted_transaction_is_hidden_from_read_committed(kafka_settings: Settings) -> None:
    s = kafka_settings
    topic = HISTORY.name(s.kafka_topic_prefix)
    p = Producer(producer_config(s, "t", transactional_id=s.kafka_topic_prefix + "abort"))
    p.init_transactions(30)
    p.begin_transaction()
    p.produce(topic, key="k", value=b"aborted")
    p.flush()
    p.abort_transaction(30)
    p.begin_transaction()
    p.produce(topic, key="k", value=b"committed")
    p.commit_transaction(30)
    values = [r.value for r in read_all(s, topic, committed_only=True)]
    assert values == [b"committed"]


@pytest.mark.apache_kafka
def test_inventory_topic_is_compacted(kafka_settings: Settings) -> None:
    from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource

    s = kafka_settings
    topic = RESOURCES.name(s.kafka_topic_prefix)
    a = AdminClient({"bootstrap.servers": s.kafka_bootstrap_servers})
    res = ConfigResource(ConfigResource.Type.TOPIC, topic)
    cfg = a.describe_configs([res])[res].result()
    assert cfg["cleanup.policy"].value == "compact"

    # Compaction observed, not only configured: tiny segments and an eager cleaner on this test's topic.
    fast = {"segment.ms": "200", "min.cleanable.dirty.ratio": "0.001", "min.compaction.lag.ms": "0"}
    a.incremental_alter_configs(
        [
            ConfigResource(
                ConfigResource.Type.TOPIC,
                topic,
                incremental_configs=[
                    ConfigEntry(k, v, incremental_operation=AlterConfigOpType.SET) for k, v in fast.items()
                ],
            )
        ]
    )[res].result()
    p = Producer(producer_config(s, "t"))
    for i in range(5):
        p.produce(topic, key="acct:droplet:1", value=f"v{i}".encode(), partition=0)
        p.flush(10)
        time.sleep(0.3)  # each value in its own segment (segment.ms): the cleaner can drop the older ones

    def compacted() -> list[bytes] | None:
        p.produce(topic, key="acct:roll", value=b"x", partition=0)  # rolls the active segment
        p.flush(10)
        values = [r.value for r in read_all(s, topic) if r.key == "acct:droplet:1"]
        return values if values == [b"v4"] else None

    assert wait_until(compacted, timeout=60, interval=1, what="older values compacted away") == [b"v4"]
