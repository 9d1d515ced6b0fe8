"""Builders shared by the matcher's integration tests: events as the poller and the ingester write them."""

from __future__ import annotations

import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import date
from typing import TypeVar

from services.matcher import main
from services.matcher.app import MatcherOptions
from shared.events import CostLine, InvoiceEnd, Reconciliation, Resource, decode, encode
from shared.kafka import EventProducer, Out, StopSignal, group_lag
from shared.settings import Settings
from shared.topics import COST_LINES, RESOURCES
from tests.helpers import read_all, wait_until

ACCOUNT = "default"
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


def line(
    invoice: str, idx: int, product: str, description: str, amount: int, *, revision: int = 1, group: str = ""
) -> CostLine:
    low = description.lower()
    return CostLine(
        invoice_uuid=invoice,
        revision=revision,
        line_index=idx,
        product=product,
        group_description=group,
        description=description,
        amount_minor=amount,
        is_tax="gst" in low or "tax" in low,
    )


def end_of(invoice: str, lines: list[CostLine], *, revision: int = 1, line_count: int | None = None) -> InvoiceEnd:
    tax = sum(x.amount_minor for x in lines if x.is_tax)
    net = sum(x.amount_minor for x in lines if not x.is_tax)
    return InvoiceEnd(
        invoice_uuid=invoice,
        invoice_id="1234",
        revision=revision,
        period="2026-04-01",
        invoice_date=date(2026, 5, 1),
        line_count=len(lines) if line_count is None else line_count,
        amount_net_minor=net,
        amount_tax_minor=tax,
        amount_gross_minor=net + tax,
        csv_sha256="0" * 64,
        parser_version="test",
        reconciliation=Reconciliation(status="matched", expected_minor=net + tax, difference_minor=0),
    )


def publish_invoice(s: Settings, events: list[CostLine | InvoiceEnd], account: str = ACCOUNT) -> None:
    prod = EventProducer(s, "test-ingester")
    for e in events:
        prod.produce(Out(COST_LINES.name(s.kafka_topic_prefix), e.invoice_uuid, encode(e, account)))
    prod.flush()


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
def matcher_thread(s: Settings, **options: object) -> Iterator[RunningMatcher]:
    """The real faust worker, in a thread, stopped at the end (and the stop must be clean)."""
    stop = StopSignal()
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
