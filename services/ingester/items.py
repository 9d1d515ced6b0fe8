"""Joining an invoice's CSV rows to its items (`GET /v2/customers/my/invoices/{uuid}`, all pages). Pure, no I/O.

Why a join: the CSV is the source of the amounts (the money gates reconcile it), but it carries no resource ids;
the items JSON carries `resource_uuid` / `resource_id` (on some lines: DigitalOcean leaves them out of others)
and is the same set of charges. The join takes the ids (and `duration`, `duration_unit`, `category`) from the
items onto the CSV rows and never changes an amount, a row or the row count.

The join, row by row in CSV order, each item used at most once:
1. **exact**: same product, group description, description, amount (exact, in minor units) and period (start and
   end as instants; DigitalOcean writes `...-30 23:59:59` or `...-01 00:00:00` for one end, so ends one second
   apart are equal). The first unused item with that key is taken.
2. **period_relaxed**: if no item has that key, the same but without the period, only when exactly one unused
   item remains with (product, group, description, amount): never a guess among several.
3. **identical_rows**: rows that share an exact key with other rows are paired with that key's items in order.
   They are indistinguishable in both sources (same product, text, amount and period), so whichever pairing is
   taken, each resource gets exactly one such row's amount: attribution per resource stays exact. The row says so.
4. otherwise **no_item**: the row keeps no ids (attributed by name later), with a note.
Items left over (DigitalOcean listing an item the CSV lacks) change nothing: the CSV is the amounts' source.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from services.ingester.csv_parser import ParsedLine
from shared.events import ItemJoin, canonical_json
from shared.money import MoneyError, money_from_json

_ONE_SECOND = timedelta(seconds=1)


@dataclass(frozen=True)
class Item:
    """One invoice item, read leniently: every field is optional at DigitalOcean."""

    product: str
    group_description: str
    description: str
    amount_minor: int | None
    start: datetime | None
    end: datetime | None
    resource_uuid: str | None
    resource_id: str | None
    duration: str | None
    duration_unit: str | None
    category: str | None


@dataclass(frozen=True)
class RowItem:
    """What one CSV row gets from the join."""

    join: ItemJoin
    item: Item | None = None
    note: str = ""


def _text(v: Any) -> str:
    return " ".join(str(v).split()) if v is not None else ""


def _opt(v: Any) -> str | None:
    t = _text(v)
    return t or None


def _time(v: Any) -> datetime | None:
    if not isinstance(v, str) or not v.strip():
        return None
    try:
        dt = datetime.fromisoformat(v.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).astimezone(UTC)


def parse_item(raw: Mapping[str, Any], currency: str = "USD") -> Item:
    """One item of the JSON; an unreadable amount is None (that item then joins no row)."""
    try:
        amount: int | None = money_from_json(raw.get("amount"), currency)
    except MoneyError:
        amount = None
    return Item(
        product=_text(raw.get("product")),
        group_description=_text(raw.get("group_description")),
        description=_text(raw.get("description")),
        amount_minor=amount,
        start=_time(raw.get("start_time")),
        end=_time(raw.get("end_time")),
        resource_uuid=_opt(raw.get("resource_uuid")),
        resource_id=_opt(raw.get("resource_id")),
        duration=_opt(raw.get("duration")),
        duration_unit=_opt(raw.get("duration_unit")),
        category=_opt(raw.get("category")),
    )


def _norm_end(end: datetime | None) -> datetime | None:
    """`23:59:59` and the next second are the same end."""
    if end is None:
        return None
    return end + _ONE_SECOND if end.second == 59 and end.minute == 59 and end.hour == 23 else end


def _loose_key(product: str, group: str, description: str, amount: int | None) -> tuple[Any, ...]:
    return (product.lower(), group.lower(), description.lower(), amount)


def _exact_key(
    product: str, group: str, description: str, amount: int | None, start: datetime | None, end: datetime | None
) -> tuple[Any, ...]:
    return (*_loose_key(product, group, description, amount), start, _norm_end(end))


def _row_keys(line: ParsedLine) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    p, g, d = _text(line.product), _text(line.group_description), _text(line.description)
    return (
        _exact_key(p, g, d, line.amount_minor, line.start, line.end),
        _loose_key(p, g, d, line.amount_minor),
    )


def join_items(lines: Sequence[ParsedLine], items: Iterable[Item]) -> list[RowItem]:
    """One RowItem per CSV row, in order (the module docstring has the rules)."""
    exact: dict[tuple[Any, ...], list[int]] = defaultdict(list)
    loose: dict[tuple[Any, ...], list[int]] = defaultdict(list)
    pool = [it for it in items if it.amount_minor is not None]
    for i, it in enumerate(pool):
        exact[_exact_key(it.product, it.group_description, it.description, it.amount_minor, it.start, it.end)].append(i)
        loose[_loose_key(it.product, it.group_description, it.description, it.amount_minor)].append(i)
    keys = [_row_keys(ln) for ln in lines]
    rows_per_exact: dict[tuple[Any, ...], int] = defaultdict(int)
    for ek, _ in keys:
        rows_per_exact[ek] += 1
    used: set[int] = set()
    out: list[RowItem] = []
    for ek, lk in keys:
        free = [i for i in exact.get(ek, ()) if i not in used]
        if free:
            used.add(free[0])
            join: ItemJoin = "identical_rows" if rows_per_exact[ek] > 1 or len(free) > 1 else "exact"
            note = "identical rows paired with identical items in order" if join == "identical_rows" else ""
            out.append(RowItem(join, pool[free[0]], note))
            continue
        left = [i for i in loose.get(lk, ()) if i not in used]
        if len(left) == 1:
            used.add(left[0])
            out.append(RowItem("period_relaxed", pool[left[0]], "joined without the period (it differs)"))
            continue
        why = (
            f"{len(left)} items share its product, description and amount"
            if left
            else "no item has its product, description and amount"
        )
        out.append(RowItem("no_item", None, why))
    return out


def items_sha256(items: Iterable[Item]) -> str:
    """The items' content as the ledger records it: the same CSV with other ids is another revision."""
    rows = sorted(
        canonical_json(
            [
                it.product,
                it.group_description,
                it.description,
                it.amount_minor,
                str(it.start),
                str(it.end),
                it.resource_uuid,
                it.resource_id,
                it.duration,
                it.duration_unit,
                it.category,
            ]
        )
        for it in items
    )
    return hashlib.sha256("\n".join(rows).encode()).hexdigest()


ITEMS_SEP = "+items:"


def content_sha256(evidence_sha256: str, items_digest: str | None) -> str:
    """The ledger's evidence record: the reconciliation's digest, then the items' when they were fetched.

    Without items it is the reconciliation's digest alone (as before items were fetched), so a revision ingested
    without them is emitted again with ids once DigitalOcean serves them. Both parts stay readable
    (`evidence_part`), so an items outage can keep a revision whose reconciliation is unchanged.
    """
    return evidence_sha256 if items_digest is None else f"{evidence_sha256}{ITEMS_SEP}{items_digest}"


def evidence_part(recorded: str | None) -> str | None:
    """The reconciliation's digest of a recorded content digest."""
    return recorded.split(ITEMS_SEP, 1)[0] if recorded is not None else None


def keep_on_items_outage(
    latest: Mapping[str, Any] | None, csv_sha256: str, parser_version: str, evidence_sha256: str
) -> bool:
    """Items failed now: keep the latest revision when it is this CSV, committed, with the same reconciliation.

    Only the items part may differ (it had ids, the outage has none): dropping them is no reason for a revision,
    while a changed reconciliation still is (the money gates release or hold through it as before).
    """
    if latest is None:
        return False
    return (
        latest["csv_sha256"] == csv_sha256
        and latest["parser_version"] == parser_version
        and latest["state"] == "committed"
        and evidence_part(latest.get("evidence_sha256")) == evidence_sha256
    )
