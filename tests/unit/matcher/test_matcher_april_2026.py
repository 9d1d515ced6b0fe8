"""April 2026 through the pure pipeline: CSV + items joined, inventory history from two syncs, attribution.

The same figures as the end-to-end test (tests/e2e/test_attribution_april.py), without a broker: 6 of 33 lines
attributed to current resources, 30 attributed at all, every destroyed droplet among them.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime

from services.ingester.csv_parser import parse_invoice_csv
from services.ingester.domain import build_events
from services.ingester.items import join_items, parse_item
from services.matcher.domain.matching import InventoryEntry, InventoryIndex, match_line
from services.poller import domain as poller
from shared.digitalocean import RESOURCE_ENDPOINTS
from shared.events import CostLineMatched, InvoiceDiscovered, Resource
from sims.scenario import APRIL_2026_INVOICE_UUID, builtin

ACC = "default"
# The attribution table of April 2026 (docs/architecture.md, "Exact attribution").
EXPECTED = {
    ("resource_id", True): 6,  # the seed's six, now by id
    (
        "resource_id",
        False,
    ): 7,  # loadtest-01 x2, k8s-staging nodes x3 (cluster uuid), staging-web-01 (renamed), web-01-old
    ("item_resource_id", False): 14,  # 13 CI runners and debug-box: ids the inventory never saw
    ("name_period_history", False): 3,  # staging-api-01, migration-test, the GPU droplet: no ids, known to the history
    (None, None): 3,  # two Spaces lines (not inventoried), GST
}


def _listed(resources: dict[str, list[dict]], kind: str) -> list[dict]:
    ep = RESOURCE_ENDPOINTS[kind]
    items = resources.get(ep.key, [])
    if ep.key == "droplets":
        gpus = dict(ep.params).get("type") == "gpus"
        items = [d for d in items if str(d.get("size_slug", "")).startswith("gpu-") is gpus]
    return items


def inventory_after_two_syncs() -> InventoryIndex:
    """The matcher's view after a sync of the past inventory, then of the current one (the poller's rules)."""
    sc = builtin("april-2026")
    assert sc.resources_past is not None
    t1, t2 = datetime(2026, 4, 30, tzinfo=UTC), datetime(2026, 5, 14, tzinfo=UTC)

    def sync(resources: dict[str, list[dict]]) -> dict[tuple[str, str], Resource]:
        return {
            (kind, (r := poller.resource_from(kind, raw)).resource_id): r
            for kind in RESOURCE_ENDPOINTS
            for raw in _listed(resources, kind)
        }

    past, now = sync(sc.resources_past), sync(sc.resources)
    idx = InventoryIndex()
    for (kind, rid), r in now.items():
        idx.upsert(InventoryEntry.from_resource(poller.resource_key(ACC, kind, rid), ACC, r))
    for (kind, rid), r in past.items():
        if (kind, rid) not in now:
            known = poller.Known(r.name, t1, t1, r.model_dump(mode="json"))
            gone = poller.gone_record(kind, rid, known)
            idx.upsert(InventoryEntry.from_resource(poller.resource_key(ACC, kind, rid), ACC, gone))
    assert t2 > t1
    return idx


def april_matched() -> list[CostLineMatched]:
    sc = builtin("april-2026")
    parsed = parse_invoice_csv(sc.csv_bytes(APRIL_2026_INVOICE_UUID))
    joined = join_items(parsed.lines, [parse_item(i) for i in sc.items(APRIL_2026_INVOICE_UUID)])
    disc = InvoiceDiscovered(
        invoice_uuid=APRIL_2026_INVOICE_UUID,
        period="2026-04-01",
        amount_minor=8692,
        date=datetime(2026, 5, 1, tzinfo=UTC),
    )
    lines, end = build_events(disc, parsed, 1, None, joined)
    assert (end.line_count, end.amount_gross_minor, end.amount_tax_minor) == (33, 8692, 790)
    idx = inventory_after_two_syncs()
    return [match_line(ln, ACC, idx) for ln in lines]


def test_every_april_row_joins_its_item() -> None:
    sc = builtin("april-2026")
    parsed = parse_invoice_csv(sc.csv_bytes(APRIL_2026_INVOICE_UUID))
    joined = join_items(parsed.lines, [parse_item(i) for i in sc.items(APRIL_2026_INVOICE_UUID)])
    assert Counter(r.join for r in joined) == {"exact": 33}


def test_april_2026_attribution_table() -> None:
    matched = april_matched()
    table = Counter((m.attributed_by, m.still_exists) for m in matched)
    assert table == EXPECTED
    assert sum(1 for m in matched if m.still_exists is True) == 6
    assert sum(1 for m in matched if m.resource_id is not None) == 30
    destroyed = [m for m in matched if m.line.product == "Droplets" and m.resource_id and m.still_exists is False]
    assert len(destroyed) == 24  # 21 droplets and 3 nodes of the deleted cluster: at least the 21


def test_april_renamed_shared_name_and_gpu() -> None:
    by_desc: dict[str, list[CostLineMatched]] = {}
    for m in april_matched():
        by_desc.setdefault(m.line.description, []).append(m)
    [renamed] = by_desc["staging-web-01 (s-1vcpu-1gb)"]
    assert (renamed.resource_id, renamed.name, renamed.attributed_by) == ("512000010", "staging-web", "resource_id")
    shared = by_desc["loadtest-01 (c-2)"]
    assert [(m.resource_id, m.attributed_by) for m in shared] == [
        ("512000001", "resource_id"),
        ("512000002", "resource_id"),
    ]
    [gpu] = by_desc["ml-train-gpu-01 (gpu-4000adax1-20gb)"]
    assert (gpu.kind, gpu.resource_id, gpu.attributed_by) == ("gpu_droplet", "512000020", "name_period_history")
    [web] = by_desc["web-01 (s-1vcpu-1gb)"]
    assert (web.resource_id, web.still_exists) == ("401112201", True)
