"""Behaviour only Apache Kafka has (brief's broker notes): run whenever the fixtures got Apache Kafka."""

from __future__ import annotations

import pytest
from confluent_kafka import Producer

from shared.kafka.config import producer_config
from shared.settings import Settings
from shared.topics import HISTORY, RESOURCES
from tests.helpers import read_all


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
    from confluent_kafka.admin import AdminClient, ConfigResource

    s = kafka_settings
    topic = RESOURCES.name(s.kafka_topic_prefix)
    a = AdminClient({"bootstrap.servers": s.kafka_bootstrap_servers})
    res = ConfigResource(ConfigResource.Type.TOPIC, topic)
    cfg = a.describe_configs([res])[res].result()
    assert cfg["cleanup.policy"].value == "compact"
