"""The whole pipeline on a synthetic account, every service its own process (cloudbill.stack), as in production.

Clock: from the history poll (which discovers every invoice) to the last invoice completed and pushed. A
sampler records, every `sample_s`, the cost lines each stage has finished, from the stage's own state:

- ingested:  lines of revisions the ingester committed to Kafka (its ledger, state `committed`);
- matched:   records on billing.cost-lines-matched.v1 (the matcher's output, read to the partition end);
- projected: rows in the read model's cost_lines (the projector);
- completed: lines of the distinct invoices on billing.invoice-completed.v1 (the matcher's completions, read
             as they arrive);
- pushed:    lines of invoices finance accepted (the pusher's ledger).

Once every invoice is pushed the run also waits for the read model to hold every line (the projector may
trail), so the API figures below it describe the whole data set.

There is no fixed time budget: the run ends when every invoice is pushed, or when no stage has made
progress for `stall_s` seconds (then `complete` is false and the counts say where it stopped), or when a
service stays dead past its restart budget.
"""

from __future__ import annotations

import contextlib
import json
import logging
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import psutil
from confluent_kafka import OFFSET_BEGINNING

from cloudbill.stack import Stack, StackConfig
from shared.db import connect
from shared.devinfra import KafkaFlavor, free_port
from shared.kafka.admin import high_watermarks
from shared.topics import COST_LINES_MATCHED, INVOICE_COMPLETED

log = logging.getLogger(__name__)

STAGES = ("ingested", "matched", "projected", "completed", "pushed")

SQL_PROGRESS = """
SELECT
  (SELECT COALESCE(sum(line_count), 0) FROM ingester.invoice_revisions WHERE state = 'committed') AS ingested,
  (SELECT count(*) FROM readmodel.cost_lines WHERE current) AS projected,
  (SELECT array_agg(invoice_uuid) FROM finance_pusher.invoices) AS pushed_uuids
"""


@dataclass
class Sizes:
    invoices: int
    lines: int
    big_invoices: int = 0
    big_lines: int = 0
    resources: int = 300

    @property
    def expected_invoices(self) -> int:
        return self.invoices + self.big_invoices

    @property
    def expected_lines(self) -> int:
        return self.invoices * self.lines + self.big_invoices * self.big_lines


@dataclass
class Progress:
    """Samples taken by a background thread; the main thread reads them."""

    samples: list[dict[str, float]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, sample: dict[str, float]) -> None:
        with self.lock:
            self.samples.append(sample)

    def last(self) -> dict[str, float] | None:
        with self.lock:
            return self.samples[-1] if self.samples else None

    def copy(self) -> list[dict[str, float]]:
        with self.lock:
            return list(self.samples)


class Sampler(threading.Thread):
    """Per-stage progress and each service's peak resident memory (with its children)."""

    def __init__(self, stack: Stack, t0: float, sample_s: float, infra: dict[str, int] | None = None) -> None:
        super().__init__(daemon=True, name="bench-sampler")
        self.stack, self.t0, self.sample_s = stack, t0, sample_s
        self.infra = infra or {}  # name -> pid of the broker and PostgreSQL the bench started (and their children)
        self.progress = Progress()
        self.peak_rss: dict[str, int] = {}
        self.cpu: dict[str, dict[int, float]] = {}  # service -> pid -> CPU seconds (a restart is a new pid)
        self.cpu_base: dict[int, float] = {}  # CPU already used when sampling began (start-up is not the run)
        self._first_round = True
        self.cpu_series: list[tuple[float, dict[str, float]]] = []  # (t, cpu_seconds()) per sample
        self.stopped = threading.Event()
        self.errors = 0

    def run(self) -> None:
        settings = self.stack.settings()
        matched_topic = COST_LINES_MATCHED.name(settings.kafka_topic_prefix)
        completions = CompletionReader(settings)
        try:
            with connect(self.stack.database_url, autocommit=True) as conn:
                while not self.stopped.is_set():
                    started = time.perf_counter()
                    try:
                        row = conn.execute(SQL_PROGRESS).fetchone() or {}
                        completed = completions.read()
                        pushed = row.get("pushed_uuids") or []
                        sample = {
                            "t": round(time.perf_counter() - self.t0, 2),
                            "ingested": float(row.get("ingested") or 0),
                            "matched": float(sum(high_watermarks(settings, matched_topic).values())),
                            "projected": float(row.get("projected") or 0),
                            "completed": float(sum(completed.values())),
                            "completed_invoices": float(len(completed)),
                            "pushed": float(sum(completed.get(u, 0) for u in pushed)),
                            "pushed_invoices": float(len(pushed)),
                        }
                        self.progress.add(sample)
                    except Exception as e:  # a slow broker or database: skip this sample, keep sampling
                        self.errors += 1
                        log.debug("progress sample failed: %s", e)
                    self._resources()
                    self.cpu_series.append((round(time.perf_counter() - self.t0, 2), self.cpu_seconds()))
                    self.stopped.wait(max(0.0, self.sample_s - (time.perf_counter() - started)))
        finally:
            completions.close()

    def _resources(self) -> None:
        """Peak memory and CPU time so far of each service, the broker and PostgreSQL (each with its children)."""
        pids = {name: c.proc.pid for name, c in list(self.stack.children.items()) if c.proc and c.proc.poll() is None}
        for name, pid in (pids | self.infra).items():
            try:
                p = psutil.Process(pid)
                procs = [p, *p.children(recursive=True)]
                rss = sum(x.memory_info().rss for x in procs)
                cpu = {x.pid: sum(x.cpu_times()[:2]) for x in procs}
            except psutil.Error:
                continue
            self.peak_rss[name] = max(self.peak_rss.get(name, 0), rss)
            self.cpu.setdefault(name, {}).update(cpu)
            if self._first_round:
                self.cpu_base.update(cpu)
        self._first_round = False

    def cpu_until(self, t: float | None) -> dict[str, float]:
        """CPU per service from the poll to `t` (the last progress): a stall's idle polling is not work."""
        if not self.cpu_series:
            return {}
        if t is None:
            return self.cpu_series[-1][1]
        return next((cpu for ts, cpu in self.cpu_series if ts >= t), self.cpu_series[-1][1])

    def cpu_seconds(self) -> dict[str, float]:
        """CPU used by each service since sampling began (a process started later counts from its start)."""
        return {
            name: round(sum(v - self.cpu_base.get(pid, 0.0) for pid, v in by_pid.items()), 2)
            for name, by_pid in sorted(self.cpu.items())
        }


class CompletionReader:
    """Reads billing.invoice-completed.v1 from the start as records arrive: invoice uuid → its lines (latest
    revision). Distinct invoices, so a completion emitted twice counts once (the finance rows say the rest)."""

    def __init__(self, settings: Any) -> None:
        from confluent_kafka import Consumer, TopicPartition

        topic = INVOICE_COMPLETED.name(settings.kafka_topic_prefix)
        self.consumer = Consumer(
            {
                "bootstrap.servers": settings.kafka_bootstrap_servers,
                "group.id": "cloudbill-bench-completions",
                "enable.auto.commit": False,
                "isolation.level": "read_committed",
            }
        )
        parts = self.consumer.list_topics(topic, timeout=10).topics[topic].partitions
        self.consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
        self.lines: dict[str, tuple[int, int]] = {}  # uuid -> (revision, line_count)

    def read(self) -> dict[str, int]:
        while True:
            batch = self.consumer.consume(10000, 0.05)
            if not batch:
                break
            for m in batch:
                value = m.value()
                if m.error() or value is None:
                    continue
                try:
                    data = json.loads(value)["data"]
                    uuid, rev, n = data["invoice_uuid"], int(data["revision"]), int(data["line_count"])
                except (ValueError, KeyError, TypeError):
                    continue  # not a completion: the pipeline dead-letters it, the bench ignores it
                if rev >= self.lines.get(uuid, (-1, 0))[0]:
                    self.lines[uuid] = (rev, n)
        return {u: n for u, (_rev, n) in self.lines.items()}

    def close(self) -> None:
        self.consumer.close()


def generate(scenario: Path, sizes: Sizes) -> float:
    """`cloudbill sim generate` (the same command users run); returns its duration."""
    t0 = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "cloudbill",
            "sim",
            "generate",
            "--invoices",
            str(sizes.invoices),
            "--lines",
            str(sizes.lines),
            "--big-invoices",
            str(sizes.big_invoices),
            "--big-lines",
            str(sizes.big_lines),
            "--resources",
            str(sizes.resources),
            "--out",
            str(scenario),
            "--seed",
            "7",
        ],
        check=True,
        capture_output=True,
    )
    return time.perf_counter() - t0


def finance_rows(port: int) -> dict[str, Any]:
    """What the finance simulator stored: rows, distinct invoices, and the gross it holds."""
    body = httpx.get(f"http://127.0.0.1:{port}/api/v1/invoices", timeout=60).json()
    rows = body["invoices"]
    return {
        "rows": len(rows),
        "distinct_invoices": len({r["external_id"] for r in rows}),
        "gross_minor": sum(int(r["amount_gross_minor"]) for r in rows),
    }


def expected_gross(scenario: Path) -> int:
    """The billing history's invoice amounts, in cents: what finance must hold once every invoice is pushed."""
    history = json.loads((scenario / "billing_history.json").read_text())
    return sum(int(Decimal(h["amount"]) * 100) for h in history if h.get("type") == "Invoice")


def run_pipeline(
    work: Path,
    sizes: Sizes,
    *,
    bootstrap: str,
    flavor: KafkaFlavor,
    database_url: str,
    finance_database_url: str,
    stall_s: float,
    sample_s: float = 1.0,
    on_status: Callable[[str], None] | None = None,
    cleanup: contextlib.ExitStack | None = None,
    infra: dict[str, int] | None = None,
) -> dict[str, Any]:
    """Start the stack, poll, wait for every invoice or a stall; the stack is stopped before returning (and by
    `cleanup` too, should an interruption cut the stack's own stop short: stopping twice is harmless)."""
    scenario = work / "scenario"
    result: dict[str, Any] = {
        "invoices_expected": sizes.expected_invoices,
        "cost_lines_expected": sizes.expected_lines,
        "sizes": {
            "invoices": sizes.invoices,
            "lines": sizes.lines,
            "big_invoices": sizes.big_invoices,
            "big_lines": sizes.big_lines,
            "resources": sizes.resources,
        },
    }
    result["generate_s"] = round(generate(scenario, sizes), 2)
    cfg = _stack_config(work, bootstrap, flavor, database_url, finance_database_url)
    status = on_status or (lambda _msg: None)
    with Stack(cfg) as stack:
        if cleanup is not None:
            cleanup.callback(stack.stop)
        t_start = time.perf_counter()
        status("pipeline: starting the services")
        stack.up()
        result["startup_s"] = round(time.perf_counter() - t_start, 1)
        status("pipeline: inventory sync")
        stack.poll_now("resources")
        stack.wait_inventory_read(120)
        sampler, outcome = _poll_history(stack, sizes, stall_s, sample_s, infra, status)
        result |= outcome
        samples = sampler.progress.copy()
        result |= _summarize(samples, sizes)
        result |= _resources_used(stack, sampler, result["stages"])
        result |= _finance_outcome(cfg.finance_port, scenario)
        result["timeline"] = {k: [s.get(k, 0) for s in samples] for k in ("t", *STAGES)}
        result["logs"] = str(stack.logdir)
    result["complete"] = bool(
        result["invoices_pushed"] == sizes.expected_invoices == result["finance_rows"]
        and result["finance_distinct_invoices"] == result["finance_rows"]
    )
    return result


def _poll_history(
    stack: Stack,
    sizes: Sizes,
    stall_s: float,
    sample_s: float,
    infra: dict[str, int] | None,
    status: Callable[[str], None],
) -> tuple[Sampler, dict[str, Any]]:
    """Poll the billing history and wait for the pipeline, sampled from the poll on; the stopped sampler and
    the outcome (the poll's duration first)."""
    t0 = time.perf_counter()
    sampler = Sampler(stack, t0, sample_s, infra)
    sampler.start()
    try:
        status("pipeline: history poll")
        stack.poll_now("history")
        outcome: dict[str, Any] = {"poll_history_s": round(time.perf_counter() - t0, 2)}
        outcome |= _wait(stack, sampler, sizes, stall_s, status)
    finally:
        sampler.stopped.set()
        sampler.join(30)
    return sampler, outcome


def _stack_config(
    work: Path, bootstrap: str, flavor: KafkaFlavor, database_url: str, finance_database_url: str
) -> StackConfig:
    """The stack on the generated scenario, the given broker and databases, free ports for the rest."""
    return StackConfig(
        scenario=str(work / "scenario"),
        workdir=work / "stack",
        kafka_bootstrap=bootstrap,
        kafka_flavor=flavor,
        database_url=database_url,
        finance_database_url=finance_database_url,
        do_port=free_port(),
        finance_port=free_port(),
        api_port=free_port(),
    )


def _resources_used(stack: Stack, sampler: Sampler, stages: dict[str, Any]) -> dict[str, Any]:
    """Peak memory, CPU (in all and per line) and restarts of the services over the run."""
    out: dict[str, Any] = {"peak_rss_mib": {k: round(v / 2**20) for k, v in sorted(sampler.peak_rss.items())}}
    # CPU is what a busy 2-core machine shares out: per line it compares runs that wall time cannot.
    last_progress = max((st["seconds"] or 0 for st in stages.values()), default=None)
    out["cpu_s"] = sampler.cpu_until(last_progress)
    lines = max(1, max((st["lines"] for st in stages.values()), default=0))
    out["cpu_us_per_line"] = {k: round(v * 1e6 / lines) for k, v in out["cpu_s"].items()}
    out["cpu_us_per_line_total"] = sum(out["cpu_us_per_line"].values())
    out["restarts"] = {c.name: len(c.restarts) for c in stack.children.values() if c.restarts}
    out["dead_services"] = [c.name for c in stack.dead()]
    return out


def _finance_outcome(finance_port: int, scenario: Path) -> dict[str, Any]:
    """What finance holds at the end, and whether its gross is the billing history's."""
    try:
        fin = finance_rows(finance_port)
    except (httpx.HTTPError, KeyError, ValueError) as e:  # the simulator died: nothing to count, not complete
        log.warning("finance simulator unreadable: %s", e)
        fin = {"rows": None, "distinct_invoices": None, "gross_minor": None}
    return {
        "finance_rows": fin["rows"],
        "finance_distinct_invoices": fin["distinct_invoices"],
        "finance_gross_matches_history": fin["gross_minor"] == expected_gross(scenario),
    }


def _wait(stack: Stack, sampler: Sampler, sizes: Sizes, stall_s: float, status: Any) -> dict[str, Any]:
    """Until every invoice is pushed, a stall of `stall_s` seconds, or a service dead past its restart budget."""
    last_values: tuple[float, ...] | None = None
    last_change = time.perf_counter()
    restart_events: list[str] = []
    reason = "stalled"
    while True:
        time.sleep(0.25)
        restart_events += stack.keep_alive()
        if stack.dead():
            reason = "service dead: " + ", ".join(c.name for c in stack.dead())
            break
        s = sampler.progress.last()
        if s is None:
            continue
        values = tuple(s.get(k, 0) for k in STAGES)
        if values != last_values:
            last_values, last_change = values, time.perf_counter()
            status(
                f"pipeline: {int(s['pushed_invoices'])}/{sizes.expected_invoices} invoices pushed, "
                + ", ".join(f"{k} {int(s[k])}" for k in STAGES)
            )
        if s["pushed_invoices"] >= sizes.expected_invoices and s["projected"] >= sizes.expected_lines:
            reason = "all pushed, read model complete"
            break
        if time.perf_counter() - last_change > stall_s:
            break
    return {"ended": reason, "stall_timeout_s": stall_s, "restart_events": restart_events}


def _summarize(samples: list[dict[str, float]], sizes: Sizes) -> dict[str, Any]:
    """Per stage: lines done, when it reached its final count, its rate since the poll and its best 5 s."""
    if not samples:
        return {"invoices_pushed": 0, "invoices_completed": 0, "cost_lines_per_s": None, "stages": {}}
    last = samples[-1]
    stages: dict[str, Any] = {}
    for k in STAGES:
        final = last.get(k, 0)
        reached = next((s["t"] for s in samples if s.get(k, 0) >= final), last["t"]) if final else None
        stages[k] = {
            "lines": int(final),
            "seconds": reached,
            "lines_per_s": round(final / reached) if final and reached else 0,
            "peak_lines_per_s_5s": _peak_rate(samples, k, 5.0),
        }
    done = last["completed_invoices"] >= sizes.expected_invoices
    t_done = stages["completed"]["seconds"]
    return {
        "invoices_completed": int(last["completed_invoices"]),
        "invoices_pushed": int(last["pushed_invoices"]),
        "cost_lines_completed": int(last["completed"]),
        # history poll → last invoice completed; None unless every invoice completed (see completed_lines_per_s)
        "cost_lines_per_s": round(sizes.expected_lines / t_done) if done and t_done else None,
        "completed_lines_per_s": stages["completed"]["lines_per_s"],
        "seconds_to_all_completed": t_done if done else None,
        "seconds_to_all_pushed": stages["pushed"]["seconds"]
        if last["pushed_invoices"] >= sizes.expected_invoices
        else None,
        "stages": stages,
    }


def _peak_rate(samples: list[dict[str, float]], key: str, window: float) -> int:
    best, j = 0.0, 0
    for i, s in enumerate(samples):
        while samples[j]["t"] < s["t"] - window and j < i:
            j += 1
        dt = s["t"] - samples[j]["t"]
        if dt >= window / 2:
            best = max(best, (s.get(key, 0) - samples[j].get(key, 0)) / dt)
    return round(best)
