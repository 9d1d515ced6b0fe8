"""Every invoice completed exactly once at size, on both brokers: many invoices and a big one, then a kill -9
in the middle of the big one. The full size (50 × 500 lines and 20,000 lines) is marked `scale` (`make
test-scale`); the suite runs a bounded size that keeps hundreds of lines per invoice."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import pytest
from faust.tables.base import Collection

from services.matcher.options import ASSEMBLY_TABLES, SERVICE, MatcherOptions, waiting_revisions
from shared.events import CostLine, CostLineMatched, InvoiceCompleted, InvoiceEnd, Resource
from shared.kafka import group_lag
from shared.kafka.admin import high_watermarks
from shared.settings import Settings
from shared.topics import COST_LINES, COST_LINES_MATCHED, INVOICE_COMPLETED, group_id
from tests.conftest import KafkaUnderTest, settings_for
from tests.factories import cost_line, invoice_end
from tests.helpers import ServiceProcess, wait_until
from tests.integration.matcher.support import (
    MARKER,
    committed,
    events_of,
    matcher_thread,
    publish_resources,
    publish_transactionally,
)

NODES = 40


@dataclass(frozen=True)
class Size:
    invoices: int
    lines: int
    big_lines: int


SIZES = [
    pytest.param(Size(10, 400, 3_000), id="bounded"),
    pytest.param(Size(50, 500, 20_000), id="full", marks=[pytest.mark.scale, pytest.mark.timeout(1200)]),
]


def _uuid(k: int) -> str:
    return f"00000000-0000-4000-8000-{k:012d}"


def _invoice(k: int, n: int) -> list[CostLine | InvoiceEnd]:
    """Every third line names an inventoried droplet, the others a gone one, a credit, and GST last."""
    inv = _uuid(k)
    lines = []
    for i in range(n - 1):
        if i % 3 == 0:
            lines.append(cost_line(i, 100 + i % 97, invoice_uuid=inv, droplet=f"node-{(k + i) % NODES}"))
        elif i % 50 == 49:
            lines.append(
                cost_line(i, -(500 + i % 7), invoice_uuid=inv, product="Credits", description="Promotional credit")
            )
        else:
            lines.append(
                cost_line(
                    i, 200 + i % 89, invoice_uuid=inv, product="Droplets", description=f"ghost-{k}-{i} (s-2vcpu-4gb)"
                )
            )
    lines.append(cost_line(n - 1, 1234, invoice_uuid=inv, is_tax=True))
    return [*lines, invoice_end(lines, invoice_uuid=inv, **MARKER)]


def _expected(events: list[CostLine | InvoiceEnd]) -> tuple[int, int, int, int]:
    """(line count, matched count, net, tax) of one invoice."""
    lines = [e for e in events if isinstance(e, CostLine)]
    matched = sum(1 for x in lines if x.product == "Droplets" and x.description.startswith("node-"))
    tax = sum(x.amount_minor for x in lines if x.is_tax)
    return len(lines), matched, sum(x.amount_minor for x in lines) - tax, tax


def _records(s: Settings, topic: str) -> int:
    return sum(high_watermarks(s, topic).values())


def _caught_up(s: Settings) -> bool:
    lags = group_lag(s, group_id(s, SERVICE), [COST_LINES.name(s.kafka_topic_prefix)])
    return bool(lags) and all(pl.lag == 0 for pl in lags)


def _check_outputs(s: Settings, invoices: list[list[CostLine | InvoiceEnd]]) -> None:
    """One distinct completion per invoice with its totals; every line enriched; nothing waiting."""
    p = s.kafka_topic_prefix
    by_invoice: dict[str, dict[str, InvoiceCompleted]] = defaultdict(dict)
    for event_id, done in events_of(s, INVOICE_COMPLETED.name(p)):
        assert isinstance(done, InvoiceCompleted)
        by_invoice[done.invoice_uuid][event_id] = done
    assert sorted(by_invoice) == sorted(events[0].invoice_uuid for events in invoices)
    for events in invoices:
        versions = by_invoice[events[0].invoice_uuid]
        assert len(versions) == 1, f"{events[0].invoice_uuid}: {len(versions)} different completions"
        [done] = versions.values()
        n, matched, net, tax = _expected(events)
        got = (done.line_count, done.matched_count, done.amount_net_minor, done.amount_tax_minor)
        assert got == (n, matched, net, tax)
        assert done.amount_gross_minor == net + tax and done.reconciliation.status == "matched"
    enriched = set()
    for _, m in events_of(s, COST_LINES_MATCHED.name(p)):
        assert isinstance(m, CostLineMatched)
        enriched.add((m.line.invoice_uuid, m.line.line_index))
    assert len(enriched) == sum(len(events) - 1 for events in invoices)
    assert waiting_revisions(s, MatcherOptions(_env_file=None)) == []


def _resources() -> list[Resource]:
    return [Resource(kind="droplet", resource_id=str(1000 + i), name=f"node-{i}") for i in range(NODES)]


@pytest.mark.parametrize("size", SIZES)
def test_every_invoice_is_completed_once_with_its_totals(
    any_kafka: KafkaUnderTest, topic_prefix: str, size: Size, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = settings_for(any_kafka, topic_prefix)
    # The lost-lines defect: faust applied the worker's own changelog records back to its live tables. The
    # tables start empty here, so any changelog record applied to an assembly table is such a read-back.
    read_back: list[tuple[str, int, int]] = []
    apply_batch = Collection.apply_changelog_batch

    def spy(self: Collection, batch: object) -> None:
        events = list(batch)  # type: ignore[call-overload]
        if self.name in ASSEMBLY_TABLES:
            read_back.extend((self.name, e.message.partition, e.message.offset) for e in events)
        apply_batch(self, events)

    monkeypatch.setattr(Collection, "apply_changelog_batch", spy)
    publish_resources(s, _resources())
    invoices = [_invoice(k, size.lines) for k in range(size.invoices)] + [_invoice(size.invoices, size.big_lines)]
    with matcher_thread(s) as m:
        publish_transactionally(s, invoices)  # while the matcher runs, as the ingester writes them
        total = sum(len(events) - 1 for events in invoices)
        m.until(lambda: _records(s, INVOICE_COMPLETED.name(topic_prefix)) >= len(invoices), timeout=total / 50)
        m.until(lambda: _caught_up(s), what="every record committed")
    _check_outputs(s, invoices)
    assert read_back == [], f"{len(read_back)} changelog records read back into live tables: {read_back[:5]}"


@pytest.mark.parametrize("size", SIZES)
def test_kill_9_in_the_middle_of_the_big_invoice_still_completes_it_once(
    any_kafka: KafkaUnderTest, topic_prefix: str, tmp_path: Path, size: Size
) -> None:
    s = settings_for(any_kafka, topic_prefix)
    p = s.kafka_topic_prefix
    publish_resources(s, _resources())
    invoices = [_invoice(0, 300), _invoice(1, size.big_lines), _invoice(2, 300)]
    n = sum(len(events) - 1 for events in invoices)
    env = {
        "MATCHER_COMMIT_INTERVAL_S": "0.5",
        "MATCHER_DATADIR": str(tmp_path / "faust"),
        # Above a restart's rejoin after a SIGKILL (the dead member's 6 s session, then the embedded broker's
        # 3 s join delay, then recovery): the watchdog is for workers that stop progressing, not for slow starts.
        "MATCHER_STALL_TIMEOUT_S": "30",
    }

    def start() -> ServiceProcess:
        logs = tmp_path / f"worker-{len(workers)}"  # a log per worker
        logs.mkdir()
        return ServiceProcess("matcher", s, logs, **env).start()

    workers: list[ServiceProcess] = []
    workers.append(start())

    def supervised() -> None:
        """Restart a worker that ended itself (exit 70), as compose's restart policy or `cloudbill dev up` would."""
        current = workers[-1]
        if current.proc is not None and current.proc.poll() is not None:
            assert current.proc.returncode == 70, current.log()[-3000:]
            assert len(workers) < 6, "restarted too often"
            workers.append(start())

    def processed_at_least(count: int):
        """Committed cost-line offsets (not the matched topic's end: the embedded broker's is a moving target)."""

        def check() -> bool:
            supervised()
            return sum(committed(s, group_id(s, SERVICE), COST_LINES.name(p)).values()) >= count

        return check

    try:
        publish_transactionally(s, invoices)
        # Killed twice while it works through the big invoice.
        for fraction in (0.35, 0.7):
            wait_until(processed_at_least(int(n * fraction)), timeout=n / 20, what=f"{fraction:.0%} processed")
            workers[-1].kill()
            assert workers[-1].proc is not None and workers[-1].proc.returncode == -9
            workers.append(start())

        def completed() -> bool:
            supervised()
            ready = "worker ready" in workers[-1].log()  # not stopped while it starts
            return ready and _records(s, INVOICE_COMPLETED.name(p)) >= len(invoices) and _caught_up(s)

        wait_until(completed, timeout=n / 20, what="every invoice completed after the kills")
    finally:
        code = workers[-1].stop(timeout=30)
    tail = [
        x for x in workers[-1].log().splitlines() if "producer buffer full" not in x and "producer flush took" not in x
    ]
    assert code == 0, f"exit {code}: " + "\n".join(tail[-40:])
    _check_outputs(s, invoices)
