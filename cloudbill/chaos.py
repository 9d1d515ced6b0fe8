"""`cloudbill chaos`: kill anything, break anything, lose nothing, on the whole stack as separate processes.

One broker and one PostgreSQL server are started for two runs of the same generated accounts (several accounts,
invoices of mixed sizes, one DigitalOcean simulator per account): an undisturbed *baseline*, then the *chaos*
run, on which the seeded plan of `cloudbill/chaos_plan.py` is carried out (SIGKILLs of every service, each
restarted by the stack's supervisor; the broker SIGKILLed and restarted on its data dir; finance 503, 429 and
timeouts; DigitalOcean 429, 5xx and slow answers; five kinds of poison written into input topics). Both runs
wait for convergence; then the chaos run is judged against the account and the baseline: finance rows, the
read models table by table and row by row, the poison in the dead-letter topics, and every service up.

Each run has its own topic prefix and databases, so nothing of the baseline can leak into the chaos run.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import shutil
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import httpx
import psycopg
import typer
from confluent_kafka import Producer
from rich.console import Console
from rich.table import Table

from cloudbill.chaos_plan import (
    KILLED_SERVICES,
    POISON_KINDS,
    Fault,
    PlanOptions,
    Report,
    diff_tables,
    final_checks,
    invoice_sizes,
    judge_finance,
    normalise_rows,
    plan,
    poison_key,
    poison_value,
)
from cloudbill.stack import SERVICES, Stack, StackConfig
from shared.db import connect
from shared.devinfra import ApacheKafka, EmbeddedKafka, EmbeddedPostgres, KafkaFlavor, free_port
from shared.events import EventDecodeError, InvoiceCompleted, decode
from shared.kafka.admin import group_lag, read_topic
from shared.kafka.config import producer_config
from shared.kafka.deadletter import H_ERROR_CLASS, H_ERROR_MESSAGE, H_OFFSET, H_SERVICE, H_TOPIC
from shared.money import parse_minor
from shared.settings import Settings
from shared.topics import DLQ_SUFFIX, INVOICE_COMPLETED, STAGES
from sims.generate import generate
from sims.scenario import load_scenario

log = logging.getLogger(__name__)


@dataclass
class ChaosOptions:
    seed: int = 1
    invoices: int = 200
    kills: int = 20
    kafka: KafkaFlavor = "apache"
    out: Path | None = None
    workdir: Path = field(default_factory=lambda: Path(".cloudbill/chaos"))
    accounts: int = 3
    min_lines: int = 5
    max_lines: int = 2000
    resources: int = 60
    broker_kills: int = 1
    finance_outage_s: float = 60.0
    window_s: float | None = None  # None: the baseline's time to converge, at least min_window_s
    min_window_s: float = 120.0
    idle_timeout_s: float = 300.0  # no progress for this long: not converged
    timeout_s: float = 3600.0  # a whole run's limit


@dataclass(frozen=True)
class GenAccount:
    name: str
    token: str
    path: Path
    gross_by_invoice: dict[str, int]
    lines_by_invoice: dict[str, int]


def make_accounts(out: Path, opts: ChaosOptions) -> list[GenAccount]:
    """`opts.invoices` invoices over `opts.accounts` generated accounts, of mixed sizes (same seed, same bytes)."""
    sizes = invoice_sizes(opts.seed, opts.invoices, opts.min_lines, opts.max_lines)
    n = max(1, min(opts.accounts, opts.invoices))
    accounts = []
    for i in range(n):
        share = sizes[i::n]
        path = out / f"acct{i + 1}"
        generate(
            path,
            invoices=len(share),
            lines=1,
            resources=opts.resources,
            seed=opts.seed * 100 + i,
            force=True,
            line_counts=share,
        )
        # One balance snapshot: the poller polls again and again, always the same (a series would make the two
        # runs' balance read models depend on how often each polled).
        balance = json.loads((path / "balance.json").read_text())
        (path / "balance.json").write_text(json.dumps(balance[-1:], indent=1) + "\n")
        sc = load_scenario(path)
        gross = {inv["invoice_uuid"]: parse_minor(inv["amount"]) for inv in sc.invoices}
        lines = {u: len(sc.csv_bytes(u).splitlines()) - 1 for u in gross}
        accounts.append(GenAccount(f"acct{i + 1}", f"dop_v1_chaos{i + 1}{secrets.token_hex(8)}", path, gross, lines))
    return accounts


# ------------------------------------------------------------------------------------------------- infra
class Infra:
    """The broker and PostgreSQL both runs share (each run has its own topic prefix and databases)."""

    def __init__(self, flavor: KafkaFlavor, workdir: Path) -> None:
        self.flavor = flavor
        self.workdir = workdir
        self.kafka: ApacheKafka | EmbeddedKafka | None = None
        self.pg: EmbeddedPostgres | None = None

    def start(self) -> Infra:
        port = free_port()
        if self.flavor == "apache":
            self.kafka = ApacheKafka(port=port, workdir=self.workdir / "apache-kafka")
        else:
            self.kafka = EmbeddedKafka(port=port, workdir=self.workdir / "kafka")
        self.kafka.start()
        self.pg = EmbeddedPostgres(workdir=self.workdir / "postgres", password=secrets.token_urlsafe(18))
        self.pg.start()
        return self

    @property
    def bootstrap(self) -> str:
        assert self.kafka is not None
        return self.kafka.bootstrap

    def database(self, name: str) -> str:
        assert self.pg is not None
        return self.pg.create_database(name)

    def stop(self) -> None:
        for part in (self.kafka, self.pg):
            if part is not None:
                with contextlib.suppress(Exception):
                    part.stop()


# --------------------------------------------------------------------------------------------------- a run
class Run:
    """One stack on the shared infra: its services, one DigitalOcean simulator per account, the finance simulator."""

    def __init__(self, name: str, infra: Infra, accounts: list[GenAccount], opts: ChaosOptions) -> None:
        self.name = name
        self.infra = infra
        self.accounts = accounts
        self.opts = opts
        self.do_ports = {a.name: free_port() for a in accounts}
        self.prefix = f"{name}."
        account_list = [
            {"name": a.name, "token": a.token, "api_url": f"http://127.0.0.1:{self.do_ports[a.name]}"} for a in accounts
        ]
        workdir = opts.workdir.resolve() / name
        self.cfg = StackConfig(
            workdir=workdir,
            kafka_bootstrap=infra.bootstrap,
            kafka_flavor=infra.flavor,
            database_url=infra.database(name),
            finance_database_url=infra.database(f"{name}_finance"),
            topic_prefix=self.prefix,
            finance_port=free_port(),
            api_port=free_port(),
            do_port=free_port(),
            start_sims=False,
            finance_secret=secrets.token_hex(32),
            api_secret=secrets.token_hex(32),
            restarts_per_window=10_000,  # the chaos run kills on purpose; a crash loop still shows as no progress
            extra_env={
                "DIGITALOCEAN_TOKEN": "",
                "DIGITALOCEAN_ACCOUNTS": json.dumps(account_list),
                # The poller keeps polling during the run (its polls are killed and faulted too). The first poll
                # is made by the run itself, inventory first, and the poller starts only after it (start_poller),
                # so matching never races the inventory.
                "POLL_BALANCE_CRON": "* * * * *",
                "POLL_HISTORY_CRON": "* * * * *",
                "POLL_RESOURCES_CRON": "*/2 * * * *",
                "POLL_RETRY_INITIAL_S": "5",
                "POLL_RETRY_MAX_S": "30",
                "SKYAI_FINANCE_TIMEOUT_S": "3",
                "MATCHER_DATADIR": str(workdir / "matcher"),
                "LOG_LEVEL": "INFO",
                # The new-product/new-resource anomaly compares an invoice with the previous months' invoices the
                # read model serves when it is checked: an invoice checked before an older one is served differs
                # with the order invoices complete in (a known gap, reported with the chaos run); off here.
                "ANOMALY_NEW_COST_MIN": "1000000000",
            },
        )
        self.stack = Stack(self.cfg)
        self.stack.finance_database_url = self.cfg.finance_database_url
        self.http = httpx.Client(timeout=15)
        self.restarts: Counter[str] = Counter()

    @property
    def invoices(self) -> int:
        return sum(len(a.gross_by_invoice) for a in self.accounts)

    @property
    def lines(self) -> int:
        return sum(sum(a.lines_by_invoice.values()) for a in self.accounts)

    def start(self) -> None:
        st = self.stack
        st.logdir.mkdir(parents=True, exist_ok=True)
        st.prepare()
        env = st.env()
        for a in self.accounts:
            st.spawn(
                f"sim-do-{a.name}",
                ["sim", "do", "--scenario", str(a.path), "--port", str(self.do_ports[a.name])],
                env=env | {"SIM_DO_TOKENS": a.token},
            )
        st.spawn(
            "sim-finance",
            ["sim", "finance", "--port", str(self.cfg.finance_port)],
            env=env | {"SKYAI_FINANCE_JWT_SECRET": self.cfg.finance_secret, "DATABASE_URL": st.finance_database_url},
        )
        for a in self.accounts:
            st._wait_port(f"sim-do-{a.name}", self.do_ports[a.name])
        st._wait_port("sim-finance", self.cfg.finance_port)
        st.start_services(tuple(svc for svc in SERVICES if svc != "poller"))

    def start_poller(self) -> None:
        """After the run's own first poll: its every-minute schedule would otherwise poll the history while the
        matcher is still reading the inventory (a baseline with one invoice unattributed, seen in CI)."""
        self.stack.start_services(("poller",))

    def stop(self) -> None:
        self.http.close()
        self.stack.stop()

    # ------------------------------------------------------------------------------------------ reading
    def settings(self) -> Settings:
        return self.stack.settings()

    def finance_rows(self) -> list[dict[str, Any]]:
        body = self.http.get(f"http://127.0.0.1:{self.cfg.finance_port}/api/v1/invoices").json()
        return list(body["invoices"])

    def _count(self, sql: str) -> int:
        try:
            with connect(self.stack.database_url) as conn:
                row = conn.execute(sql).fetchone()
        except psycopg.Error:
            return 0
        return int(row["n"]) if row else 0

    def pushed(self) -> int:
        return self._count("SELECT count(*) AS n FROM readmodel.invoices WHERE status_rank >= 4")

    def lines_projected(self) -> int:
        return self._count("SELECT count(*) AS n FROM readmodel.cost_lines WHERE current")

    def dead_letters_projected(self) -> int:
        return self._count("SELECT count(*) AS n FROM readmodel.dead_letters")

    def progress(self) -> int:
        try:
            finance = len(self.finance_rows())
        except (httpx.HTTPError, ValueError, KeyError):
            finance = 0
        return finance + self.pushed() + self.lines_projected() + self.dead_letters_projected()

    def done(self, poison: int) -> bool:
        try:
            finance = len(self.finance_rows())
        except (httpx.HTTPError, ValueError, KeyError):
            return False
        return (
            finance >= self.invoices
            and self.pushed() >= self.invoices
            and self.lines_projected() >= self.lines
            and self.dead_letters_projected() >= poison
        )

    def lags(self) -> dict[str, int]:
        """Records each consuming stage has not committed yet (its inputs and its retry topic)."""
        from services.matcher.options import MatcherOptions, app_id_of

        s = self.settings()
        out = {}
        for stage in STAGES.values():
            topics = stage.topics(s) + ([stage.retry_topic(s)] if stage.parks else [])
            group = app_id_of(s, MatcherOptions()) if stage.name == "matcher" else stage.group(s)
            try:
                out[stage.name] = sum(pl.lag for pl in group_lag(s, group, topics, timeout=20))
            except Exception as e:  # the broker restarting: not caught up, ask again
                log.debug("lag of %s: %s", stage.name, e)
                out[stage.name] = -1
        return out

    def tables(self) -> dict[str, list[str]]:
        """Every read-model table, normalised (see chaos_plan.normalise_rows)."""
        out: dict[str, list[str]] = {}
        with connect(self.stack.database_url) as conn:
            names = [
                r["table_name"]
                for r in conn.execute(
                    "SELECT table_name FROM information_schema.tables WHERE table_schema = 'readmodel' "
                    "AND table_type = 'BASE TABLE' ORDER BY 1"
                ).fetchall()
            ]
            for t in names:
                if "migration" in t:
                    continue
                rows = conn.execute(f'SELECT * FROM readmodel."{t}"').fetchall()  # names from the catalogue
                out[t] = normalise_rows(t, rows, self.prefix)
        return out

    def dead_letter_rows(self) -> list[dict[str, Any]]:
        with connect(self.stack.database_url) as conn:
            return list(
                conn.execute("SELECT source_topic, record_key, error_class, service FROM readmodel.dead_letters")
            )


# ----------------------------------------------------------------------------------------------- the runner
class Chaos:
    def __init__(self, opts: ChaosOptions, console: Console | None = None) -> None:
        self.opts = opts
        self.console = console or Console(stderr=True)
        self.infra: Infra | None = None
        self.report: Report | None = None
        self.poison_offsets: dict[str, tuple[str, int, int]] = {}  # kind -> (topic, partition, offset)
        self.kill_log: list[tuple[float, str]] = []
        self.broker_thread: threading.Thread | None = None
        self.broker_error: list[BaseException] = []
        self.poison_producer: Producer | None = None
        self.poison_errors: list[str] = []

    def say(self, text: str) -> None:
        self.console.print(text)

    def run(self) -> Report:
        opts = self.opts
        wd = opts.workdir.resolve()
        shutil.rmtree(wd, ignore_errors=True)
        wd.mkdir(parents=True)
        self.say(
            f"[bold]cloudbill chaos[/] seed {opts.seed}: {opts.invoices} invoices, {opts.kills} kills, {opts.kafka} Kafka"
        )
        accounts = make_accounts(wd / "accounts", opts)
        report = Report(
            seed=opts.seed,
            kafka=opts.kafka,
            invoices_expected=sum(len(a.gross_by_invoice) for a in accounts),
            lines_expected=sum(sum(a.lines_by_invoice.values()) for a in accounts),
            accounts=len(accounts),
        )
        self.report = report
        sizes = sorted(n for a in accounts for n in a.lines_by_invoice.values())
        self.say(
            f"accounts: {len(accounts)}, {report.invoices_expected} invoices, {report.lines_expected} lines "
            f"(sizes {sizes[0]}..{sizes[-1]}, median {sizes[len(sizes) // 2]})"
        )
        self.infra = Infra(opts.kafka, wd / "infra").start()
        try:
            base = Run("baseline", self.infra, accounts, opts)
            try:
                base_s = self._run(base, [])
                report.baseline_s = round(base_s, 1)
                base_tables = base.tables()
                base_finance = base.finance_rows()
                base_dead = base.dead_letter_rows()
            finally:
                base.stop()
            self.say(f"baseline converged in {base_s:.0f}s")
            window = opts.window_s or max(opts.min_window_s, base_s)
            faults = plan(
                PlanOptions(
                    seed=opts.seed,
                    kills=opts.kills,
                    broker_kills=opts.broker_kills if opts.kafka == "apache" else 0,
                    window_s=window,
                    finance_outage_s=opts.finance_outage_s,
                )
            )
            if opts.kafka != "apache":
                report.notes.append("embedded broker: no broker kill (it keeps everything in memory)")
            report.faults = [f.describe() for f in faults]
            chaos = Run("chaos", self.infra, accounts, opts)
            try:
                self._run(chaos, faults, report)
                self._judge(chaos, accounts, base_tables, base_finance, base_dead, report)
            finally:
                chaos.stop()
        finally:
            self.infra.stop()
        report.checks = final_checks(
            report, broker_kill_expected=opts.kafka == "apache" and opts.broker_kills > 0, kills_expected=opts.kills
        )
        return report

    # ------------------------------------------------------------------------------------------ one run
    def _run(self, run: Run, faults: list[Fault], report: Report | None = None) -> float:
        """Start, poll once (inventory first), carry out `faults`, wait for convergence; seconds to converge."""
        self.say(f"[bold]{run.name}[/]: starting the stack")
        run.start()
        pending = list(faults)
        while pending and pending[0].at <= 0:  # in place before the first poll
            self._apply(run, pending.pop(0), report)
        run.stack.poll_now("all", inventory_timeout=180)
        run.start_poller()
        t0 = time.monotonic()
        poison = len(POISON_KINDS) if any(f.kind == "poison" for f in faults) else 0
        last_progress, last_change, next_check = -1, t0, 0.0
        deadline = t0 + self.opts.timeout_s
        while True:
            now = time.monotonic()
            for event in run.stack.keep_alive():
                run.restarts[event.split(" ", 1)[0]] += 1
            while pending and pending[0].at <= now - t0:
                self._apply(run, pending.pop(0), report)
            if now >= next_check:
                next_check = now + 2.0
                broker_busy = self.broker_thread is not None and self.broker_thread.is_alive()
                if not pending and not broker_busy and self._poison_delivered(poison) and run.done(poison):
                    lags = run.lags()
                    if all(v == 0 for v in lags.values()):
                        converged = time.monotonic() - t0
                        if report is not None:
                            report.converged = True
                            report.converged_s = round(converged, 1)
                            last_fault = max((f.at for f in faults), default=0.0)
                            report.settle_after_last_fault_s = round(max(0.0, converged - last_fault), 1)
                        return converged
                p = run.progress()
                if p != last_progress:
                    last_progress, last_change = p, now
                    self.say(
                        f"  {run.name} t+{now - t0:5.0f}s: finance {len(self._safe(run.finance_rows, []))}/{run.invoices}"
                        f", pushed {run.pushed()}, lines {run.lines_projected()}/{run.lines}"
                    )
                elif not pending and now - last_change > self.opts.idle_timeout_s:
                    self.say(f"[red]{run.name}: no progress for {self.opts.idle_timeout_s:.0f}s[/]")
                    return time.monotonic() - t0
                if now > deadline:
                    self.say(f"[red]{run.name}: not converged within {self.opts.timeout_s:.0f}s[/]")
                    return time.monotonic() - t0
            self._poison_delivered(poison)
            time.sleep(0.2)

    @staticmethod
    def _safe(call: Callable[[], Any], default: Any) -> Any:
        try:
            return call()
        except Exception:
            return default

    # --------------------------------------------------------------------------------------- the faults
    def _apply(self, run: Run, f: Fault, report: Report | None) -> None:
        self.say(f"  [yellow]fault[/] {f.describe()}")
        assert report is not None
        try:
            if f.kind == "kill":
                self._kill(run, f.target, report)
            elif f.kind == "broker_kill":
                self._kill_broker(report)
            elif f.kind == "finance":
                run.http.post(
                    f"http://127.0.0.1:{run.cfg.finance_port}/_sim/faults", json=dict(f.params)
                ).raise_for_status()
                report.finance_faults += 1
            elif f.kind == "do":
                for port in run.do_ports.values():
                    run.http.post(f"http://127.0.0.1:{port}/_sim/faults", json=dict(f.params)).raise_for_status()
                report.do_faults += 1
            elif f.kind == "poison":
                self._poison(run, f.target, report)
        except Exception as e:  # a fault that could not be injected is reported, never fatal to the run
            report.notes.append(f"{f.describe()}: not injected: {type(e).__name__}: {e}")
            self.say(f"  [red]could not inject {f.describe()}: {e}[/]")

    def _kill(self, run: Run, service: str, report: Report) -> None:
        child = run.stack.children[service]
        deadline = time.monotonic() + 30
        while not child.alive() and time.monotonic() < deadline:  # being restarted: kill the new one
            run.stack.keep_alive()
            time.sleep(0.2)
        if child.proc is None or not child.alive():
            raise RuntimeError(f"{service} is not running")
        os.killpg(child.proc.pid, signal.SIGKILL)
        child.proc.wait(10)
        report.kills += 1
        report.kills_by_service[service] = report.kills_by_service.get(service, 0) + 1

    def _kill_broker(self, report: Report) -> None:
        assert self.infra is not None
        kafka = self.infra.kafka
        if not isinstance(kafka, ApacheKafka):
            raise RuntimeError("only Apache Kafka keeps its data across a crash")

        def crash_and_restart() -> None:
            try:
                kafka.kill()
                time.sleep(5)  # the services see it gone (connections refused) before it comes back
                kafka.start()
            except BaseException as e:
                self.broker_error.append(e)

        report.broker_kills += 1
        self.broker_thread = threading.Thread(target=crash_and_restart, name="broker-crash", daemon=True)
        self.broker_thread.start()

    def _poison(self, run: Run, kind: str, report: Report) -> None:
        """Produce one poison record (without waiting: the broker may be down; the loop polls for delivery)."""
        s = run.settings()
        topic = s.kafka_topic_prefix + POISON_KINDS[kind]
        if self.poison_producer is None:
            cfg = producer_config(s, "chaos-poison") | {"message.max.bytes": 2_000_000, "log_level": 2}
            self.poison_producer = Producer(cfg)

        def delivered(err: Any, msg: Any) -> None:
            if err is None:
                self.poison_offsets[kind] = (topic, msg.partition(), msg.offset())
            else:
                self.poison_errors.append(f"{kind}: {err}")

        self.poison_producer.produce(
            topic, key=poison_key(kind), value=poison_value(kind, run.accounts[0].name), on_delivery=delivered
        )
        report.poison_injected += 1

    def _poison_delivered(self, expected: int) -> bool:
        if self.poison_producer is not None:
            self.poison_producer.poll(0)
        return len(self.poison_offsets) >= expected

    # ---------------------------------------------------------------------------------------- the verdict
    def _judge(
        self,
        run: Run,
        accounts: list[GenAccount],
        base_tables: dict[str, list[str]],
        base_finance: list[dict[str, Any]],
        base_dead: list[dict[str, Any]],
        r: Report,
    ) -> None:
        """Fill the report's verdicts: finance, lines, completions, read models, poison, services up."""
        s = run.settings()
        self._judge_finance(run, accounts, base_finance, r)
        self._judge_lines(run, accounts, r)
        _judge_completions(s, r)
        # Read models, table by table, row by row.
        diffs = diff_tables(base_tables, run.tables())
        r.table_diffs = [d.__dict__ | {"equal": d.equal} for d in diffs]
        r.read_models_equal = bool(diffs) and all(d.equal for d in diffs)
        self._judge_poison(run, s, base_dead, r)
        self._judge_liveness(run, r)

    def _judge_finance(
        self, run: Run, accounts: list[GenAccount], base_finance: list[dict[str, Any]], r: Report
    ) -> None:
        """What finance holds: every invoice once, with its gross, as in the undisturbed run."""
        gross = {u: g for a in accounts for u, g in a.gross_by_invoice.items()}
        finance = self._safe(run.finance_rows, [])
        fv = judge_finance(finance, gross, base_finance)
        r.finance_rows, r.finance_ok = fv.rows, fv.ok
        r.lost = len(fv.lost)
        r.doubled = sum(n - 1 for n in fv.doubled.values()) + len(fv.updated)
        if not fv.ok:
            r.notes.append(
                f"finance: lost {fv.lost[:5]}, doubled {fv.doubled}, updated {fv.updated}, wrong {dict(list(fv.wrong_amounts.items())[:5])}, unexpected {fv.unexpected[:5]}"
            )

    def _judge_lines(self, run: Run, accounts: list[GenAccount], r: Report) -> None:
        """Every invoice's current lines in the read model, once each."""
        expected = {u: n for a in accounts for u, n in a.lines_by_invoice.items()}
        with connect(run.stack.database_url) as conn:
            got = {
                row["invoice_uuid"]: (row["n"], row["d"])
                for row in conn.execute(
                    "SELECT invoice_uuid, count(*) AS n, count(DISTINCT line_index) AS d FROM readmodel.cost_lines "
                    "WHERE current GROUP BY 1"
                )
            }
        r.lost_lines = sum(max(0, n - got.get(u, (0, 0))[1]) for u, n in expected.items())
        r.lost += r.lost_lines
        r.doubled += sum(max(0, got.get(u, (0, 0))[0] - n) for u, n in expected.items())

    def _judge_poison(self, run: Run, s: Settings, base_dead: list[dict[str, Any]], r: Report) -> None:
        """Each poison record in its topic's dead-letter topic, with the reason; nothing else dead-lettered."""
        found: dict[str, list[dict[str, str]]] = {}
        for kind, (topic, _partition, offset) in self.poison_offsets.items():
            copies = []
            for rec in read_topic(s, topic + DLQ_SUFFIX, timeout=60):
                h = {k: v.decode("utf-8", "replace") for k, v in rec.headers.items()}
                if h.get(H_TOPIC) == topic and h.get(H_OFFSET) == str(offset) and rec.key == poison_key(kind).decode():
                    copies.append(
                        {
                            "service": h.get(H_SERVICE, ""),
                            "error_class": h.get(H_ERROR_CLASS, ""),
                            "reason": h.get(H_ERROR_MESSAGE, "")[:200],
                        }
                    )
            found[kind] = copies
        r.poison = {k: {"topic": self.poison_offsets[k][0], "dead_letters": v} for k, v in found.items()}
        r.poison_dead_lettered = sum(
            1 for v in found.values() if v and all(c["error_class"] and c["reason"] for c in v)
        )
        poison_keys = {poison_key(k).decode() for k in POISON_KINDS}
        base_set = Counter(_dead_key(d, "baseline.") for d in base_dead)
        chaos_set = Counter(
            _dead_key(d, run.prefix) for d in run.dead_letter_rows() if d["record_key"] not in poison_keys
        )
        r.unexpected_dead_letters = sum((chaos_set - base_set).values())
        if r.unexpected_dead_letters:
            r.notes.append(f"dead letters beyond the poison: {dict(chaos_set - base_set)}")

    def _judge_liveness(self, run: Run, r: Report) -> None:
        """Every service up (and the simulators, and the broker), and every service killed at least once."""
        r.restarts_by_service = dict(run.restarts)
        r.services_down = [c.name for c in run.stack.children.values() if not c.alive()]
        if self.broker_error:
            r.notes.append(f"broker restart failed: {self.broker_error[0]!r}")
            r.services_down.append("broker")
        missing = (
            [s for s in KILLED_SERVICES if not r.kills_by_service.get(s)] if r.kills >= len(KILLED_SERVICES) else []
        )
        if missing:
            r.notes.append(f"services never killed: {missing}")


def _judge_completions(s: Settings, r: Report) -> None:
    """One content per invoice revision (a re-sent copy is harmless; another content is not)."""
    contents: dict[tuple[str, int], set[bytes]] = {}
    for rec in read_topic(s, s.kafka_topic_prefix + INVOICE_COMPLETED.base, timeout=60):
        try:
            _, done = decode(rec.value)
        except EventDecodeError:
            continue  # the poison
        if isinstance(done, InvoiceCompleted):
            contents.setdefault((done.invoice_uuid, done.revision), set()).add(rec.value or b"")
    twice = {f"{u}#{rev}": len(v) for (u, rev), v in contents.items() if len(v) > 1}
    r.doubled += len(twice)
    if twice:
        r.notes.append(f"revisions completed twice with different content: {dict(list(twice.items())[:5])}")
    revisions = Counter(u for u, _ in contents)
    again = {u: n for u, n in revisions.items() if n > 1}
    if again:
        r.notes.append(f"invoices completed in more than one revision: {dict(list(again.items())[:5])}")


def _dead_key(d: dict[str, Any], prefix: str) -> str:
    topic = str(d.get("source_topic") or "")
    return json.dumps([topic.removeprefix(prefix), d.get("record_key"), d.get("error_class"), d.get("service")])


# ----------------------------------------------------------------------------------------------- printing
def print_report(r: Report, console: Console) -> None:
    t = Table(title=f"cloudbill chaos, seed {r.seed} ({r.kafka} Kafka)", show_lines=False)
    t.add_column("check")
    t.add_column("result")
    for name, ok in r.checks.items():
        t.add_row(name, "[green]pass[/]" if ok else "[red]FAIL[/]")
    console.print(t)
    f = Table(title="faults injected and outcome")
    f.add_column("what")
    f.add_column("value")
    rows = [
        ("kills (by service)", f"{r.kills} {r.kills_by_service}"),
        ("restarts by the supervisor", str(r.restarts_by_service)),
        ("broker kills", str(r.broker_kills)),
        ("finance faults / DigitalOcean faults", f"{r.finance_faults} / {r.do_faults}"),
        ("poison injected / dead-lettered", f"{r.poison_injected} / {r.poison_dead_lettered}"),
        ("invoices expected / finance rows", f"{r.invoices_expected} / {r.finance_rows}"),
        ("lost (invoices) / lost lines / doubled", f"{r.lost} / {r.lost_lines} / {r.doubled}"),
        ("read models equal", str(r.read_models_equal)),
        (
            "baseline / chaos converged in",
            f"{r.baseline_s}s / {r.converged_s}s (settled {r.settle_after_last_fault_s}s after the last fault)",
        ),
        ("services down", ", ".join(r.services_down) or "none"),
    ]
    for k, v in rows:
        f.add_row(k, v)
    console.print(f)
    differing = [d for d in r.table_diffs if not d["equal"]]
    for d in differing:
        console.print(f"[red]table {d['table']}[/]: {d['missing']} missing, {d['extra']} extra ({d['example']})")
    for note in r.notes:
        console.print(f"note: {note}")
    console.print("[bold green]OK[/]: nothing lost, nothing doubled" if r.ok else "[bold red]FAILED[/]")


def run_chaos(opts: ChaosOptions, console: Console | None = None) -> Report:
    """The whole chaos run; the report is written to `opts.out` (JSON) when given."""
    console = console or Console(stderr=True)
    chaos = Chaos(opts, console)
    report = chaos.run()
    print_report(report, console)
    if opts.out is not None:
        opts.out.parent.mkdir(parents=True, exist_ok=True)
        opts.out.write_text(json.dumps(report.to_json(), indent=2, default=str) + "\n")
    return report


def register(app: typer.Typer) -> None:
    @app.command()
    def chaos(
        seed: Annotated[int, typer.Option(help="Seed of the accounts and of the fault plan.")] = 1,
        invoices: Annotated[int, typer.Option(help="Invoices in all, over the generated accounts.")] = 200,
        kills: Annotated[int, typer.Option(help="SIGKILLs spread over every service.")] = 20,
        kafka: Annotated[
            str, typer.Option(help="apache (default; the broker is killed once too) or embedded.")
        ] = "apache",
        out: Annotated[Path | None, typer.Option(help="Write the report here as JSON.")] = None,
        accounts: Annotated[int, typer.Option(help="Generated DigitalOcean accounts.")] = 3,
        min_lines: Annotated[int, typer.Option(help="Smallest invoice, in lines.")] = 5,
        max_lines: Annotated[int, typer.Option(help="Largest invoice, in lines.")] = 2000,
        finance_outage_s: Annotated[float, typer.Option(help="How long finance answers 503.")] = 60.0,
        workdir: Annotated[Path, typer.Option(help="Accounts, logs and data of both runs.")] = Path(".cloudbill/chaos"),
    ) -> None:
        """Run the pipeline twice on generated accounts, undisturbed and under a seeded storm of faults; compare.

        Exit 0 only when nothing was lost or doubled and every check passed."""
        from shared.settings import ConfigError

        if kafka not in ("apache", "embedded"):
            raise ConfigError(f"--kafka {kafka!r}: expected apache or embedded")
        if invoices < 1 or kills < 0 or not 1 <= min_lines <= max_lines:
            raise ConfigError("--invoices must be >= 1, --kills >= 0, and 1 <= --min-lines <= --max-lines")
        opts = ChaosOptions(
            seed=seed,
            invoices=invoices,
            kills=kills,
            kafka=kafka,  # type: ignore[arg-type]  # a str checked against the Literal's values above
            out=out,
            workdir=workdir,
            accounts=accounts,
            min_lines=min_lines,
            max_lines=max_lines,
            finance_outage_s=finance_outage_s,
        )
        logging.basicConfig(level=logging.WARNING)
        report = run_chaos(opts, Console())
        raise typer.Exit(0 if report.ok else 1)


__all__ = ["SERVICES", "ChaosOptions", "Report", "register", "run_chaos"]
