"""Matching a cost line to an inventoried resource by (account, kind, name), case-insensitive. Pure, no I/O.

The inventory view is a plain in-memory index, fed by whatever runtime holds the inventory (a faust
GlobalTable today), so the rules can be tested and the runtime swapped without touching them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from services.matcher.extract import INVENTORIED_KINDS, Extracted, NotExtracted, extract
from shared.events import CostLine, CostLineMatched, Resource

# A Floating IP became a Reserved IP at DigitalOcean: the same address may be listed under either name.
KIND_ALIASES: dict[str, tuple[str, ...]] = {"floating_ip": ("reserved_ip",), "reserved_ip": ("floating_ip",)}


@dataclass(frozen=True)
class InventoryEntry:
    """What the matcher needs to know about one resource (the inventory table's value)."""

    resource_key: str
    account: str
    kind: str
    resource_id: str
    name: str

    def to_dict(self) -> dict[str, str]:
        return {
            "resource_key": self.resource_key,
            "account": self.account,
            "kind": self.kind,
            "resource_id": self.resource_id,
            "name": self.name,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> InventoryEntry:
        return cls(
            resource_key=str(d["resource_key"]),
            account=str(d["account"]),
            kind=str(d["kind"]),
            resource_id=str(d["resource_id"]),
            name=str(d["name"]),
        )

    @classmethod
    def from_resource(cls, resource_key: str, account: str, r: Resource) -> InventoryEntry:
        return cls(resource_key, account, r.kind, r.resource_id, r.name)


def _norm(name: str) -> str:
    return " ".join(name.strip().lower().split())


class InventoryIndex:
    """resource_key → entry, plus (account, kind, lower(name)) → resource keys. Upserts/removals are idempotent."""

    def __init__(self, entries: Iterable[InventoryEntry] = ()) -> None:
        self._by_key: dict[str, InventoryEntry] = {}
        self._by_name: dict[tuple[str, str, str], set[str]] = {}
        self._by_kind: dict[tuple[str, str], set[str]] = {}
        for e in entries:
            self.upsert(e)

    def __len__(self) -> int:
        return len(self._by_key)

    def __contains__(self, resource_key: str) -> bool:
        return resource_key in self._by_key

    def get(self, resource_key: str) -> InventoryEntry | None:
        return self._by_key.get(resource_key)

    def upsert(self, entry: InventoryEntry) -> None:
        self.remove(entry.resource_key)
        self._by_key[entry.resource_key] = entry
        self._by_name.setdefault((entry.account, entry.kind, _norm(entry.name)), set()).add(entry.resource_key)
        self._by_kind.setdefault((entry.account, entry.kind), set()).add(entry.resource_key)

    def remove(self, resource_key: str) -> None:
        old = self._by_key.pop(resource_key, None)
        if old is None:
            return
        for index, k in (
            (self._by_name, (old.account, old.kind, _norm(old.name))),
            (self._by_kind, (old.account, old.kind)),
        ):
            keys = index.get(k)  # type: ignore[call-overload]
            if keys is not None:
                keys.discard(resource_key)
                if not keys:
                    del index[k]  # type: ignore[arg-type]

    def find(self, account: str, kind: str, name: str) -> list[InventoryEntry]:
        """Every resource of that account and kind with that name (any case), deterministic order."""
        keys = self._by_name.get((account, kind, _norm(name)), set())
        return [self._by_key[k] for k in sorted(keys)]

    def of_kind(self, account: str, kind: str) -> list[InventoryEntry]:
        return [self._by_key[k] for k in sorted(self._by_kind.get((account, kind), set()))]


def match_line(line: CostLine, account: str, inventory: InventoryIndex) -> CostLineMatched:
    """Enrich one cost line: the resource it is about, or the reason it matches none."""
    ex = extract(line.product, line.group_description, line.description, is_tax=line.is_tax)
    if isinstance(ex, NotExtracted):
        return CostLineMatched(line=line, kind=ex.kind, unmatched_reason=ex.reason)
    return _lookup(line, account, ex, inventory)


def _lookup(line: CostLine, account: str, ex: Extracted, inventory: InventoryIndex) -> CostLineMatched:
    if ex.kind not in INVENTORIED_KINDS:  # defensive: an extraction rule naming a kind nobody inventories
        return CostLineMatched(line=line, kind=ex.kind, name=ex.name, unmatched_reason="kind_not_inventoried")
    if ex.name is None:  # "the" resource of the kind (a registry): only when there is exactly one
        found = inventory.of_kind(account, ex.kind)
        if len(found) == 1:
            return _matched(line, found, ex.rule)
        reason = "no_such_resource" if not found else "description_not_understood"
        return CostLineMatched(line=line, kind=ex.kind, unmatched_reason=reason)
    found = inventory.find(account, ex.kind, ex.name)
    if found:
        return _matched(line, found, ex.rule)
    for alias in KIND_ALIASES.get(ex.kind, ()):
        found = inventory.find(account, alias, ex.name)
        if found:
            return _matched(line, found, f"{ex.rule}_as_{alias}")
    return CostLineMatched(line=line, kind=ex.kind, name=ex.name, unmatched_reason="no_such_resource")


def _matched(line: CostLine, found: list[InventoryEntry], rule: str) -> CostLineMatched:
    """The first of the (sorted) candidates; several resources sharing a name are flagged in the rule."""
    entry = found[0]
    if len(found) > 1:
        rule = f"{rule}_ambiguous_{len(found)}"
    return CostLineMatched(
        line=line,
        kind=entry.kind,
        name=entry.name,
        resource_id=entry.resource_id,
        resource_key=entry.resource_key,
        rule=rule,
    )
