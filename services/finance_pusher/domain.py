"""The finance import payload and the push decisions: pure functions, no I/O.

The payload is what finance stores for one DigitalOcean invoice (the import contract of the
conventions). Its sha256 is the pusher's notion of "the same invoice content": a revision whose
payload hashes like the one finance already has is not sent again.
"""

from __future__ import annotations

import calendar
import hashlib
from dataclasses import dataclass
from datetime import date
from typing import Any, Literal

from shared.events import InvoiceCompleted, canonical_json

SOURCE = "digitalocean"
VENDOR = {"name": "DigitalOcean", "category": "cloud"}


class InvalidInvoice(ValueError):
    """The completed invoice cannot be pushed as it is (bad totals, bad period): it is dead-lettered."""


def billing_period(period: str) -> tuple[date, date]:
    """`YYYY-MM-01` → (first day, last day) of that month; leap years included."""
    try:
        start = date.fromisoformat(period)
    except (TypeError, ValueError) as e:
        raise InvalidInvoice(f"period {period!r} is not a YYYY-MM-DD date") from e
    if start.day != 1:
        raise InvalidInvoice(f"period {period!r} does not start on the first day of a month")
    last = calendar.monthrange(start.year, start.month)[1]
    return start, start.replace(day=last)


def check_totals(inv: InvoiceCompleted) -> None:
    """net + tax must equal gross: finance would refuse it, and it means the split upstream is wrong."""
    if inv.amount_net_minor + inv.amount_tax_minor != inv.amount_gross_minor:
        raise InvalidInvoice(
            f"invoice {inv.invoice_uuid} revision {inv.revision}: net {inv.amount_net_minor} + tax "
            f"{inv.amount_tax_minor} != gross {inv.amount_gross_minor}; not pushed to finance"
        )
    if inv.line_count < 0:
        raise InvalidInvoice(f"invoice {inv.invoice_uuid} revision {inv.revision}: negative line count")


def build_payload(inv: InvoiceCompleted, *, tenant_id: str) -> dict[str, Any]:
    """The import-invoice body for one completed invoice revision (validated first)."""
    check_totals(inv)
    start, end = billing_period(inv.period)
    return {
        "tenant_id": tenant_id,
        "source": SOURCE,
        "external_id": inv.invoice_uuid,
        "invoice_number": inv.invoice_id,
        "invoice_date": inv.invoice_date.isoformat(),
        "billing_period": {"start": start.isoformat(), "end": end.isoformat()},
        "currency": inv.currency,
        "vendor": dict(VENDOR),
        "amount_net_minor": inv.amount_net_minor,
        "amount_tax_minor": inv.amount_tax_minor,
        "amount_gross_minor": inv.amount_gross_minor,
        "lines_count": inv.line_count,
    }


def payload_sha256(payload: dict[str, Any]) -> str:
    """Hash of the canonical JSON (sorted keys): key order or whitespace never changes it."""
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()


def idempotency_key(
    tenant_id: str, source: str, external_id: str, revision: int, payload_hash: str, sender: str = ""
) -> str:
    """Names exactly one request body: one revision of one invoice's payload, from one ledger.

    Deterministic, so a re-push of the same revision after a crash carries the same key with the same body
    (finance replays its answer). The revision is in it because a content revert A → B → A must not reuse
    A's key: finance would replay A's first answer and keep B. The sender (the pusher ledger's identity) is in
    it because another deployment pushing the same revision again is a new request, not a replay of ours.
    """
    parts = [tenant_id, source, external_id, revision, payload_hash, sender]
    return hashlib.sha256(canonical_json(parts).encode()).hexdigest()


# ------------------------------------------------------------------------------------------ decisions
@dataclass(frozen=True)
class PushedState:
    """What the ledger knows about an invoice: the highest revision settled and the content finance has."""

    revision: int
    payload_sha256: str


Verdict = Literal["push", "unchanged", "stale"]


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    reason: str


def decide(state: PushedState | None, revision: int, payload_hash: str) -> Decision:
    """Push, or skip because finance already has this content, or skip because a newer revision is settled.

    Older revisions never overwrite a newer one (replays, redeliveries). The same content in a newer
    revision is not sent again (finance would only answer "updated" with nothing changed).
    """
    if state is None:
        return Decision("push", "never pushed")
    if revision < state.revision:
        return Decision("stale", f"revision {revision} is older than the settled revision {state.revision}")
    if payload_hash == state.payload_sha256:
        return Decision("unchanged", f"payload {payload_hash[:12]} already pushed (revision {state.revision})")
    return Decision("push", f"payload changed since revision {state.revision}")
