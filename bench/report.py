"""The bench's outputs besides the JSON: a rich table on the terminal and a PNG of lines over time per stage."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from bench.pipeline import STAGES


def _n(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.2f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.2%}"


def _ratio(v: float | None, ceiling: float | None) -> str:
    return f"{v / ceiling:.1%}" if v and ceiling else "-"


def render(report: dict[str, Any], console: Console) -> None:
    """The report as tables: ceilings, stage capacity, the pipeline, the API (each part only when measured)."""
    broker = report.get("broker", {})
    console.print(f"[bold]broker[/bold] {broker.get('description', '?')} · {report['machine']}")
    ceil = report.get("ceilings")
    if ceil:
        _render_ceilings(ceil, console)
    stages_cap = report.get("stage_capacity")
    if stages_cap:
        t = Table("stage alone, from filled topics", "rate", title="Stage capacity")
        m, p, f = (stages_cap.get(k, {}) for k in ("matcher", "projector", "finance_pusher"))
        t.add_row("matcher (cost lines/s)", _n(m.get("lines_per_s")))
        t.add_row("matcher (CPU µs per cost line)", _n(m.get("cpu_us_per_line")))
        t.add_row("projector (cost lines/s)", _n(p.get("lines_per_s")))
        t.add_row("finance pusher (invoices/s)", _n(f.get("invoices_per_s")))
        console.print(t)
    pipe = report.get("pipeline")
    if pipe:
        _render_pipeline(pipe, (ceil or {}).get("chain_lines_per_s"), console)
    api = report.get("api")
    if api:
        _render_api(api, console)


def _render_ceilings(ceil: dict[str, Any], console: Console) -> None:
    t = Table("ceiling (same broker, same PostgreSQL)", "per second", title="Ceilings")
    t.add_row(f"confluent-kafka produce ({ceil['message_bytes']} B events)", _n(ceil["produce_msgs_per_s"]))
    t.add_row("confluent-kafka consume", _n(ceil["consume_msgs_per_s"]))
    t.add_row("PostgreSQL COPY into cost_lines", _n(ceil["copy_rows_per_s"]))
    t.add_row("chain: consume → produce → COPY per line", _n(ceil["chain_lines_per_s"]))
    t.add_row("modeled chain: 3 produces + 4 consumes + 1 row per line", _n(ceil["modeled_chain_lines_per_s"]))
    if "csv_parser_lines_per_s" in ceil:
        t.add_row("CSV parser (lines)", _n(ceil["csv_parser_lines_per_s"]))
    console.print(t)


def _render_pipeline(pipe: dict[str, Any], chain: float | None, console: Console) -> None:
    t = Table("stage", "lines", "done at (s)", "lines/s since poll", "best 5 s", "share of chain", title="Pipeline")
    for k in STAGES:
        s = pipe.get("stages", {}).get(k, {})
        t.add_row(
            k,
            _n(s.get("lines")),
            _n(s.get("seconds")),
            _n(s.get("lines_per_s")),
            _n(s.get("peak_lines_per_s_5s")),
            _ratio(s.get("lines_per_s"), chain),
        )
    console.print(t)
    colour = "green" if pipe["complete"] else "red"
    console.print(
        f"[{colour}]complete: {pipe['complete']}[/{colour}] · invoices pushed {pipe['invoices_pushed']}"
        f"/{pipe['invoices_expected']} · finance rows {_n(pipe['finance_rows'])} · "
        f"cost lines/s (poll → last completed) {_n(pipe['cost_lines_per_s'])} · "
        f"ratio to chain ceiling {_pct(pipe.get('ratio_to_chain_ceiling'))} · ended: {pipe['ended']}"
    )
    console.print("peak RSS (MiB): " + ", ".join(f"{k} {v}" for k, v in pipe["peak_rss_mib"].items()))
    console.print("CPU µs per cost line: " + ", ".join(f"{k} {v}" for k, v in pipe.get("cpu_us_per_line", {}).items()))


def _render_api(api: dict[str, Any], console: Console) -> None:
    t = Table(
        "GET /api/v1/billing/cost-lines", "p50 ms", "p95 ms", "p99 ms", "max ms", "query alone p99 ms", title="API"
    )
    for shape in ("first_page", "first_page_kind", "deep_page", "deep_page_kind", "floor"):
        s = api[shape]
        t.add_row(shape, _n(s["p50_ms"]), _n(s["p95_ms"]), _n(s["p99_ms"]), _n(s["max_ms"]), _n(s["db"]["p99_ms"]))
    console.print(t)
    ok = "green" if api["meets_target"] else "red"
    console.print(
        f"[{ok}]API p99 {api['p99_ms_worst']} ms over {api['load']['rows']:,} lines "
        f"(target ≤ {api['target_p99_ms']} ms; floor: /healthz p99 {api['floor']['p99_ms']} ms, "
        f"SELECT 1 p99 {api['floor']['db']['p99_ms']} ms on this machine meanwhile)[/{ok}]"
    )


def plot(report: dict[str, Any], path: Path) -> Path | None:
    """Completed cost lines over time per stage, from the history poll (nothing to draw without a pipeline run)."""
    pipe = report.get("pipeline")
    if not pipe or not pipe.get("timeline", {}).get("t"):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tl = pipe["timeline"]
    fig, ax = plt.subplots(figsize=(10, 5.5))
    for k in STAGES:
        ax.plot(tl["t"], tl[k], label=k)
    ax.axhline(pipe["cost_lines_expected"], color="grey", linestyle=":", linewidth=1, label="expected")
    broker = report.get("broker", {}).get("description", "")
    sizes = pipe["sizes"]
    big = f" + {sizes['big_invoices']}×{sizes['big_lines']}" if sizes["big_invoices"] else ""
    ax.set_title(f"cloudbill: {sizes['invoices']}×{sizes['lines']}{big} cost lines, {broker}")
    ax.set_xlabel("seconds since the history poll")
    ax.set_ylabel("cost lines done")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
