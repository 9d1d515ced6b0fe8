"""`cloudbill demo`: one poll of everything, progress until every discovered invoice has settled, a summary.

Settled means pushed to finance, held by the money gates, or dead-lettered: whatever the scenario (the
april-2026 account or a folder of your own), the demo waits for all of them, not for one known invoice, and
gives up only when nothing has moved for `idle_timeout` seconds. It reads what a user would: the admin HTTP
API (with a minted token), the read models and the finance simulator's own listing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, cast

import httpx
from rich.console import Console
from rich.live import Live
from rich.table import Table

from cloudbill.stack import Stack
from cloudbill.status import invoice_outcomes
from shared.auth import mint
from shared.money import format_minor


class DemoClient:
    def __init__(self, stack: Stack) -> None:
        token = mint(
            stack.cfg.api_secret, algorithm="HS256", ttl_s=3600, subject="demo", claims={"roles": ["platform_admin"]}
        )
        self.api = httpx.Client(
            base_url=f"http://127.0.0.1:{stack.cfg.api_port}", headers={"Authorization": f"Bearer {token}"}, timeout=10
        )
        self.finance = httpx.Client(base_url=f"http://127.0.0.1:{stack.cfg.finance_port}", timeout=10)

    def invoice(self, uuid: str) -> dict[str, Any] | None:
        r = self.api.get(f"/api/v1/billing/invoices/{uuid}")
        return r.json() if r.status_code == 200 else None

    def latest_invoice(self) -> dict[str, Any] | None:
        """The newest billing period's invoice (the listing is newest first)."""
        r = self.api.get("/api/v1/billing/invoices", params={"limit": 1})
        items = r.json().get("items", []) if r.status_code == 200 else []
        return self.invoice(items[0]["invoice_uuid"]) if items else None

    def finance_rows(self, external_id: str) -> list[dict[str, Any]]:
        body = self.finance.get("/api/v1/invoices").json()
        rows = body.get("invoices", body) if isinstance(body, dict) else body
        return [r for r in rows if r.get("external_id") == external_id]

    def vendors(self) -> list[dict[str, Any]]:
        body = self.finance.get("/api/v1/vendors").json()
        vendors: list[dict[str, Any]] = body.get("vendors", body) if isinstance(body, dict) else body
        return vendors


@dataclass
class Outcome:
    """Where every discovered invoice ended (pending is empty when the demo succeeded)."""

    invoices: dict[str, list[str]] = field(default_factory=dict)
    settled: bool = False
    reason: str = ""

    def count(self, outcome: str) -> int:
        return len(self.invoices.get(outcome, []))

    @property
    def discovered(self) -> int:
        return sum(len(v) for v in self.invoices.values())


def _progress_table(o: Outcome, elapsed: float) -> Table:
    t = Table(title=f"pipeline progress ({elapsed:.0f}s)")
    for name in ("discovered", "pushed", "held", "dead-lettered", "pending"):
        t.add_column(name)
    counts = [o.discovered, o.count("pushed"), o.count("held"), o.count("dead_lettered"), o.count("pending")]
    t.add_row(*(str(n) for n in counts))
    return t


def discovery_done(stack: Stack) -> bool:
    """The projector has read every invoice-discovered record: the read model lists every invoice polled."""
    from shared.kafka.admin import group_lag
    from shared.topics import INVOICE_DISCOVERED, STAGES

    s = stack.settings()
    lags = group_lag(s, STAGES["projector"].group(s), [INVOICE_DISCOVERED.name(s.kafka_topic_prefix)])
    return bool(lags) and all(pl.lag == 0 for pl in lags)


def wait_until_settled(stack: Stack, console: Console, idle_timeout: float) -> Outcome:
    """Until every discovered invoice is pushed, held or dead-lettered; gives up after `idle_timeout` seconds
    without any change (a service over its restart budget ends the wait at once)."""
    start = last_change = time.monotonic()
    outcome, seen = Outcome(), None
    with Live(console=console, refresh_per_second=4, transient=False) as live:
        while True:
            outcome = Outcome(invoice_outcomes(stack.database_url))
            live.update(_progress_table(outcome, time.monotonic() - start))
            snapshot = {k: len(v) for k, v in outcome.invoices.items()}
            if snapshot != seen:
                seen, last_change = snapshot, time.monotonic()
            if not outcome.invoices["pending"] and discovery_done(stack):
                outcome.settled = True
                return outcome
            for event in stack.keep_alive():
                console.print(f"[yellow]{event}[/yellow]")
            dead = stack.dead()  # after keep_alive: services over their restart budget, simulators
            if dead:
                outcome.reason = f"{dead[0].name} exited and is not restarted:\n{dead[0].tail()}"
                return outcome
            if time.monotonic() - last_change > idle_timeout:
                outcome.reason = f"no progress for {idle_timeout:.0f}s"
                return outcome
            time.sleep(0.5)


def run_demo(stack: Stack, console: Console, *, idle_timeout: float = 300) -> bool:
    from sims.scenario import APRIL_2026_INVOICE_UUID

    client = DemoClient(stack)
    console.print(f"polling DigitalOcean (simulator, scenario {stack.cfg.scenario}) once: resources, balance, history")
    console.print(stack.poll_now("all").strip())
    outcome = wait_until_settled(stack, console, idle_timeout)
    console.print()
    t = Table(title="cloudbill demo: summary", show_header=False)
    t.add_row("invoices discovered", str(outcome.discovered))
    t.add_row("  pushed to finance", str(outcome.count("pushed")))
    t.add_row("  held (not proven complete)", _listed(outcome.invoices["held"]))
    t.add_row("  dead-lettered", _listed(outcome.invoices["dead_lettered"]))
    if outcome.invoices["pending"]:
        t.add_row("  [red]still pending[/red]", _listed(outcome.invoices["pending"]))
    shown = client.invoice(APRIL_2026_INVOICE_UUID) or client.latest_invoice()
    if shown is not None:
        _invoice_rows(t, shown, client)
    console.print(t)
    if not outcome.settled:
        console.print(f"[red]not every invoice settled[/red]: {outcome.reason} (logs: {stack.logdir})")
    return outcome.settled


def _listed(uuids: list[str], limit: int = 3) -> str:
    if not uuids:
        return "0"
    more = f", +{len(uuids) - limit} more" if len(uuids) > limit else ""
    return f"{len(uuids)}: {', '.join(uuids[:limit])}{more}"


def _invoice_rows(t: Table, inv: dict[str, Any], client: DemoClient) -> None:
    t.add_row(f"invoice for {inv.get('period')}", f"{inv['invoice_uuid']} ({inv['status']})")
    t.add_row(
        "  lines / current / attributed",
        f"{inv['lines_count']} / {inv['matched_count']} / {inv.get('attributed_count', '?')}",
    )
    amounts = [inv.get(k) for k in ("amount_net_minor", "amount_tax_minor", "amount_gross_minor")]
    if all(a is not None for a in amounts):
        t.add_row("  net / tax / gross", " / ".join(format_minor(cast(int, a)) for a in amounts))  # none is None
    t.add_row("  finance invoice id", str(inv.get("finance_invoice_id")))
    for r in client.finance_rows(inv["invoice_uuid"]):
        t.add_row(
            "  finance row",
            f"gross {r.get('amount_gross_minor')} tax {r.get('amount_tax_minor')} "
            f"source {r.get('source')} tenant {r.get('tenant_id')}",
        )
    for v in client.vendors():
        t.add_row("  finance vendor", f"{v.get('name')} ({v.get('category')})")
