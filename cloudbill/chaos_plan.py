"""The pure half of `cloudbill chaos`: what to inject when (from a seed), the poison records, and the verdicts.

Nothing here touches a process, a broker or a database, so the schedule and the checks are unit-tested and the
same seed always gives the same plan. `cloudbill/chaos.py` carries it out.
"""

from __future__ import annotations

import json
import math
import random
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from cloudbill.services import KILLABLE

# Every service the chaos run kills (not the alerter: it runs and is checked for being up), in registry order.
KILLED_SERVICES = KILLABLE


@dataclass(frozen=True)
class Fault:
    """One thing to do to the running stack, `at` seconds after the pipeline started.

    kind: kill (target: a service), broker_kill, finance (params: the finance simulator's fault body),
    do (params: the DigitalOcean simulators' fault body), do_clear / finance_clear (params: fields to reset),
    poison (target: the poison kind)."""

    at: float
    kind: str
    target: str = ""
    params: Mapping[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        detail = f" {self.target}" if self.target else ""
        if self.params:
            detail += " " + json.dumps(dict(self.params), sort_keys=True)
        return f"t+{self.at:6.1f}s {self.kind}{detail}"


@dataclass(frozen=True)
class PlanOptions:
    seed: int = 1
    kills: int = 20
    broker_kills: int = 1
    window_s: float = 240.0  # kills and DigitalOcean faults are spread over this much of the run
    finance_outage_s: float = 60.0
    finance_rate_limited_calls: int = 30
    finance_timeout_s: float = 3.0  # the pusher's HTTP timeout in the chaos run; slow answers exceed it
    finance_slow_s: float = 20.0  # how long finance answers too slowly (timeouts)
    services: tuple[str, ...] = KILLED_SERVICES


def _kills(opts: PlanOptions, rng: random.Random) -> list[Fault]:
    """Kills spread over the window, round after round over the services, each round in its own order."""
    services = list(opts.services)
    rng.shuffle(services)
    targets: list[str] = []
    while len(targets) < opts.kills:  # round after round, each in its own order: every service about as often
        rng.shuffle(services)
        targets += services[: opts.kills - len(targets)]
    faults: list[Fault] = []
    last: dict[str, float] = {}
    for i, svc in enumerate(targets):
        slot = opts.window_s * 0.9 / max(1, len(targets))
        kill_at = 2.0 + i * slot + rng.random() * slot * 0.8
        kill_at = max(kill_at, last.get(svc, -math.inf) + 4.0)
        last[svc] = kill_at
        faults.append(Fault(round(kill_at, 1), "kill", svc))
    return faults


def _broker_kills(opts: PlanOptions, rng: random.Random) -> list[Fault]:
    """The broker killed `broker_kills` times, each in its own slice of 25 %..60 % of the window."""
    faults: list[Fault] = []
    for k in range(opts.broker_kills):
        lo, hi = 0.25 + 0.35 * k / max(1, opts.broker_kills), 0.25 + 0.35 * (k + 1) / max(1, opts.broker_kills)
        faults.append(Fault(round(opts.window_s * (lo + rng.random() * (hi - lo)), 1), "broker_kill"))
    return faults


def _finance_faults(opts: PlanOptions) -> list[Fault]:
    """503 from the start (every push waits, retried and parked while services die), then 429 bursts with
    Retry-After, then timeouts. No randomness: the same for every seed."""
    t = 0.0
    faults = [Fault(t, "finance", params={"unavailable_seconds": opts.finance_outage_s})]
    t = round(t + opts.finance_outage_s, 1)
    half = opts.finance_rate_limited_calls // 2
    faults.append(Fault(t, "finance", params={"rate_limited_calls": half, "retry_after_s": 2}))
    faults.append(
        Fault(
            round(t + 10, 1),
            "finance",
            params={"rate_limited_calls": opts.finance_rate_limited_calls - half, "retry_after_s": 0},
        )
    )
    t = round(t + 20, 1)
    slow_ms = int((opts.finance_timeout_s + 2) * 1000)
    faults.append(Fault(t, "finance", params={"slow_ms": slow_ms}))
    faults.append(Fault(round(t + opts.finance_slow_s, 1), "finance", params={"slow_ms": 0}))
    return faults


def _do_faults(w: float, rng: random.Random) -> list[Fault]:
    """DigitalOcean's faults over a window of `w` seconds, each at a jittered fraction of it."""

    def at(fraction: float) -> float:
        return round(w * (fraction + rng.random() * 0.05), 1)

    return [
        Fault(0.0, "do", params={"slow_ms": 400}),  # from the start: the ingester is busy while services die
        Fault(at(0.3), "do", params={"slow_ms": 0}),
        Fault(at(0.05), "do", params={"rate_limit": 4, "retry_after": 1}),
        Fault(at(0.15), "do", params={"rate_limit_reset_only": 4, "retry_after": 2}),
        Fault(at(0.3), "do", params={"rate_limit": 6, "retry_after": 0}),
        Fault(at(0.4), "do", params={"server_errors": 6, "server_error_status": 503}),
        Fault(at(0.5), "do", params={"server_errors": 4, "server_error_status": 502}),
        Fault(at(0.6), "do", params={"slow_ms": 1500}),
        Fault(at(0.75), "do", params={"slow_ms": 0}),
        Fault(at(0.8), "do", params={"server_errors": 3, "server_error_status": 500}),
    ]


def plan(opts: PlanOptions) -> list[Fault]:
    """The fault schedule for a seed, sorted by time.

    - kills: round after round over the services (each round shuffled), so each is killed about as often; times
      spread over the window with jitter, never two kills of one service closer than 4 s (it must be back up first);
    - the broker killed once (or `broker_kills` times) between 25 % and 60 % of the window;
    - finance: 503 for `finance_outage_s` from the start, then a burst of 429 with Retry-After, then answers
      slower than the pusher's timeout for `finance_slow_s`;
    - DigitalOcean: slow answers from the start (so the pipeline is still at work while services die), 429 with
      retry-after (also `retry-after: 0`), 429 with only ratelimit-reset, bursts of 5xx, slow answers again;

    Faults at 0 are applied before the run's first poll.
    - the five poison records early on, so their dead letters are checked with everything else.
    """
    rng = random.Random(opts.seed)
    w = opts.window_s
    faults = _kills(opts, rng) + _broker_kills(opts, rng) + _finance_faults(opts) + _do_faults(w, rng)
    for kind in POISON_KINDS:
        faults.append(Fault(round(w * 0.2 + rng.random() * w * 0.1, 1), "poison", kind))
    return sorted(faults, key=lambda f: (f.at, f.kind, f.target))


# ------------------------------------------------------------------------------------------------- poison
# kind -> the registry topic it is written into (each an input topic of at least one service)
POISON_KINDS: dict[str, str] = {
    "not_json": "billing.invoice-discovered.v1",
    "unknown_type": "billing.cost-lines.v1",
    "unknown_schema_version": "billing.invoice-completed.v1",
    "invalid_data": "billing.balance.v1",
    "oversize": "billing.invoice-discovered.v1",
}
OVERSIZE_BYTES = 1_000_000  # under the broker's 1 MiB limit, over the dead-letter copy's (it is truncated)


def poison_value(kind: str, account: str) -> bytes:
    """The bytes of one poison record (none of them can be processed by any consumer of its topic)."""
    envelope: dict[str, Any] = {
        "event_id": f"chaos-poison-{kind}",
        "type": "",
        "schema_version": 1,
        "occurred_at": "2026-05-01T00:00:00+00:00",
        "account": account,
        "data": {},
    }
    if kind == "not_json":
        return b"\x00chaos: this is not JSON {"
    if kind == "unknown_type":
        return json.dumps(envelope | {"type": "chaos.unknown-type"}).encode()
    if kind == "unknown_schema_version":
        return json.dumps(envelope | {"type": "billing.invoice-completed", "schema_version": 999}).encode()
    if kind == "invalid_data":
        return json.dumps(envelope | {"type": "billing.balance", "data": {"account_balance": "not money"}}).encode()
    if kind == "oversize":
        pad = "x" * (OVERSIZE_BYTES - 200)
        return json.dumps(envelope | {"type": "billing.invoice-discovered", "data": {"pad": pad}}).encode()
    raise ValueError(f"unknown poison kind {kind!r}")


def poison_key(kind: str) -> bytes:
    return f"chaos-poison-{kind}".encode()


# ------------------------------------------------------------------------------------------------- verdicts
# Columns that say *when* cloudbill did something (or an id another system made up), not what it holds.
RUN_SPECIFIC_COLUMNS: dict[str, frozenset[str]] = {
    "invoices": frozenset({"pushed_to_finance_at", "finance_invoice_id"}),
    "dead_letters": frozenset({"failed_at", "dlq_partition", "dlq_offset", "dedup_key", "source_offset"}),
}
COMPARED_APART = frozenset({"dead_letters"})  # the chaos run has the poison in it: checked on its own


def normalise_rows(table: str, rows: Iterable[Mapping[str, Any]], prefix: str) -> list[str]:
    """A table's rows as sorted canonical JSON, run-specific columns dropped and the topic prefix removed."""
    drop = RUN_SPECIFIC_COLUMNS.get(table, frozenset())
    out = []
    for row in rows:
        clean = {}
        for k, v in row.items():
            if k in drop or _is_run_timestamp(k):
                continue
            if isinstance(v, str) and prefix and v.startswith(prefix):
                v = v[len(prefix) :]
            if isinstance(v, bytes | memoryview):
                v = bytes(v).hex()
            clean[k] = v
        out.append(json.dumps(clean, sort_keys=True, default=str))
    return sorted(out)


def _is_run_timestamp(column: str) -> bool:
    """Wall-clock columns a projector may add (`projected_at`, `updated_at`...): never data from DigitalOcean."""
    return column in {"projected_at", "updated_at", "created_at", "received_at", "ingested_at"}


@dataclass(frozen=True)
class TableDiff:
    table: str
    baseline_rows: int
    chaos_rows: int
    missing: int  # in the baseline, not in the chaos run
    extra: int  # in the chaos run, not in the baseline
    example: str = ""

    @property
    def equal(self) -> bool:
        return self.missing == 0 and self.extra == 0


def diff_tables(baseline: Mapping[str, Sequence[str]], chaos: Mapping[str, Sequence[str]]) -> list[TableDiff]:
    """Row by row (multisets of normalised rows), table by table, both runs' tables included."""
    out = []
    for table in sorted(set(baseline) | set(chaos)):
        if table in COMPARED_APART:
            continue
        a, b = Counter(baseline.get(table, ())), Counter(chaos.get(table, ()))
        missing, extra = a - b, b - a
        example = ""
        if missing and extra:
            example = _row_difference(next(iter(sorted(missing))), sorted(extra))
        elif missing:
            example = "missing: " + next(iter(missing))[:300]
        elif extra:
            example = "extra: " + next(iter(extra))[:300]
        out.append(
            TableDiff(table, sum(a.values()), sum(b.values()), sum(missing.values()), sum(extra.values()), example)
        )
    return out


def _row_difference(missing: str, extras: list[str]) -> str:
    """The columns in which a baseline row differs from the chaos row closest to it (most columns equal)."""
    a = json.loads(missing)
    best = max((json.loads(e) for e in extras), key=lambda b: sum(a.get(k) == v for k, v in b.items()))
    diff = {k: [a.get(k), best.get(k)] for k in sorted(set(a) | set(best)) if a.get(k) != best.get(k)}
    keys = {k: a[k] for k in ("invoice_uuid", "line_index", "table", "account") if k in a}
    return f"{json.dumps(keys)} baseline vs chaos: {json.dumps(diff, default=str)}"[:600]


@dataclass
class FinanceVerdict:
    """Finance rows against what the account billed and what the undisturbed run pushed."""

    rows: int
    invoices_expected: int
    lost: list[str]
    doubled: dict[str, int]
    updated: dict[str, int]  # rows finance saw a second, different push for
    wrong_amounts: dict[str, Any]
    unexpected: list[str]

    @property
    def ok(self) -> bool:
        return not (self.lost or self.doubled or self.updated or self.wrong_amounts or self.unexpected)


AMOUNTS = ("amount_net_minor", "amount_tax_minor", "amount_gross_minor")


def judge_finance(
    rows: Sequence[Mapping[str, Any]],
    gross_by_invoice: Mapping[str, int],
    baseline_rows: Sequence[Mapping[str, Any]] | None = None,
) -> FinanceVerdict:
    by_invoice: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for r in rows:
        by_invoice[str(r["external_id"])].append(r)
    base = {str(r["external_id"]): r for r in baseline_rows or ()}
    wrong: dict[str, Any] = {}
    for uuid, rs in by_invoice.items():
        if uuid not in gross_by_invoice:
            continue
        got = rs[0]
        if got["amount_gross_minor"] != gross_by_invoice[uuid]:
            wrong[uuid] = {"gross": got["amount_gross_minor"], "billed": gross_by_invoice[uuid]}
        elif uuid in base and any(got[a] != base[uuid][a] for a in AMOUNTS):
            wrong[uuid] = {a: (got[a], base[uuid][a]) for a in AMOUNTS}
    return FinanceVerdict(
        rows=len(rows),
        invoices_expected=len(gross_by_invoice),
        lost=sorted(set(gross_by_invoice) - set(by_invoice)),
        doubled={k: len(v) for k, v in by_invoice.items() if len(v) > 1},
        updated={k: int(v[0].get("update_count") or 0) for k, v in by_invoice.items() if v[0].get("update_count")},
        wrong_amounts=wrong,
        unexpected=sorted(set(by_invoice) - set(gross_by_invoice)),
    )


@dataclass
class Report:
    """What `cloudbill chaos` prints and writes (`--out`); `ok` decides the exit status."""

    seed: int
    kafka: str
    invoices_expected: int
    lines_expected: int
    accounts: int
    kills: int = 0
    kills_by_service: dict[str, int] = field(default_factory=dict)
    restarts_by_service: dict[str, int] = field(default_factory=dict)
    broker_kills: int = 0
    finance_faults: int = 0
    do_faults: int = 0
    lost: int = 0  # invoices missing in finance + cost lines missing in the read model
    lost_lines: int = 0
    doubled: int = 0  # extra finance rows, second pushes finance saw as updates, revisions completed twice
    finance_rows: int = 0
    finance_ok: bool = False
    read_models_equal: bool = False
    table_diffs: list[dict[str, Any]] = field(default_factory=list)
    poison_injected: int = 0
    poison_dead_lettered: int = 0
    poison: dict[str, Any] = field(default_factory=dict)
    unexpected_dead_letters: int = 0
    services_down: list[str] = field(default_factory=list)
    converged: bool = False
    converged_s: float | None = None
    baseline_s: float | None = None
    settle_after_last_fault_s: float | None = None
    faults: list[str] = field(default_factory=list)
    checks: dict[str, bool] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.lost == 0 and self.doubled == 0 and bool(self.checks) and all(self.checks.values())

    def to_json(self) -> dict[str, Any]:
        return asdict(self) | {"ok": self.ok}


def final_checks(r: Report, *, broker_kill_expected: bool, kills_expected: int) -> dict[str, bool]:
    """Every check the issue names, by name (the report prints them, the exit status needs them all)."""
    return {
        "converged": r.converged,
        "nothing lost": r.lost == 0 and r.lost_lines == 0,
        "nothing doubled": r.doubled == 0,
        "finance rows = invoices, amounts identical, one each": r.finance_ok and r.finance_rows == r.invoices_expected,
        "read models identical to the undisturbed run": r.read_models_equal,
        "every poison dead-lettered in its topic's DLQ with a reason": r.poison_injected > 0
        and r.poison_dead_lettered == r.poison_injected,
        "no other record dead-lettered": r.unexpected_dead_letters == 0,
        "no service down": not r.services_down,
        f"{kills_expected} kill(s) over every service": r.kills >= kills_expected,
        "broker killed and restarted": r.broker_kills >= 1 if broker_kill_expected else True,
    }


def invoice_sizes(seed: int, n: int, lo: int, hi: int) -> list[int]:
    """Line counts of `n` invoices, log-uniform in [lo, hi] (mostly small, some large, like real accounts), with
    both ends present when n allows it."""
    rng = random.Random(seed * 7919 + n)
    sizes = [round(math.exp(rng.uniform(math.log(lo), math.log(hi)))) for _ in range(n)]
    if n >= 2:
        sizes[0], sizes[-1] = lo, hi
        rng.shuffle(sizes)
    return [max(lo, min(hi, s)) for s in sizes]
