"""`make bench` / `python -m bench`: the machine's ceilings and the whole pipeline, on one broker and one PostgreSQL.

One run starts a broker (Apache Kafka when Java 17+ and Maven are here, else the embedded one; `--kafka`
chooses) and an embedded PostgreSQL server, then measures on both, side by side:
1. ceilings: confluent-kafka produce and consume, COPY into cost_lines, the raw consume → produce → COPY chain,
   and the CSV parser;
2. stage capacity: the projector and the finance pusher alone, fed from filled topics;
3. the pipeline: every service its own process, from the history poll to the last invoice pushed (until a
   stall of --stall-timeout seconds, then reported incomplete);
4. the API: cost-lines latency over --api-rows lines loaded with COPY.
Writes JSON (--out), a PNG of lines over time per stage (--png) and prints a table.

Every process it starts is stopped on every exit path: normal end, exception, Ctrl-C, SIGTERM, SIGHUP, stall.
(A SIGKILL cannot be caught: the work folder's logs name what was running.) Exit status: 0 when everything
measured completed, 2 when the pipeline did not complete, 1 on an error, 128+signal when interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

from rich.console import Console

DEFAULT_OUT = Path("bench/results/latest.json")


class Interrupted(BaseException):
    """A termination signal arrived: unwind, stopping everything started (a BaseException, like
    KeyboardInterrupt, so that no `except Exception` on the way swallows it)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class SignalGuard:
    """SIGTERM, SIGINT and SIGHUP raise `Interrupted` in the main thread, once: from then on (or once the cleanup
    has begun, `stopping`), further signals are ignored so they cannot cut the cleanup short."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)

    def __init__(self) -> None:
        self.stopping = False
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        if self.received is None:
            self.received = signum
        if self.stopping:
            return
        self.stopping = True
        raise Interrupted(signum)

    def __enter__(self) -> SignalGuard:
        for s in self.SIGNALS:
            self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for s, h in self._previous.items():
            signal.signal(s, h)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    size = ap.add_argument_group("pipeline size")
    size.add_argument("--invoices", type=int, default=40, help="monthly invoices (default 40)")
    size.add_argument("--lines", type=int, default=250, help="CSV lines per invoice (default 250)")
    size.add_argument("--big-invoices", type=int, default=0, help="extra invoices of --big-lines lines (default 0)")
    size.add_argument("--big-lines", type=int, default=20_000, help="lines of each big invoice (default 20000)")
    size.add_argument("--resources", type=int, default=300, help="resources in the inventory (default 300)")
    ap.add_argument(
        "--kafka", choices=("apache", "embedded"), default=None, help="broker (default: apache when Java+Maven)"
    )
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON report (default {DEFAULT_OUT})")
    ap.add_argument("--png", type=Path, default=None, help="chart of lines over time (default: --out with .png)")
    ap.add_argument("--stall-timeout", type=float, default=60.0, help="end the pipeline run after N s without progress")
    ap.add_argument("--sample-interval", type=float, default=1.0, help="pipeline progress sampling period (s)")
    ap.add_argument("--ceiling-messages", type=int, default=200_000, help="messages/rows for the raw ceilings")
    ap.add_argument("--chain-lines", type=int, default=100_000, help="lines through the raw chain")
    ap.add_argument(
        "--stage-lines", type=int, default=50_000, help="cost lines for the matcher's and the projector's capacity"
    )
    ap.add_argument("--stage-invoices", type=int, default=200, help="invoices for the finance pusher's capacity")
    ap.add_argument("--api-rows", type=int, default=1_000_000, help="cost lines loaded for the API measurement")
    ap.add_argument("--api-requests", type=int, default=300, help="requests per API query shape")
    for part in ("ceilings", "stages", "pipeline", "api"):
        ap.add_argument(f"--skip-{part}", action="store_true", help=f"do not measure the {part}")
    ap.add_argument("--workdir", type=Path, default=None, help="work folder (default: a new temporary one)")
    ap.add_argument("--keep-workdir", action="store_true", help="keep the work folder (logs, scenario) afterwards")
    args = ap.parse_args(argv)
    for name in ("invoices", "lines", "resources", "ceiling_messages", "chain_lines", "stage_lines", "api_requests"):
        if getattr(args, name) < 1 and not (name == "resources" and args.resources == 0):
            ap.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.big_invoices < 0 or args.big_lines < 1:
        ap.error("--big-invoices must be >= 0 and --big-lines >= 1")
    if args.stall_timeout <= 0 or args.sample_interval <= 0:
        ap.error("--stall-timeout and --sample-interval must be > 0")
    if args.api_rows < 1000:
        ap.error("--api-rows must be >= 1000")
    args.png = args.png or args.out.with_suffix(".png")
    return args


def status_printer(console: Console) -> Callable[[str], None]:
    """Phase messages always; progress lines at most every 5 s (a log file, not a terminal, reads them)."""
    last = {"t": 0.0}

    def say(msg: str) -> None:
        progress = "invoices pushed" in msg
        now = time.monotonic()
        if progress and now - last["t"] < 5:
            return
        last["t"] = now if progress else 0.0
        console.print(f"[dim]{datetime.now():%H:%M:%S}[/dim] {msg}", highlight=False)

    return say


@contextlib.contextmanager
def workspace(args: argparse.Namespace) -> Iterator[Path]:
    work = (args.workdir or Path(tempfile.mkdtemp(prefix="cloudbill-bench-"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    try:
        yield work
    finally:
        if not args.keep_workdir and args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


def measure(
    args: argparse.Namespace, report: dict[str, Any], cleanup: contextlib.ExitStack, say: Callable[[str], None]
) -> None:
    """Fill `report` part by part (a part already in it survives an interruption of a later one)."""
    from bench import api, ceilings
    from bench.infra import broker_info, default_flavor, make_broker
    from bench.parser import parser_bench
    from shared.devinfra import EmbeddedPostgres

    work = cleanup.enter_context(workspace(args))
    report["workdir"] = str(work)
    flavor = args.kafka or default_flavor()
    broker = make_broker(flavor, work)
    say(f"starting {broker.description} and PostgreSQL in {work}")
    cleanup.callback(broker.stop)
    broker.start()
    report["broker"] = broker_info(broker)
    pg = EmbeddedPostgres(workdir=work / "postgres")
    cleanup.callback(pg.stop)
    pg.start()
    if not args.skip_ceilings:
        say("ceilings: produce, consume, COPY, chain, parser")
        c = ceilings.measure(
            broker.bootstrap, pg.create_database("bench_ceilings"), args.ceiling_messages, args.chain_lines
        )
        c["csv_parser_lines_per_s"] = parser_bench(lines=min(20_000, args.ceiling_messages))["lines_per_s"]
        report["ceilings"] = c
    if not args.skip_stages:
        say("stage capacity: matcher, projector, finance pusher")
        report["stage_capacity"] = _stage_capacity(args, broker.bootstrap, flavor, pg, cleanup)
    if not args.skip_pipeline:
        report["pipeline"] = _pipeline(args, report, work, flavor, broker, pg, cleanup, say)
    if not args.skip_api:
        report["api"] = api.measure(
            pg.create_database("bench_api"),
            work / "api",
            rows=args.api_rows,
            requests=args.api_requests,
            on_status=say,
            cleanup=cleanup,
        )


def _stage_capacity(
    args: argparse.Namespace, bootstrap: str, flavor: Any, pg: Any, cleanup: contextlib.ExitStack
) -> dict[str, Any]:
    """The matcher's, the projector's and the finance pusher's own capacity, each replaying a topic alone."""
    from bench import stages

    invoices = max(1, args.stage_lines // 2500)
    return {
        "matcher": stages.matcher_replay(
            bootstrap, flavor, invoices=max(1, args.stage_lines // 500), lines=500, cleanup=cleanup
        ),
        "projector": stages.projector_replay(
            bootstrap,
            pg.create_database("bench_projector"),
            invoices=invoices,
            lines=max(1, args.stage_lines // invoices),
        ),
        "finance_pusher": stages.pusher_replay(
            bootstrap, pg.create_database("bench_pusher"), invoices=args.stage_invoices, cleanup=cleanup
        ),
    }


def _pipeline(
    args: argparse.Namespace,
    report: dict[str, Any],
    work: Path,
    flavor: Any,
    broker: Any,
    pg: Any,
    cleanup: contextlib.ExitStack,
    say: Callable[[str], None],
) -> dict[str, Any]:
    """The whole pipeline on a generated scenario, compared with the ceilings measured before it."""
    from bench.pipeline import Sizes, run_pipeline

    sizes = Sizes(args.invoices, args.lines, args.big_invoices, args.big_lines, args.resources)
    say(f"pipeline: {sizes.expected_invoices} invoices, {sizes.expected_lines:,} cost lines")
    pipe = run_pipeline(
        work / "pipeline",
        sizes,
        bootstrap=broker.bootstrap,
        flavor=flavor,
        database_url=pg.create_database("cloudbill"),
        finance_database_url=pg.create_database("finance"),
        stall_s=args.stall_timeout,
        sample_s=args.sample_interval,
        on_status=say,
        cleanup=cleanup,
        infra=_infra_pids(broker, pg),
    )
    chain = report.get("ceilings", {}).get("chain_lines_per_s")
    rate = pipe.get("cost_lines_per_s")
    modeled = report.get("ceilings", {}).get("modeled_chain_lines_per_s")
    pipe["ratio_to_chain_ceiling"] = round(rate / chain, 4) if rate and chain else None
    pipe["ratio_to_modeled_chain"] = round(rate / modeled, 4) if rate and modeled else None
    if not pipe["complete"] and not args.keep_workdir:  # the work folder goes: keep what explains the run
        kept = args.out.parent / f"{args.out.stem}-logs"
        shutil.rmtree(kept, ignore_errors=True)
        shutil.copytree(pipe["logs"], kept)
        pipe["logs"] = str(kept)
    return pipe


def _infra_pids(broker: Any, pg: Any) -> dict[str, int]:
    """The broker's and the PostgreSQL server's process ids, for the CPU and memory per line."""
    out: dict[str, int] = {}
    if getattr(broker, "proc", None) is not None:
        out["broker"] = broker.proc.pid
    pidfile = pg.workdir / "pgdata" / "postmaster.pid"
    with contextlib.suppress(OSError, ValueError, IndexError):
        out["postgres"] = int(pidfile.read_text().splitlines()[0])
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console()
    say = status_printer(console)
    report: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "host": platform.node()},
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
    }
    t0 = time.perf_counter()
    code = 0
    with SignalGuard() as guard:
        try:
            with contextlib.ExitStack() as cleanup:
                try:
                    measure(args, report, cleanup, say)
                finally:
                    guard.stopping = True  # from here on a signal must not cut the cleanup short
                    say("stopping everything the bench started")
        except Interrupted as e:
            report["interrupted"] = str(e)
            code = 128 + e.signum
        except Exception as e:
            report["error"] = f"{type(e).__name__}: {e}"
            console.print_exception()
            code = 1
    report["wall_s"] = round(time.perf_counter() - t0, 1)
    if code == 0 and "pipeline" in report and not report["pipeline"]["complete"]:
        code = 2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    from bench.report import plot, render

    png = plot(report, args.png)
    render(report, console)
    console.print(f"written {args.out}" + (f" and {png}" if png else ""))
    return code


if __name__ == "__main__":
    sys.exit(main())
