"""The matcher's integration tests' plain helpers: publishing as the poller and the ingester do, a matcher thread."""

from __future__ import annotations

import shutil
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from services.matcher import main
from services.matcher.app import MatcherOptions
from shared.events import CostLine, InvoiceEnd, Resource, decode, encode
from shared.kafka import EventProducer, Out, StopSignal, group_lag
from shared.kafka.records import produce_out
from shared.settings import Settings
from shared.topics import COST_LINES, RESOURCES
from tests.factories import bare_match
from tests.helpers import read_all, wait_until

ACCOUNT = "default"
# The end marker's fields the matcher tests' invoices share (tests.factories.invoice_end(lines, **MARKER)).
MARKER = {"invoice_id": "1234", "csv_sha256": "0" * 64, "parser_version": "test", "reconciliation": bare_match}
T = TypeVar("T")


def resource_key(kind: str, resource_id: str, account: str = ACCOUNT) -> str:
    return f"{account}:{kind}:{resource_id}"


def publish_resources(s: Settings, resources: list[Resource], account: str = ACCOUNT) -> None:
    prod = EventProducer(s, "test-poller")
    for r in resources:
        prod.produce(
            Out(RESOURCES.name(s.kafka_topic_prefix), resource_key(r.kind, r.resource_id, account), encode(r, account))
        )
    prod.flush()


def publish_tombstone(s: Settings, kind: str, resource_id: str, account: str = ACCOUNT) -> None:
    prod = EventProducer(s, "test-poller")
    prod.produce(Out(RESOURCES.name(s.kafka_topic_prefix), resource_key(kind, resource_id, account), None))
    prod.flush()


def publish_invoice(s: Settings, events: list[CostLine | InvoiceEnd], account: str = ACCOUNT) -> None:
    prod = EventProducer(s, "test-ingester")
    for e in events:
        prod.produce(Out(COST_LINES.name(s.kafka_topic_prefix), e.invoice_uuid, encode(e, account)))
    prod.flush()


def publish_transactionally(s: Settings, invoices: list[list[CostLine | InvoiceEnd]], account: str = ACCOUNT) -> None:
    """As the ingester writes: each invoice's lines and marker in one transaction (a control record after it)."""
    from confluent_kafka import Producer

    from shared.kafka.config import producer_config

    topic = COST_LINES.name(s.kafka_topic_prefix)
    prod = Producer(producer_config(s, "test-ingester", f"test-ingester-{uuid.uuid4().hex[:8]}"))
    prod.init_transactions(30)
    for events in invoices:
        prod.begin_transaction()
        for e in events:
            produce_out(prod, Out(topic, e.invoice_uuid, encode(e, account)))
            prod.poll(0)
        prod.commit_transaction(60)


def events_of(s: Settings, topic: str) -> list[tuple[str, object]]:
    """(event_id, typed data) of every record of `topic`."""
    out = []
    for rec in read_all(s, topic):
        env, data = decode(rec.value)
        out.append((env.event_id, data))
    return out


class RunningMatcher:
    def __init__(self) -> None:
        self.errors: list[BaseException] = []

    def until(self, check: Callable[[], T], *, timeout: float = 60.0, what: str = "condition") -> T:
        """wait_until, failing at once if the matcher thread died."""

        def probe() -> T:
            if self.errors:
                raise AssertionError(f"the matcher failed: {self.errors!r}")
            return check()

        return wait_until(probe, timeout=timeout, what=what)


@contextmanager
def matcher_thread(s: Settings, stop: StopSignal | None = None, **options: object) -> Iterator[RunningMatcher]:
    """The real faust worker, in a thread, stopped at the end (and the stop must be clean); `stop` lets the
    caller stop it earlier."""
    stop = stop or StopSignal()
    running = RunningMatcher()
    datadir = tempfile.mkdtemp(prefix="matcher-data-")
    opts = MatcherOptions(_env_file=None, **({"commit_interval_s": 0.5, "datadir": datadir} | options))

    def target() -> None:
        try:
            main.run(s, stop, opts)
        except BaseException as e:
            running.errors.append(e)

    t = threading.Thread(target=target, name="matcher", daemon=True)
    t.start()
    try:
        yield running
    finally:
        stop.set()
        t.join(60)
        shutil.rmtree(datadir, ignore_errors=True)
        assert not t.is_alive(), "the matcher did not stop"
    assert not running.errors, running.errors


def committed(s: Settings, group: str, topic: str) -> dict[int, int]:
    """The group's committed offset per partition (absent: nothing committed)."""
    return {
        pl.partition: pl.committed
        for pl in group_lag(s, group, [topic])
        if pl.committed is not None and pl.committed >= 0
    }
