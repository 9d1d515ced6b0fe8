"""Apache Kafka from jars as a test component: a restart, clean or after SIGKILL, keeps everything."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from shared import devinfra
from shared.devinfra import KAFKA_VERSION, ApacheKafka, apache_kafka_available
from shared.kafka.config import consumer_config, producer_config
from shared.settings import Settings
from shared.topics import HISTORY
from tests.conftest import _unavailable
from tests.helpers import read_all

# A group's coordinator on a broker that just started can answer "not ready yet" (the offsets topic is being
# created or loaded): librdkafka hands that back from a synchronous commit instead of retrying it.
COORDINATOR_NOT_READY = {
    KafkaError.NOT_COORDINATOR,
    KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
    KafkaError.COORDINATOR_NOT_AVAILABLE,
}


def commit_when_coordinator_ready(c: Consumer, offsets: list[TopicPartition], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            c.commit(offsets=offsets, asynchronous=False)
            return
        except KafkaException as e:
            if e.args[0].code() not in COORDINATOR_NOT_READY or time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def test_restart_on_the_same_data_dir_keeps_topics_records_offsets_and_transactions(
    private_apache_kafka: ApacheKafka, broker_settings_factory: Callable[..., Settings]
) -> None:
    s = broker_settings_factory(private_apache_kafka)
    topic = HISTORY.name(s.kafka_topic_prefix)
    p = Producer(producer_config(s, "t", transactional_id=s.kafka_topic_prefix + "node"))
    p.init_transactions(30)
    p.begin_transaction()
    for i in range(10):
        p.produce(topic, key=f"k{i}", value=f"v{i}".encode())
    p.commit_transaction(30)
    p.begin_transaction()
    p.produce(topic, key="open", value=b"left open when the broker dies")
    p.flush(10)
    group = s.kafka_topic_prefix + "g"
    c = Consumer(consumer_config(s, group, "t"))
    commit_when_coordinator_ready(c, [TopicPartition(topic, 0, 2)])
    c.close()

    private_apache_kafka.restart(crash=True)  # SIGKILL, then the same node on the same data dir

    assert sorted(r.value for r in read_all(s, topic, committed_only=True)) == sorted(
        f"v{i}".encode() for i in range(10)
    )  # the open transaction never became visible (it is aborted at its timeout, not committed)
    c = Consumer(consumer_config(s, group, "t"))
    assert c.committed([TopicPartition(topic, 0)], timeout=30)[0].offset == 2
    c.close()

    private_apache_kafka.restart()  # clean stop and start
    assert len(read_all(s, topic, committed_only=True)) == 10


def test_slow_jar_resolution_does_not_eat_the_brokers_start_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A first run resolves the jars with Maven before the broker starts; on a slow network that took most of
    the start timeout, and a broker that starts in seconds was reported as not ready.

    The slow Maven is an hour on devinfra's clock (a jump, not a sleep): before the fix the broker was left
    the 1 s floor and failed at once, now it gets its whole default budget, so a loaded CI machine whose
    broker takes 20 s to start still passes (a real 15 s sleep with a 15 s budget failed there)."""
    if why := apache_kafka_available():
        _unavailable(f"Apache Kafka {KAFKA_VERSION} (jars)", why)
    maven_s = 3600.0
    real = devinfra.ensure_kafka_jars
    skew = [0.0]

    class Clock:
        """devinfra's view of `time`: the real one, plus however long the fake Maven took."""

        @staticmethod
        def monotonic() -> float:
            return time.monotonic() + skew[0]

        sleep = staticmethod(time.sleep)

    def slow_maven(version: str = KAFKA_VERSION) -> Path:
        libs = real(version)
        skew[0] += maven_s
        return libs

    monkeypatch.setattr(devinfra, "time", Clock)
    monkeypatch.setattr(devinfra, "ensure_kafka_jars", slow_maven)
    broker = ApacheKafka(workdir=tmp_path / "kafka")
    try:
        broker.start()
        assert broker.resolve_seconds is not None and broker.resolve_seconds >= maven_s
        assert broker.start_seconds is not None and broker.start_seconds < maven_s
    finally:
        broker.stop()
