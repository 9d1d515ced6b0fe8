"""`cloudbill demo`: one poll of everything, progress until the April 2026 invoice is in finance, a summary.

It reads what a user would: the admin HTTP API (with a minted token), the read models' counts and the
finance simulator's own listing.
"""

from __future__ import annotations

import time
from typing import Any

import httpx
from rich.console import Console
from rich.live import Live
from rich.table import Table

from cloudbill.stack import Stack
from cloudbill.status import invoice_progress
from shared.auth import mint
from shared.money import format_minor


def _april_uuid() -> str:
    from sims.scenario import APRIL_2026_INVOICE_UUID

    return APRIL_2026_INVOICE_UUID


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

    def finance_rows(self, external_id: str) -> list[dict[str, Any]]:
        body = self.finance.get("/api/v1/invoices").json()
        rows = body.get("invoices", body) if isinstance(body, dict) else body
        return [r for r in rows if r.get("external_id") == external_id]

    def vendors(self) -> list[dict[str, Any]]:
        body = self.finance.get("/api/v1/vendors").json()
        return body.get("vendors", body) if isinstance(body, dict) else body


def _progress_table(counts: dict[str, int], april: dict[str, Any] | None, elapsed: float) -> Table:
    t = Table(title=f"pipeline progress ({elapsed:.0f}s)")
    t.add_column("invoices discovered")
    t.add_column("ingested")
    t.add_column("completed")
    t.add_column("pushed")
    t.add_column("April 2026")
    t.add_row(
        str(counts.get("discovered", 0)),
        str(counts.get("ingested", 0)),
        str(counts.get("completed", 0)),
        str(counts.get("pushed", 0)),
        april["status"] if april else "-",
    )
    return t


def wait_for_april(stack: Stack, client: DemoClient, console: Console, timeout: float) -> dict[str, Any] | None:
    uuid = _april_uuid()
    start = time.monotonic()
    april = None
    with Live(console=console, refresh_per_second=4, transient=False) as live:
        while time.monotonic() - start < timeout:
            counts = invoice_progress(stack.database_url)
            april = client.invoice(uuid)
            live.update(_progress_table(counts, april, time.monotonic() - start))
            # Done when April is in finance and every discovered invoice has been pushed too.
            if april and april["status"] == "pushed" and counts["pushed"] == counts["discovered"]:
                return april
            for event in stack.keep_alive():
                console.print(f"[yellow]{event}[/yellow]")
            dead = stack.dead()
            if dead:
                console.print(f"[red]{dead[0].name} exited[/red]:\n{dead[0].tail()}")
                return None
            time.sleep(0.5)
    return None


def run_demo(stack: Stack, console: Console, *, timeout: float = 300) -> bool:
    client = DemoClient(stack)
    console.print("polling DigitalOcean (simulator) once: balance, billing history, resources")
    console.print(stack.poll_now("all").strip())
    april = wait_for_april(stack, client, console, timeout)
    console.print()
    if april is None:
        console.print(f"[red]the April 2026 invoice was not pushed within {timeout:.0f}s[/red] (logs: {stack.logdir})")
        return False
    counts = invoice_progress(stack.database_url)
    rows = client.finance_rows(april["invoice_uuid"])
    t = Table(title="cloudbill demo: summary", show_header=False)
    t.add_row(
        "invoices discovered / ingested / pushed", f"{counts['discovered']} / {counts['ingested']} / {counts['pushed']}"
    )
    t.add_row("April 2026 invoice", april["invoice_uuid"])
    t.add_row("  lines / matched", f"{april['lines_count']} / {april['matched_count']}")
    t.add_row(
        "  net / tax / gross",
        " / ".join(format_minor(april[k]) for k in ("amount_net_minor", "amount_tax_minor", "amount_gross_minor")),
    )
    t.add_row("  finance invoice id", str(april.get("finance_invoice_id")))
    for r in rows:
        t.add_row(
            "  finance row",
            f"gross {r.get('amount_gross_minor')} tax {r.get('amount_tax_minor')} "
            f"source {r.get('source')} tenant {r.get('tenant_id')}",
        )
    for v in client.vendors():
        t.add_row("  finance vendor", f"{v.get('name')} ({v.get('category')})")
    console.print(t)
    return True
