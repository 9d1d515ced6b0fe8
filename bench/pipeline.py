"""The whole pipeline on a synthetic account: every service a separate process, as in production.

Measures the time from one poll to every invoice ingested, completed (matched) and pushed; cost lines per
second through the pipeline; each stage's drain time; and each service's peak resident memory.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

from cloudbill.stack import Stack, StackConfig
from cloudbill.status import invoice_progress
from shared.devinfra import free_port


class RssSampler(threading.Thread):
    def __init__(self, stack: Stack) -> None:
        super().__init__(daemon=True)
        self.stack = stack
        self.peak: dict[str, int] = {}
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(0.5):
            for name, child in list(self.stack.children.items()):
                if child.proc is None or child.proc.poll() is not None:
                    continue
                try:
                    p = psutil.Process(child.proc.pid)
                    rss = p.memory_info().rss + sum(c.memory_info().rss for c in p.children(recursive=True))
                except psutil.Error:
                    continue
                self.peak[name] = max(self.peak.get(name, 0), rss)


def pipeline_bench(invoices: int, lines: int, resources: int, timeout: float = 900) -> dict:
    work = Path(tempfile.mkdtemp(prefix="cloudbill-bench-"))
    scenario = work / "scenario"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "cloudbill",
            "sim",
            "generate",
            "--invoices",
            str(invoices),
            "--lines",
            str(lines),
            "--resources",
            str(resources),
            "--out",
            str(scenario),
            "--seed",
            "7",
        ],
        check=True,
    )
    cfg = StackConfig(
        scenario=str(scenario),
        workdir=work / "stack",
        do_port=free_port(),
        finance_port=free_port(),
        api_port=free_port(),
    )
    result: dict = {"invoices": invoices, "lines_per_invoice": lines, "resources": resources}
    with Stack(cfg) as stack:
        t_start = time.perf_counter()
        stack.up()
        result["startup_s"] = round(time.perf_counter() - t_start, 1)
        sampler = RssSampler(stack)
        sampler.start()
        stack.poll_now("resources")
        stack.wait_inventory_read(120)
        t0 = time.perf_counter()
        stack.poll_now("history")
        result["poll_history_s"] = round(time.perf_counter() - t0, 2)
        marks: dict[str, float] = {}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            c = invoice_progress(stack.database_url)
            for k in ("discovered", "ingested", "completed", "pushed"):
                if k not in marks and c.get(k, 0) >= invoices:
                    marks[k] = time.perf_counter() - t0
            if "pushed" in marks or stack.dead():
                break
            time.sleep(0.25)
        sampler.stopped.set()
        result["seconds_to_all"] = {k: round(v, 2) for k, v in marks.items()}
        if "completed" in marks:
            result["cost_lines_per_s_to_completed"] = round(invoices * lines / marks["completed"])
        if "pushed" in marks:
            result["invoices_per_s_to_pushed"] = round(invoices / marks["pushed"], 1)
        result["peak_rss_mib"] = {k: round(v / 2**20) for k, v in sorted(sampler.peak.items())}
        result["dead_services"] = [c.name for c in stack.dead()]
        result["complete"] = "pushed" in marks
    return result
