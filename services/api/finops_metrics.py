"""The API's dashboard gauges, read at scrape time from the read model (right whatever process projected it):
spend by month and product, invoices by status (held included), dead letters by source topic; and the
consumer lag per stage, sampled from Kafka in the background (a scrape never waits on the broker).

The alerter exports the month-to-date, forecast and budget gauges itself (services/alerter/handler.py).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import GaugeMetricFamily

from services.projector.domain import status_name
from shared.db import DictPool
from shared.settings import Settings
from shared.topics import STAGES

log = logging.getLogger(__name__)

SPEND_MONTHS = 13  # a year and the month before: month-over-month for every month shown


class ReadModelGauges:
    """A collector read from the read model at scrape time: nothing until the API has its pool, and a database
    error costs the scrape these gauges only (metrics must never fail the scrape)."""

    what = "read-model gauges"

    def __init__(self) -> None:
        self.pool: DictPool | None = None

    def describe(self) -> list[GaugeMetricFamily]:
        return []  # collected lazily: no database query at registration

    def collect(self) -> Iterator[GaugeMetricFamily]:
        pool = self.pool
        if pool is None:
            return
        try:
            rows = self.read(pool)
        except Exception as e:
            log.debug("%s unavailable: %s", self.what, e)
            return
        yield from self.families(rows)

    def read(self, pool: DictPool) -> Any:
        raise NotImplementedError

    def families(self, rows: Any) -> Iterator[GaugeMetricFamily]:
        raise NotImplementedError


class FinOpsGauges(ReadModelGauges):
    what = "finops gauges"

    def read(self, pool: DictPool) -> tuple[list[Any], list[Any], list[Any]]:
        with pool.connection() as conn:
            spend = conn.execute(
                "SELECT account, to_char(period, 'YYYY-MM') AS period, product, currency,"
                " sum(amount_minor)::bigint AS amount FROM readmodel.cost_lines"
                " WHERE current AND period >= (date_trunc('month', now()) - make_interval(months => %s))::date"
                " GROUP BY 1, 2, 3, 4",
                (SPEND_MONTHS,),
            ).fetchall()
            statuses = conn.execute(
                "SELECT status_rank, held, count(*) AS n FROM readmodel.invoices GROUP BY 1, 2"
            ).fetchall()
            dead = conn.execute(
                "SELECT COALESCE(source_topic, dlq_topic) AS topic, count(*) AS n FROM readmodel.dead_letters"
                " GROUP BY 1"
            ).fetchall()
        return spend, statuses, dead

    def families(self, rows: tuple[list[Any], list[Any], list[Any]]) -> Iterator[GaugeMetricFamily]:
        spend, statuses, dead = rows
        g = GaugeMetricFamily(
            "cloudbill_invoice_spend_minor",
            "Invoiced cost per billing month and product, tax as product Taxes (minor units)",
            labels=["account", "period", "product", "currency"],
        )
        for r in spend:
            g.add_metric([r["account"], r["period"], r["product"], r["currency"]], r["amount"])
        yield g
        g = GaugeMetricFamily("cloudbill_invoices", "Invoices by pipeline status (held: not pushed)", labels=["status"])
        counts: dict[str, int] = {}
        for r in statuses:
            name = status_name(r["status_rank"], bool(r["held"]))
            counts[name] = counts.get(name, 0) + r["n"]
        for name, n in sorted(counts.items()):
            g.add_metric([name], n)
        yield g
        g = GaugeMetricFamily("cloudbill_dead_letters", "Dead letters by source topic", labels=["source_topic"])
        for r in dead:
            g.add_metric([r["topic"]], r["n"])
        yield g


class LagGauges:
    """`cloudbill_consumer_lag{stage}`: records each stage still has to read, sampled every `every_s` seconds
    in a daemon thread (started by the first scrape), so a scrape answers from the last sample."""

    def __init__(self, every_s: float = 30.0) -> None:
        self.settings: Settings | None = None
        self.every_s = every_s
        self._sample: dict[str, int] = {}
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()

    def start(self, settings: Settings) -> None:
        """Sample `settings`' broker from now on (the thread itself starts with the first scrape)."""
        with self._lock:
            self.settings = settings
            self._stop.clear()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop sampling (the API is shutting down): the thread ends at once, not after its next sample."""
        with self._lock:
            self.settings, thread, self._thread = None, self._thread, None
            self._sample = {}
            self._stop.set()
        if thread is not None:
            thread.join(timeout)

    def describe(self) -> list[GaugeMetricFamily]:
        return []

    def collect(self) -> Iterator[GaugeMetricFamily]:
        if self.settings is None:
            return
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="lag-sampler", daemon=True)
                self._thread.start()
            sample = dict(self._sample)
        g = GaugeMetricFamily("cloudbill_consumer_lag", "Records a stage has still to read", labels=["stage"])
        for stage, lag in sorted(sample.items()):
            g.add_metric([stage], lag)
        yield g

    def _run(self) -> None:
        from shared.kafka.admin import group_lag

        while not self._stop.is_set():
            s = self.settings
            if s is None:
                return
            p = s.kafka_topic_prefix
            for st in STAGES.values():
                if self._stop.is_set():
                    return
                try:
                    lag = sum(x.lag for x in group_lag(s, st.group(s), [t.name(p) for t in st.inputs], timeout=5))
                except Exception as e:
                    log.debug("lag of %s unavailable: %s", st.name, e)
                    continue
                with self._lock:
                    self._sample[st.name] = lag
            self._stop.wait(self.every_s)


FINOPS_GAUGES = FinOpsGauges()
LAG_GAUGES = LagGauges()
