"""`make bench` / `python -m bench`: the machine's ceilings, the parser, and the whole pipeline.

Results are printed and written as JSON (bench/results/latest.json by default) so runs can be compared.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console
from rich.pretty import Pretty

from bench.ceilings import kafka_ceiling
from bench.parser import parser_bench
from bench.pipeline import pipeline_bench
from shared.devinfra import EmbeddedKafka


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--invoices", type=int, default=120)
    ap.add_argument("--lines", type=int, default=60)
    ap.add_argument("--resources", type=int, default=300)
    ap.add_argument("--ceiling-messages", type=int, default=200_000)
    ap.add_argument("--skip-pipeline", action="store_true")
    ap.add_argument("--out", type=Path, default=Path("bench/results/latest.json"))
    args = ap.parse_args()
    console = Console()
    report: dict = {
        "when": datetime.now(UTC).isoformat(),
        "machine": {"cpus": __import__("os").cpu_count(), "python": platform.python_version()},
    }
    with console.status("CSV parser..."):
        report["parser"] = parser_bench()
    console.print("parser", Pretty(report["parser"]))
    with console.status("Kafka ceilings (embedded broker)..."), EmbeddedKafka() as broker:
        report["kafka_ceiling"] = kafka_ceiling(broker.bootstrap, args.ceiling_messages)
    console.print("kafka ceiling", Pretty(report["kafka_ceiling"]))
    if not args.skip_pipeline:
        t0 = time.perf_counter()
        with console.status(f"pipeline: {args.invoices} invoices x {args.lines} lines..."):
            report["pipeline"] = pipeline_bench(args.invoices, args.lines, args.resources)
        report["pipeline"]["wall_s"] = round(time.perf_counter() - t0, 1)
        console.print("pipeline", Pretty(report["pipeline"]))
        ceiling = report["kafka_ceiling"]["consume_msgs_per_s"]
        rate = report["pipeline"].get("cost_lines_per_s_to_completed")
        if rate:
            report["pipeline"]["share_of_consume_ceiling"] = round(rate / ceiling, 4)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    console.print(f"written {args.out}")


if __name__ == "__main__":
    main()
