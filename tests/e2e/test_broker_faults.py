"""What only a real broker allows: the broker killed mid-run, and a consumer group rebalancing mid-invoice.

Every service runs as its own OS process (as in production) on Apache Kafka; the account is generated
with hundreds of lines per invoice. Each test asserts on finance rows and read models, not on logs.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from confluent_kafka import Producer

from shared.db import connect
from shared.devinfra import ApacheKafka
from shared.events import encode
from shared.kafka.config import producer_config
from shared.topics import COST_LINES, COST_LINES_MATCHED, INVOICE_COMPLETED
from tests.conftest import KafkaUnderTest
from tests.e2e.support import (
    assert_exactly_once,
    finance_rows,
    generated_account,
    lines_projected,
    start_stack,
    wait_converged,
)
from tests.factories import cost_line, invoice_end
from tests.helpers import read_all, wait_until
from tests.integration.matcher.support import MARKER


def test_broker_sigkill_mid_pipeline_loses_and_doubles_nothing(
    private_apache_kafka: ApacheKafka, database_url: str, tmp_path: Path
) -> None:
    account = generated_account(tmp_path / "account", invoices=24, lines=300, seed=13)
    stack = start_stack(
        tmp_path / "stack",
        account,
        bootstrap=private_apache_kafka.bootstrap,
        flavor="apache",
        database_url=database_url,
    )
    try:
        stack.poll_now("all")
        # Mid-run: some lines through the whole pipeline, most invoices not yet in finance.
        wait_until(lambda: lines_projected(stack) >= 500, timeout=180, interval=0.2, what="pipeline under way")
        before = len(finance_rows(stack))
        assert before < account.invoices, "too late: the run finished before the broker was killed"
        private_apache_kafka.kill()
        time.sleep(5)  # the services see the broker gone (connections refused) before it comes back
        private_apache_kafka.start()
        wait_converged(stack, account, idle_timeout=150)
        assert_exactly_once(stack, account)
    finally:
        stack.stop()


def test_group_rebalance_mid_invoice_second_ingester_and_matcher_join_then_one_leaves(
    kafka: KafkaUnderTest, database_url: str, tmp_path: Path
) -> None:
    account = generated_account(tmp_path / "account", invoices=24, lines=300, seed=21)
    stack = start_stack(
        tmp_path / "stack", account, bootstrap=kafka.bootstrap, flavor=kafka.flavor, database_url=database_url
    )
    try:
        stack.poll_now("all")
        wait_until(lambda: lines_projected(stack) >= 300, timeout=180, interval=0.2, what="pipeline under way")
        assert len(finance_rows(stack)) < account.invoices, "too late: the run finished before the rebalance"
        # Two more members join the ingester's and the matcher's groups (partitions move mid-invoice).
        env = stack.env()
        stack.spawn("ingester-2", ["run", "ingester"], env=env | {"CLOUDBILL_INSTANCE_ID": "ingester-2"})
        stack.spawn(
            "matcher-2",
            ["run", "matcher"],
            env=env | {"CLOUDBILL_INSTANCE_ID": "matcher-2", "MATCHER_DATADIR": str(tmp_path / "matcher-2")},
        )
        wait_until(lambda: lines_projected(stack) >= 1500, timeout=180, interval=0.2, what="progress after joining")
        # ...then the first ones leave (SIGTERM, as a scale-down does): their partitions move again.
        for name in ("ingester", "matcher"):
            child = stack.children.pop(name)
            assert child.proc is not None
            child.proc.terminate()
            child.proc.wait(60)
        wait_converged(stack, account, idle_timeout=150)
        assert_exactly_once(stack, account)
    finally:
        stack.stop()


@pytest.mark.apache_kafka
def test_aborted_ingester_transaction_is_never_acted_on(
    kafka: KafkaUnderTest, database_url: str, tmp_path: Path
) -> None:
    """A whole revision (lines and end marker) in a transaction that is aborted: no stage ever sees it."""
    account = generated_account(tmp_path / "account", invoices=6, lines=200, seed=5)
    stack = start_stack(
        tmp_path / "stack", account, bootstrap=kafka.bootstrap, flavor=kafka.flavor, database_url=database_url
    )
    try:
        s = stack.settings()
        ghost = "0badc0de-0000-4000-8000-000000000001"
        lines = [cost_line(i, 100 + i, invoice_uuid=ghost, droplet=f"ghost-{i}") for i in range(50)]
        topic = COST_LINES.name(s.kafka_topic_prefix)
        producer = Producer(producer_config(s, "aborting-ingester", transactional_id=s.kafka_topic_prefix + "abort"))
        producer.init_transactions(30)
        producer.begin_transaction()
        for event in [*lines, invoice_end(lines, invoice_uuid=ghost, **MARKER)]:
            producer.produce(topic, key=ghost, value=encode(event, "demo"))
        producer.flush(30)  # on the broker, not yet committed
        producer.abort_transaction(30)

        stack.poll_now("all")  # the real account flows behind the aborted records, on the same partitions
        wait_converged(stack, account, idle_timeout=150)
        assert_exactly_once(stack, account)

        p = s.kafka_topic_prefix
        assert not [r for r in read_all(s, COST_LINES_MATCHED.name(p)) if r.key == ghost]
        assert not [r for r in read_all(s, INVOICE_COMPLETED.name(p)) if r.key == ghost]
        with connect(stack.database_url) as conn:
            for table in ("cost_lines", "invoices"):
                row = conn.execute(f"SELECT count(*) AS n FROM readmodel.{table} WHERE invoice_uuid = %s", [ghost])
                assert row.fetchone()["n"] == 0, f"readmodel.{table} holds the aborted invoice"
    finally:
        stack.stop()
