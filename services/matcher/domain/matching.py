"""Attributing a cost line to a resource: by resource id first, then by (kind, name). Pure, no I/O.

The rules, in order (each line says which one attributed it, `attributed_by`):
1. `resource_id`: the line carries DigitalOcean's resource id (from the invoice items) and the inventory knows
   it, now or in its history: that resource, whatever the line's name says (renamed, or a name shared).
2. `item_resource_id`: the line carries an id the inventory never saw (a resource created and destroyed between
   two inventory syncs): attributed to that id, with the kind and name the line gives.
3. `name`: (kind, name), case-insensitive, among the resources that exist now and already existed during the
   line's period (a resource created after the line's end is another one with the same name).
4. `name_period_history`: (kind, name) among resources that no longer exist, whose known life (created or first
   seen .. last seen) overlaps the line's period; exactly one, or the line stays unattributed
   (`ambiguous_history`): names are reused after a resource is recreated, so a guess would be wrong money.

The inventory view is a plain in-memory index, fed by whatever runtime holds the inventory (a faust
GlobalTable today), so the rules can be tested and the runtime swapped without touching them. It keeps
resources that disappeared (the poller's history records, `exists=False`); only a tombstone forgets one.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from services.matcher.domain.extract import INVENTORIED_KINDS, KIND_TAX, Extracted, NotExtracted, extract
from shared.events import AttributedBy, CostLine, CostLineMatched, Resource

# A Floating IP became a Reserved IP at DigitalOcean: the same address may be listed under either name. GPU
# droplets are listed apart (`/v2/droplets?type=gpus`) but billed like droplets.
KIND_ALIASES: dict[str, tuple[str, ...]] = {
    "floating_ip": ("reserved_ip",),
    "reserved_ip": ("floating_ip",),
    "droplet": ("gpu_droplet",),
    "gpu_droplet": ("droplet",),
}


def _iso(v: Any) -> datetime | None:
    if isinstance(v, datetime):
        return v
    if not isinstance(v, str) or not v:
        return None
    try:
        return datetime.fromisoformat(v.replace("Z", "+00:00"))
    except ValueError:
        return None


@dataclass(frozen=True)
class InventoryEntry:
    """What the matcher needs to know about one resource (the inventory table's value).

    `exists` False: a history record (the resource is gone). `since`: when it began (DigitalOcean's
    `created_at`, else the first poll that listed it); `last_seen`: the last poll that listed it (history only).
    """

    resource_key: str
    account: str
    kind: str
    resource_id: str
    name: str
    exists: bool = True
    since: datetime | None = None
    last_seen: datetime | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "resource_key": self.resource_key,
            "account": self.account,
            "kind": self.kind,
            "resource_id": self.resource_id,
            "name": self.name,
            "exists": self.exists,
            "since": self.since.isoformat() if self.since else None,
            "last_seen": self.last_seen.isoformat() if self.last_seen else None,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> InventoryEntry:
        """Also reads the values written before the history existed (no `exists`: a current resource)."""
        return cls(
            resource_key=str(d["resource_key"]),
            account=str(d["account"]),
            kind=str(d["kind"]),
            resource_id=str(d["resource_id"]),
            name=str(d["name"]),
            exists=bool(d.get("exists", True)),
            since=_iso(d.get("since")),
            last_seen=_iso(d.get("last_seen")),
        )

    @classmethod
    def from_resource(cls, resource_key: str, account: str, r: Resource) -> InventoryEntry:
        since = _iso(r.attributes.get("created_at")) or r.first_seen
        return cls(resource_key, account, r.kind, r.resource_id, r.name, r.exists, since, r.last_seen)

    def alive_during(self, start: datetime | None, end: datetime | None) -> bool:
        """Could this resource have been billed for [start, end]? Unknown bounds never exclude."""
        if self.since is not None and end is not None and self.since > end:
            return False
        return not (not self.exists and self.last_seen is not None and start is not None and start > self.last_seen)


def _norm(name: str) -> str:
    return " ".join(name.strip().lower().split())


class InventoryIndex:
    """resource_key → entry, plus (account, kind, lower(name)) and (account, id) → resource keys. Idempotent."""

    def __init__(self, entries: Iterable[InventoryEntry] = ()) -> None:
        self._by_key: dict[str, InventoryEntry] = {}
        self._by_name: dict[tuple[str, str, str], set[str]] = {}
        self._by_kind: dict[tuple[str, str], set[str]] = {}
        self._by_id: dict[tuple[str, str], set[str]] = {}
        for e in entries:
            self.upsert(e)

    def __len__(self) -> int:
        return len(self._by_key)

    def __contains__(self, resource_key: str) -> bool:
        return resource_key in self._by_key

    def get(self, resource_key: str) -> InventoryEntry | None:
        return self._by_key.get(resource_key)

    def _indexes(self, e: InventoryEntry) -> list[tuple[dict[Any, set[str]], tuple[str, ...]]]:
        return [
            (self._by_name, (e.account, e.kind, _norm(e.name))),
            (self._by_kind, (e.account, e.kind)),
            (self._by_id, (e.account, e.resource_id)),
        ]

    def upsert(self, entry: InventoryEntry) -> None:
        self.remove(entry.resource_key)
        self._by_key[entry.resource_key] = entry
        for index, k in self._indexes(entry):
            index.setdefault(k, set()).add(entry.resource_key)

    def remove(self, resource_key: str) -> None:
        old = self._by_key.pop(resource_key, None)
        if old is None:
            return
        for index, k in self._indexes(old):
            keys = index.get(k)
            if keys is not None:
                keys.discard(resource_key)
                if not keys:
                    del index[k]

    def find(self, account: str, kind: str, name: str, *, exists: bool | None = True) -> list[InventoryEntry]:
        """Resources of that account and kind with that name (any case), deterministic order.

        `exists` True: current ones only (the default); False: history only; None: both."""
        keys = self._by_name.get((account, kind, _norm(name)), set())
        found = [self._by_key[k] for k in sorted(keys)]
        return found if exists is None else [e for e in found if e.exists is exists]

    def of_kind(self, account: str, kind: str) -> list[InventoryEntry]:
        """Current resources of a kind."""
        return [e for k in sorted(self._by_kind.get((account, kind), set())) if (e := self._by_key[k]).exists]

    def by_id(self, account: str, resource_id: str, kinds: Iterable[str] = ()) -> InventoryEntry | None:
        """The resource with that id: of one of `kinds` first, else of any kind when exactly one has it."""
        found = [self._by_key[k] for k in sorted(self._by_id.get((account, resource_id), set()))]
        wanted = set(kinds)
        preferred = [e for e in found if e.kind in wanted]
        if preferred:
            return preferred[0]
        return found[0] if len(found) == 1 else None


def _kinds(kind: str | None) -> tuple[str, ...]:
    return () if kind is None else (kind, *KIND_ALIASES.get(kind, ()))


def match_line(line: CostLine, account: str, inventory: InventoryIndex) -> CostLineMatched:
    """Enrich one cost line: the resource it is attributed to and by which rule, or why none."""
    ex = extract(line.product, line.group_description, line.description, is_tax=line.is_tax)
    if isinstance(ex, NotExtracted) and ex.kind == KIND_TAX:
        return CostLineMatched(line=line, kind=ex.kind, unmatched_reason=ex.reason)
    by_id = _by_id(line, account, ex, inventory)
    if by_id is not None:
        return by_id
    if isinstance(ex, NotExtracted):
        return CostLineMatched(line=line, kind=ex.kind, unmatched_reason=ex.reason)
    return _lookup(line, account, ex, inventory)


def _by_id(
    line: CostLine, account: str, ex: Extracted | NotExtracted, inventory: InventoryIndex
) -> CostLineMatched | None:
    """Rules 1 and 2: the items' resource id (then uuid), known to the inventory or not."""
    ids = [i for i in (line.resource_id, line.resource_uuid) if i]
    if not ids:
        return None
    kind = ex.kind
    rule = ex.rule if isinstance(ex, Extracted) else None
    for rid in ids:
        entry = inventory.by_id(account, rid, _kinds(kind))
        if entry is not None:
            return _attributed(line, entry, rule, "resource_id")
    kind = kind or "unknown"
    rid = ids[0]
    name = ex.name if isinstance(ex, Extracted) else None
    return CostLineMatched(
        line=line,
        kind=kind,
        name=name,
        resource_id=rid,
        resource_key=f"{account}:{kind}:{rid}",
        rule=rule,
        attributed_by="item_resource_id",
        # An inventoried kind that the inventory never listed with this id: not a current resource.
        still_exists=False if kind in INVENTORIED_KINDS else None,
    )


def _lookup(line: CostLine, account: str, ex: Extracted, inventory: InventoryIndex) -> CostLineMatched:
    """Rules 3 and 4: (kind, name) now, then in the history with the line's period."""
    if ex.kind not in INVENTORIED_KINDS:  # defensive: an extraction rule naming a kind nobody inventories
        return CostLineMatched(line=line, kind=ex.kind, name=ex.name, unmatched_reason="kind_not_inventoried")
    if ex.name is None:  # "the" resource of the kind (a registry): only when there is exactly one
        found = inventory.of_kind(account, ex.kind)
        if len(found) == 1:
            return _matched(line, found, ex.rule)
        reason: Literal["no_such_resource", "description_not_understood"] = (
            "no_such_resource" if not found else "description_not_understood"
        )
        return CostLineMatched(line=line, kind=ex.kind, unmatched_reason=reason)
    for kind in _kinds(ex.kind):
        found = [e for e in inventory.find(account, kind, ex.name) if e.alive_during(line.start, line.end)]
        if found:
            return _matched(line, found, ex.rule if kind == ex.kind else f"{ex.rule}_as_{kind}")
    history = [
        e
        for kind in _kinds(ex.kind)
        for e in inventory.find(account, kind, ex.name, exists=False)
        if e.alive_during(line.start, line.end)
    ]
    if len(history) == 1:
        e = history[0]
        rule = ex.rule if e.kind == ex.kind else f"{ex.rule}_as_{e.kind}"
        return _attributed(line, e, rule, "name_period_history")
    reason_h: Literal["ambiguous_history", "no_such_resource"] = "ambiguous_history" if history else "no_such_resource"
    return CostLineMatched(line=line, kind=ex.kind, name=ex.name, unmatched_reason=reason_h)


def _attributed(line: CostLine, entry: InventoryEntry, rule: str | None, by: AttributedBy) -> CostLineMatched:
    return CostLineMatched(
        line=line,
        kind=entry.kind,
        name=entry.name,
        resource_id=entry.resource_id,
        resource_key=entry.resource_key,
        rule=rule,
        attributed_by=by,
        still_exists=entry.exists,
    )


def _matched(line: CostLine, found: list[InventoryEntry], rule: str) -> CostLineMatched:
    """The first of the (sorted) current candidates; several resources sharing a name are flagged in the rule."""
    if len(found) > 1:
        rule = f"{rule}_ambiguous_{len(found)}"
    return _attributed(line, found[0], rule, "name")
