"""The bench's own logic, without a broker: arguments, the run summary, and the signal guard."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from bench.__main__ import DEFAULT_OUT, Interrupted, SignalGuard, parse_args
from bench.ceilings import modeled_chain
from bench.pipeline import STAGES, Sizes, _peak_rate, _summarize


def test_defaults_and_derived_paths() -> None:
    args = parse_args([])
    assert (args.invoices, args.lines, args.big_invoices, args.api_rows) == (40, 250, 0, 1_000_000)
    assert args.kafka is None  # chosen at run time: Apache Kafka when Java and Maven are here
    assert args.out == DEFAULT_OUT and args.png == DEFAULT_OUT.with_suffix(".png")
    args = parse_args(["--invoices", "200", "--lines", "500", "--big-invoices", "1", "--out", "x/r.json"])
    assert (args.invoices, args.lines, args.big_invoices, args.big_lines) == (200, 500, 1, 20_000)
    assert args.png == Path("x/r.png")


@pytest.mark.parametrize(
    "argv",
    [
        ["--invoices", "0"],
        ["--lines", "0"],
        ["--big-invoices", "-1"],
        ["--big-lines", "0"],
        ["--stall-timeout", "0"],
        ["--api-rows", "10"],
        ["--kafka", "redpanda"],
    ],
)
def test_bad_arguments_are_refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        parse_args(argv)
    assert e.value.code == 2
    assert "error" in capsys.readouterr().err


def _samples(rows: list[tuple[float, int, int]]) -> list[dict[str, float]]:
    """(t, lines done by every stage, invoices done) → samples as the sampler takes them."""
    return [
        {"t": t, **dict.fromkeys(STAGES, float(n)), "completed_invoices": float(k), "pushed_invoices": float(k)}
        for t, n, k in rows
    ]


def test_summary_of_a_complete_run() -> None:
    sizes = Sizes(invoices=4, lines=100)
    s = _summarize(_samples([(1, 0, 0), (2, 100, 1), (4, 300, 3), (5, 400, 4), (6, 400, 4)]), sizes)
    assert s["cost_lines_per_s"] == 80  # 400 lines, the last invoice completed at 5 s after the poll
    assert (s["invoices_completed"], s["invoices_pushed"], s["seconds_to_all_completed"]) == (4, 4, 5)
    assert s["stages"]["completed"] == {"lines": 400, "seconds": 5, "lines_per_s": 80, "peak_lines_per_s_5s": 100}


def test_summary_of_a_stalled_run_has_no_pipeline_rate() -> None:
    sizes = Sizes(invoices=4, lines=100, big_invoices=1, big_lines=1000)
    s = _summarize(_samples([(1, 0, 0), (2, 200, 2), (10, 200, 2)]), sizes)
    assert s["cost_lines_per_s"] is None and s["seconds_to_all_completed"] is None
    assert s["completed_lines_per_s"] == 100 and s["invoices_completed"] == 2
    assert sizes.expected_invoices == 5 and sizes.expected_lines == 1400


def test_peak_rate_needs_half_a_window() -> None:
    samples = _samples([(0, 0, 0), (1, 1000, 0), (10, 1000, 0)])
    assert _peak_rate(samples, "ingested", 5.0) == 0  # 1 s of data is not a 5 s rate
    samples = _samples([(0, 0, 0), (3, 900, 0), (10, 1000, 0)])
    assert _peak_rate(samples, "ingested", 5.0) == 300


def test_modeled_chain_is_the_per_line_cost_at_raw_rates() -> None:
    # 3 produces at 300k/s, 4 consumes at 400k/s, 1 row at 100k/s: 30 µs per line
    assert modeled_chain(300_000, 400_000, 100_000) == round(1 / 30e-6)


def test_signal_guard_raises_once_then_lets_the_cleanup_finish() -> None:
    previous = signal.getsignal(signal.SIGTERM)
    with SignalGuard() as guard:
        with pytest.raises(Interrupted) as e:
            os.kill(os.getpid(), signal.SIGTERM)  # the handler runs as soon as kill() returns
        assert e.value.signum == signal.SIGTERM and guard.stopping
        os.kill(os.getpid(), signal.SIGINT)  # during the cleanup: ignored, nothing raised
        assert guard.received == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is previous
