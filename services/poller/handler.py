"""One poll tick of one job (balance, history or resources) for one account: DigitalOcean listings → domain →
the records to produce.

Not pure: it reads through the DigitalOcean client; the decisions are in `domain.py`. It only reads and builds
`Out` records; producing, flushing and recording state is the caller's job (services/poller/poller.py, run by
`main.py`), so a poll is recorded successful only once flushed.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from shared.digitalocean import (
    RESOURCE_KINDS,
    DigitalOceanClient,
    DigitalOceanError,
    DigitalOceanNotFound,
    invoice_listing,
)
from shared.events import EventData, Resource, encode, event_id_for
from shared.kafka import Out
from shared.topics import BALANCE, HISTORY, INVOICE_DISCOVERED, RESOURCES

from . import domain

log = logging.getLogger(__name__)


@dataclass
class PollOutput:
    outs: list[Out] = field(default_factory=list)
    detail: dict[str, Any] = field(default_factory=dict)
    partial: bool = False
    # resources only: what this sync saw (kind → id → (resource, event id)) and the kinds listed successfully
    inventory: dict[str, dict[str, tuple[Resource, str]]] = field(default_factory=dict)
    listed_kinds: set[str] = field(default_factory=set)


def _out(topic: str, key: str, data: EventData, account: str) -> Out:
    return Out(topic, key, encode(data, account))


def poll_balance(client: DigitalOceanClient, account: str, prefix: str, currency: str) -> PollOutput:
    event = domain.balance_event(client.balance(), currency)
    return PollOutput(
        outs=[_out(BALANCE.name(prefix), account, event, account)],
        detail={"month_to_date_balance_minor": event.month_to_date_balance_minor},
    )


def poll_history(client: DigitalOceanClient, account: str, prefix: str, currency: str) -> PollOutput:
    """Every billing-history entry → HISTORY; every Invoice entry also → INVOICE_DISCOVERED (key: uuid).

    The /invoices listing gives each invoice's period and the amount the ingester reconciles against.
    """
    try:
        listing = invoice_listing(client.invoices(), currency)
    except DigitalOceanNotFound:
        log.warning("account %s: no /invoices listing; invoice periods derived from the history", account)
        listing = {}
    out = PollOutput()
    entries = invoices = 0
    bad: list[str] = []
    for raw in client.billing_history():
        try:
            entry = domain.history_entry(raw, currency)
            listed = listing.get(entry.invoice_uuid or "")
            discovered = (
                domain.invoice_discovered(
                    entry, listed.period if listed else None, listed.amount_minor if listed else None
                )
                if domain.is_invoice(entry)
                else None
            )
        except domain.BadEntry as e:
            bad.append(str(e))
            log.warning("account %s: skipped a billing-history entry: %s", account, e)
            continue
        out.outs.append(_out(HISTORY.name(prefix), account, entry, account))
        entries += 1
        if discovered is not None:
            out.outs.append(_out(INVOICE_DISCOVERED.name(prefix), discovered.invoice_uuid, discovered, account))
            invoices += 1
    out.detail = {"entries": entries, "invoices": invoices}
    if bad:
        out.detail["skipped"] = bad[:20]
        out.detail["skipped_count"] = len(bad)
        out.partial = True
    return out


def poll_resources(
    client: DigitalOceanClient,
    account: str,
    prefix: str,
    previous: Mapping[str, set[str]] | Mapping[str, Mapping[str, domain.Known]],
) -> PollOutput:
    """One record per listed resource; per resource gone since the previous sync, only for kinds whose listing
    succeeded, a history record (`exists=False`, first/last seen: the matcher still attributes its lines), or a
    tombstone when nothing is known of it but its id. All kinds failing is a failed poll (the first error)."""
    topic = RESOURCES.name(prefix)
    out = PollOutput()
    failed: dict[str, str] = {}
    first_error: DigitalOceanError | None = None
    bad: list[str] = []
    for kind in RESOURCE_KINDS:
        try:
            listed = list(client.list_resources(kind))
        except DigitalOceanError as e:
            failed[kind] = str(e)
            first_error = first_error or e
            log.warning("account %s: listing %s failed, no tombstones for that kind: %s", account, kind, e)
            continue
        out.inventory[kind], complete = _read_listing(kind, listed, account, bad)
        if complete:
            # A kind with unreadable entries is incomplete: keep its previous state, send no tombstones.
            out.listed_kinds.add(kind)
    if first_error is not None and len(failed) == len(RESOURCE_KINDS):
        raise first_error
    for kind in sorted(out.inventory):
        for rid, (res, _eid) in sorted(out.inventory[kind].items()):
            out.outs.append(_out(topic, domain.resource_key(account, kind, rid), res, account))
    gone, tombstoned = _gone(out, topic, account, previous)
    out.detail = {
        "resources": sum(len(v) for v in out.inventory.values()),
        "gone": len(gone),
        "tombstones": tombstoned,
        "by_kind": {k: len(v) for k, v in sorted(out.inventory.items())},
    }
    if failed:
        out.detail["failed_kinds"] = failed
        out.partial = True
    if bad:
        out.detail["skipped"] = bad[:20]
        out.detail["skipped_count"] = len(bad)
        out.partial = True
    return out


def _read_listing(
    kind: str, listed: list[dict[str, Any]], account: str, bad: list[str]
) -> tuple[dict[str, tuple[Resource, str]], bool]:
    """The listing's resources by id (with their event ids), and whether every entry could be read."""
    seen: dict[str, tuple[Resource, str]] = {}
    complete = True
    for raw in listed:
        try:
            res = domain.resource_from(kind, raw)
        except domain.BadEntry as e:
            bad.append(f"{kind}: {e}")
            log.warning("account %s: skipped a %s entry: %s", account, kind, e)
            complete = False
            continue
        seen[res.resource_id] = (res, event_id_for(res, account))
    return seen, complete


def _gone(
    out: PollOutput,
    topic: str,
    account: str,
    previous: Mapping[str, set[str]] | Mapping[str, Mapping[str, domain.Known]],
) -> tuple[list[domain.Gone], int]:
    """Resources of a fully listed kind missing since the previous sync: a history record when we know more
    than its id, else a tombstone. Returns them and the number of tombstones."""
    current = {k: set(v) for k, v in out.inventory.items()}
    gone = domain.tombstones({k: set(v) for k, v in previous.items()}, current, out.listed_kinds)
    tombstoned = 0
    for g in gone:
        key = domain.resource_key(account, g.kind, g.resource_id)
        known = previous[g.kind]
        if isinstance(known, Mapping) and isinstance(known.get(g.resource_id), domain.Known):
            out.outs.append(_out(topic, key, domain.gone_record(g.kind, g.resource_id, known[g.resource_id]), account))
        else:
            out.outs.append(Out(topic, key, None))
            tombstoned += 1
    return gone, tombstoned
