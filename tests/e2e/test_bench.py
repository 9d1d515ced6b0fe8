"""`python -m bench` on a tiny size: its arguments, its JSON, its chart, and that it leaves no process behind,
whether it ends normally or is stopped by SIGTERM or Ctrl-C in the middle of the pipeline."""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[2]
TINY = [
    "--invoices", "2", "--lines", "5", "--resources", "5", "--big-invoices", "1", "--big-lines", "40",
    "--ceiling-messages", "2000", "--chain-lines", "2000", "--stage-lines", "1000", "--stage-invoices", "5",
    "--api-rows", "2000", "--api-requests", "20",
]  # fmt: skip


def _bench(args: list[str], workdir: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "bench", *args, "--workdir", str(workdir)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=os.environ | {"COLUMNS": "200"},
    )


def _ours(workdir: Path) -> list[psutil.Process]:
    """Processes still running anything from the bench's work folder (brokers, PostgreSQL, services' logs)."""
    found = []
    for p in psutil.process_iter(["cmdline", "cwd"]):
        try:
            text = " ".join(p.info["cmdline"] or []) + " " + (p.info["cwd"] or "")
        except psutil.Error:
            continue
        if str(workdir) in text and p.pid != os.getpid():
            found.append(p)
    return found


def _gone(procs: list[psutil.Process], timeout: float = 10) -> list[psutil.Process]:
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    return alive


def test_tiny_run_writes_the_report_and_stops_everything(tmp_path: Path) -> None:
    work, out = tmp_path / "work", tmp_path / "r.json"
    proc = _bench([*TINY, "--kafka", "embedded", "--out", str(out)], work)
    output, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, output[-4000:]
    report = json.loads(out.read_text())
    assert report["broker"]["flavor"] == "embedded" and report["broker"]["version"]
    c = report["ceilings"]
    for k in ("produce_msgs_per_s", "consume_msgs_per_s", "copy_rows_per_s", "chain_lines_per_s"):
        assert c[k] > 0, k
    m = report["stage_capacity"]["matcher"]
    assert m["complete"] is True and m["lines"] == 1000 and m["lines_per_s"] > 0
    p = report["pipeline"]
    assert p["complete"] is True
    assert p["invoices_expected"] == p["invoices_pushed"] == p["finance_rows"] == 3
    assert p["cost_lines_expected"] == 2 * 5 + 40 and p["finance_gross_matches_history"]
    assert p["cost_lines_per_s"] > 0 and p["ratio_to_chain_ceiling"] > 0
    assert {s: p["stages"][s]["lines"] for s in ("ingested", "matched", "projected", "completed", "pushed")} == {
        s: 50 for s in ("ingested", "matched", "projected", "completed", "pushed")
    }
    assert {"ingester", "matcher", "projector", "finance-pusher", "poller", "api"} <= set(p["peak_rss_mib"])
    assert report["api"]["load"]["rows"] == 2000
    assert all(report["api"][s]["p99_ms"] > 0 for s in ("first_page", "deep_page", "deep_page_kind"))
    assert out.with_suffix(".png").stat().st_size > 10_000
    assert "Pipeline" in output and "API" in output  # the table was printed
    assert not _gone(_ours(work), timeout=5)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_mid_pipeline_stops_every_process_the_bench_started(tmp_path: Path, sig: signal.Signals) -> None:
    """On the default broker (Apache Kafka where Java and Maven are): its JVM must go too."""
    work, out = tmp_path / "work", tmp_path / "r.json"
    proc = _bench(
        [*TINY, "--skip-ceilings", "--skip-stages", "--skip-api", "--stall-timeout", "600", "--out", str(out)], work
    )
    seen, started = "", time.monotonic()
    sel = selectors.DefaultSelector()
    assert proc.stdout is not None
    sel.register(proc.stdout, selectors.EVENT_READ)
    while "pipeline: history poll" not in seen:  # every service is up and polling has begun
        assert time.monotonic() - started < 300, seen[-3000:]
        assert proc.poll() is None, seen[-3000:]
        if sel.select(1):
            seen += proc.stdout.readline()
    children = psutil.Process(proc.pid).children(recursive=True)
    running = children + _ours(work)
    assert len(children) >= 8, seen  # broker, 2 simulators, 6 services (some with children)
    proc.send_signal(sig)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, (seen + output)[-4000:]
    assert json.loads(out.read_text())["interrupted"] == sig.name
    left = _gone(running, timeout=10)
    assert not left, [(p.pid, p.cmdline()) for p in left]
    assert not _ours(work)


def test_an_error_mid_run_still_stops_the_broker_and_postgres(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An exception after the broker and PostgreSQL started: exit status 1, the error in the JSON, nothing left."""
    import bench.pipeline
    from bench.__main__ import main

    def broken(*_a: object, **_k: object) -> dict:
        raise RuntimeError("the scenario generator broke")

    monkeypatch.setattr(bench.pipeline, "run_pipeline", broken)
    work, out = tmp_path / "work", tmp_path / "r.json"
    argv = [*TINY, "--kafka", "embedded", "--skip-ceilings", "--skip-stages", "--skip-api"]
    code = main([*argv, "--workdir", str(work), "--out", str(out)])
    assert code == 1
    report = json.loads(out.read_text())
    assert report["error"] == "RuntimeError: the scenario generator broke"
    assert report["broker"]["flavor"] == "embedded"  # it had started
    assert "stopping everything" in capsys.readouterr().out
    assert not _gone(_ours(work), timeout=10)
