"""A whole stack (every service an OS process) on a generated account, and the checks every fault test makes.

The checks read what users read: the finance service's rows and the read models, plus the completions on
Kafka (exactly one distinct completion per invoice revision, whatever was re-sent).
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg

from cloudbill.stack import Stack, StackConfig
from shared.db import connect
from shared.devinfra import KafkaFlavor, free_port
from shared.events import decode
from shared.money import parse_minor
from shared.topics import INVOICE_COMPLETED
from sims.generate import generate
from sims.scenario import load_scenario
from tests.helpers import read_all


@dataclass(frozen=True)
class Account:
    """A generated scenario and what a correct run must produce from it."""

    path: Path
    gross_by_invoice: dict[str, int]  # invoice uuid -> billing-history amount in cents
    lines_by_invoice: dict[str, int]

    @property
    def invoices(self) -> int:
        return len(self.gross_by_invoice)

    @property
    def lines(self) -> int:
        return sum(self.lines_by_invoice.values())


def generated_account(out: Path, *, invoices: int, lines: int, resources: int = 60, seed: int = 1) -> Account:
    generate(out, invoices=invoices, lines=lines, resources=resources, seed=seed)
    sc = load_scenario(out)
    gross = {i["invoice_uuid"]: parse_minor(i["amount"]) for i in sc.invoices}
    counts = {u: len(sc.csv_bytes(u).splitlines()) - 1 for u in gross}
    return Account(out, gross, counts)


def start_stack(
    workdir: Path, account: Account, *, bootstrap: str, flavor: KafkaFlavor, database_url: str, **extra: object
) -> Stack:
    cfg = StackConfig(
        scenario=str(account.path),
        workdir=workdir,
        kafka_bootstrap=bootstrap,
        kafka_flavor=flavor,
        database_url=database_url,
        topic_prefix=f"f{uuid.uuid4().hex[:8]}.",
        do_port=free_port(),
        finance_port=free_port(),
        api_port=free_port(),
        finance_secret=uuid.uuid4().hex * 2,
        api_secret=uuid.uuid4().hex * 2,
        **extra,  # type: ignore[arg-type]
    )
    return Stack(cfg).up()


def finance_rows(stack: Stack) -> list[dict]:
    body = httpx.get(f"http://127.0.0.1:{stack.cfg.finance_port}/api/v1/invoices", timeout=30).json()
    return list(body["invoices"])


def pushed_count(stack: Stack) -> int:
    """Invoices the read model shows pushed (0 before the projector created its schema)."""
    try:
        with connect(stack.database_url) as conn:
            row = conn.execute("SELECT count(*) AS n FROM readmodel.invoices WHERE status_rank >= 4").fetchone()
    except psycopg.Error:
        return 0
    return int(row["n"]) if row else 0


def lines_projected(stack: Stack) -> int:
    """Current cost lines in the read model (0 before the projector created its schema)."""
    try:
        with connect(stack.database_url) as conn:
            row = conn.execute("SELECT count(*) AS n FROM readmodel.cost_lines WHERE current").fetchone()
    except psycopg.Error:
        return 0
    return int(row["n"]) if row else 0


def wait_converged(
    stack: Stack, account: Account, *, idle_timeout: float = 120, on_tick: Callable[[], None] | None = None
) -> None:
    """Until every invoice is in finance and the read models show it all (every invoice pushed, every line
    projected); fails when no progress is made for `idle_timeout` seconds.

    Services that exit are restarted by the stack's supervisor (as in `dev up`), within its budget.
    """
    import time

    last, last_change = -1, time.monotonic()
    while True:
        stack.keep_alive()
        if on_tick:
            on_tick()
        try:
            n = len(finance_rows(stack)) + pushed_count(stack) + lines_projected(stack)
        except httpx.HTTPError:
            n = last
        if n >= 2 * account.invoices + account.lines:
            return
        if n != last:
            last, last_change = n, time.monotonic()
        elif time.monotonic() - last_change > idle_timeout:
            dead = [f"{c.name}:\n{c.tail(20)}" for c in stack.dead()]
            raise AssertionError(
                f"no progress for {idle_timeout:.0f}s: finance rows + invoices pushed + lines projected = {n} of "
                f"{2 * account.invoices + account.lines}; dead: {dead}"
            )
        time.sleep(1)


def assert_exactly_once(stack: Stack, account: Account) -> None:
    """Finance: one row per invoice with the account's amounts; read models: every line once; one completion each."""
    rows = finance_rows(stack)
    by_invoice: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_invoice[r["external_id"]].append(r)
    assert set(by_invoice) == set(account.gross_by_invoice), "finance holds other invoices than the account's"
    doubled = {k: len(v) for k, v in by_invoice.items() if len(v) != 1}
    assert not doubled, f"finance rows doubled: {doubled}"
    wrong = {
        k: (v[0]["amount_gross_minor"], account.gross_by_invoice[k])
        for k, v in by_invoice.items()
        if v[0]["amount_gross_minor"] != account.gross_by_invoice[k]
    }
    assert not wrong, f"finance amounts differ from the account's (got, expected): {wrong}"

    with connect(stack.database_url) as conn:
        lines = conn.execute(
            "SELECT invoice_uuid, count(*) AS n, count(DISTINCT line_index) AS d FROM readmodel.cost_lines "
            "WHERE current GROUP BY 1"
        ).fetchall()
        statuses = conn.execute("SELECT status_rank, count(*) AS n FROM readmodel.invoices GROUP BY 1").fetchall()
    got = {r["invoice_uuid"]: (r["n"], r["d"]) for r in lines}
    expected = {u: (n, n) for u, n in account.lines_by_invoice.items()}
    assert got == expected, "read-model cost lines differ from the account's (count, distinct line_index)"
    assert {r["status_rank"]: r["n"] for r in statuses} == {4: account.invoices}

    s = stack.settings()
    contents: dict[tuple[str, int], set[bytes]] = defaultdict(set)
    for rec in read_all(s, INVOICE_COMPLETED.name(s.kafka_topic_prefix), timeout=60):
        _, done = decode(rec.value)
        contents[(done.invoice_uuid, done.revision)].add(rec.value)
    assert len(contents) == account.invoices, "one revision per invoice expected"
    twice = {k: _differences(v) for k, v in contents.items() if len(v) > 1}
    assert not twice, f"revisions completed twice with different content: {twice}"


def _differences(values: set[bytes]) -> dict[str, list[object]]:
    """The envelope/data fields that differ between copies of one completion (for the failure message)."""
    import json

    docs = [json.loads(v) for v in values]
    flat = [{**{f"env.{k}": v for k, v in d.items() if k != "data"}, **d.get("data", {})} for d in docs]
    keys = set().union(*flat)
    return {k: [f.get(k) for f in flat] for k in sorted(keys) if len({json.dumps(f.get(k)) for f in flat}) > 1}
