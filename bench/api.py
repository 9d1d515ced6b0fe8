"""`GET /api/v1/billing/cost-lines` latency over a large read model (1,000,000 lines by default).

The lines are loaded with COPY straight into a fresh read-model database (no pipeline needed to reach the
size), the API runs as its own process (`cloudbill run api`), and each query shape is asked over HTTP with a
valid admin token, rotating over the billing periods: the latency a platform admin sees, serialization
included. The same queries are also timed straight on the database (`db`): what the indexes give, apart
from HTTP and the machine's other load. Shapes: the first page of a period, with and without a kind filter, and a deep keyset page (a
cursor 90% of the way into the period), with and without the kind.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

import httpx
import psycopg

from bench.data import COST_LINE_COLUMNS, cost_line_rows
from bench.stages import stop_process
from services.api.domain import decode_cursor, encode_cursor
from services.api.queries import cost_lines_sql
from shared.auth import mint
from shared.db import migrate
from shared.devinfra import free_port, wait_for_port

TARGET_P99_MS = 25.0
PAGE = 100
KIND = "volume"  # 15% of the lines: a filter that keeps a real share of each period


def load(database_url: str, rows: int, n_periods: int) -> dict[str, Any]:
    """COPY `rows` served cost lines over `n_periods` periods into an empty read model, then VACUUM ANALYZE."""
    migrate(database_url, ["readmodel"])
    sql = f"COPY readmodel.cost_lines ({', '.join(COST_LINE_COLUMNS)}) FROM STDIN"
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("TRUNCATE readmodel.cost_lines")
        t0 = time.perf_counter()
        with conn.transaction(), conn.cursor().copy(sql) as cp:
            for row in cost_line_rows(rows, n_periods=n_periods, seed=3):
                cp.write_row(row)
        copy_s = time.perf_counter() - t0
        # What autovacuum does to a read model in steady state (hint bits, visibility map, statistics); measured
        # right after a bulk load, the first reads of each page would pay for it instead.
        t1 = time.perf_counter()
        conn.execute("VACUUM (ANALYZE) readmodel.cost_lines")
        vacuum_s = time.perf_counter() - t1
    return {
        "rows": rows,
        "periods": n_periods,
        "load_s": round(copy_s, 1),
        "load_rows_per_s": round(rows / copy_s),
        "vacuum_analyze_s": round(vacuum_s, 1),
    }


def _deep_cursors(database_url: str, periods: list[date], kind: str | None) -> dict[date, str]:
    """Per period, the cursor of the row 90% of the way through it (the keyset the client would hold there)."""
    out: dict[date, str] = {}
    where = "AND kind = %(kind)s" if kind else ""
    with psycopg.connect(database_url) as conn:
        for p in periods:
            n = conn.execute(
                f"SELECT count(*) FROM readmodel.cost_lines WHERE current AND period = %(p)s {where}",
                {"p": p, "kind": kind},
            ).fetchone()
            offset = int((n[0] if n else 0) * 0.9)
            row = conn.execute(
                f"SELECT invoice_uuid, line_index FROM readmodel.cost_lines WHERE current AND period = %(p)s {where}"
                " ORDER BY invoice_uuid, line_index OFFSET %(o)s LIMIT 1",
                {"p": p, "kind": kind, "o": offset},
            ).fetchone()
            if row:
                out[p] = encode_cursor([row[0], row[1]])
    return out


def _percentiles(ms: list[float]) -> dict[str, float]:
    q = statistics.quantiles(ms, n=100, method="inclusive")
    return {
        "requests": len(ms),
        "p50_ms": round(statistics.median(ms), 2),
        "p95_ms": round(q[94], 2),
        "p99_ms": round(q[98], 2),
        "max_ms": round(max(ms), 2),
    }


def measure(
    database_url: str,
    workdir: Path,
    *,
    rows: int,
    requests: int,
    n_periods: int = 24,
    on_status: Callable[[str], None] = print,
    cleanup: contextlib.ExitStack | None = None,
) -> dict[str, Any]:
    """Load, start the API, time every query shape; the API process is stopped before returning (and by
    `cleanup` if the bench is interrupted meanwhile)."""
    on_status(f"api: loading {rows:,} cost lines with COPY")
    result: dict[str, Any] = {"load": load(database_url, rows, n_periods), "target_p99_ms": TARGET_P99_MS}
    with psycopg.connect(database_url) as conn:
        periods = [r[0] for r in conn.execute("SELECT DISTINCT period FROM readmodel.cost_lines ORDER BY 1")]
    deep = {None: _deep_cursors(database_url, periods, None), KIND: _deep_cursors(database_url, periods, KIND)}
    secret, port = secrets.token_hex(32), free_port()
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "DATABASE_", "API_", "DIGITALOCEAN_"))
    } | {
        "DATABASE_URL": database_url,
        "API_JWT_SECRET": secret,
        "API_PORT": str(port),
        "LOG_LEVEL": "WARNING",
        "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1",  # readiness only; the billing routes never touch the broker
    }
    workdir.mkdir(parents=True, exist_ok=True)
    with (workdir / "api.log").open("ab") as logf:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cloudbill", "run", "api"], env=env, stdout=logf, stderr=subprocess.STDOUT
        )
    if cleanup is not None:
        cleanup.callback(stop_process, proc)
    try:
        if not wait_for_port("127.0.0.1", port, 60):
            raise RuntimeError(f"the API did not listen on {port}; log: {workdir / 'api.log'}")
        token = mint(secret, algorithm="HS256", ttl_s=3600, claims={"roles": ["platform_admin"]})
        on_status(f"api: {requests} requests per query shape, shapes interleaved")
        with httpx.Client(
            base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {token}"}, timeout=30
        ) as client:
            http = _time_shapes(
                lambda params: _get_page(client, params), lambda: client.get("/healthz"), periods, deep, requests
            )
        with psycopg.connect(database_url, autocommit=True) as conn:
            db = _time_shapes(
                lambda params: _query_page(conn, params), lambda: conn.execute("SELECT 1"), periods, deep, requests
            )
        for name in (*SHAPES, "floor"):
            result[name] = http[name] | {"db": db[name]}
    finally:
        stop_process(proc)
    result["p99_ms_worst"] = max(result[s]["p99_ms"] for s in SHAPES)
    result["db_p99_ms_worst"] = max(result[s]["db"]["p99_ms"] for s in SHAPES)
    result["meets_target"] = result["p99_ms_worst"] <= TARGET_P99_MS
    return result


SHAPES: dict[str, tuple[str | None, bool]] = {  # name -> (kind filter, deep keyset page)
    "first_page": (None, False),
    "first_page_kind": (KIND, False),
    "deep_page": (None, True),
    "deep_page_kind": (KIND, True),
}


def _get_page(client: httpx.Client, params: dict[str, Any]) -> int:
    r = client.get("/api/v1/billing/cost-lines", params=params)
    r.raise_for_status()
    return len(r.json()["items"])


def _query_page(conn: psycopg.Connection, params: dict[str, Any]) -> int:
    """The repository's own query, without HTTP: what the indexes give."""
    after = decode_cursor(params["cursor"], (str, int)) if "cursor" in params else ("", -1)
    sql_params = {
        "period": params["period"],
        "kind": params.get("kind"),
        "after_uuid": after[0],
        "after_index": after[1],
        "limit": params["limit"] + 1,
    }
    return len(conn.execute(cost_lines_sql(params.get("kind")), sql_params).fetchall())


def _time_shapes(
    ask: Callable[[dict[str, Any]], int],
    floor: Callable[[], object],
    periods: list[date],
    deep: dict[str | None, dict[date, str]],
    requests: int,
) -> dict[str, dict[str, Any]]:
    """Every shape once per round, rotating over the periods: a burst of load from elsewhere on the machine hits
    all shapes alike instead of whichever happened to run then. Two warm-up rounds per period first.

    `floor` (GET /healthz, or SELECT 1) is timed in the same rounds: the latency of doing nothing on this machine
    right now, the ceiling the cost-lines figures compare with."""

    def params(name: str, i: int) -> dict[str, Any]:
        kind, is_deep = SHAPES[name]
        p = periods[i % len(periods)]
        out: dict[str, Any] = {"period": p.isoformat(), "limit": PAGE}
        if kind:
            out["kind"] = kind
        if is_deep:
            out["cursor"] = deep[kind][p]
        return out

    for i in range(2 * len(periods)):
        for name in SHAPES:
            ask(params(name, i))
    ms: dict[str, list[float]] = {name: [] for name in (*SHAPES, "floor")}
    items = dict.fromkeys(SHAPES, 0)
    for i in range(requests):
        for name in SHAPES:
            q = params(name, i)
            t0 = time.perf_counter()
            items[name] += ask(q)
            ms[name].append((time.perf_counter() - t0) * 1000)
        t0 = time.perf_counter()
        floor()
        ms["floor"].append((time.perf_counter() - t0) * 1000)
    out = {name: _percentiles(ms[name]) | {"rows_per_page": round(items[name] / requests, 1)} for name in SHAPES}
    return out | {"floor": _percentiles(ms["floor"])}
