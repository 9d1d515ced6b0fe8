"""Attribution rules: id first, then (kind, name) with the line's period, then the inventory's history.

Lines and resources are shaped like DigitalOcean's (the CSV's descriptions, the items' ids, the listings' ids).
"""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from services.matcher import handler
from services.matcher.domain.matching import InventoryEntry, InventoryIndex, match_line
from shared.events import Resource, encode
from shared.kafka.records import Record
from tests.factories import cost_line

ACC = "default"
APR1, MAY1 = datetime(2026, 4, 1, tzinfo=UTC), datetime(2026, 5, 1, tzinfo=UTC)
LINE = {"invoice_uuid": "inv", "amount_minor": 45}


def d(day: int, hour: int = 0) -> datetime:
    return datetime(2026, 4, day, hour, tzinfo=UTC)


def entry(
    kind: str,
    rid: str,
    name: str,
    *,
    exists: bool = True,
    since: datetime | None = None,
    last_seen: datetime | None = None,
) -> InventoryEntry:
    return InventoryEntry(f"{ACC}:{kind}:{rid}", ACC, kind, rid, name, exists, since, last_seen)


INVENTORY = InventoryIndex(
    [
        entry("droplet", "401112201", "web-01", since=datetime(2024, 2, 11, tzinfo=UTC)),
        entry("droplet", "498003517", "web-02", since=datetime(2026, 5, 6, tzinfo=UTC)),
        # Two droplets named loadtest-01, both destroyed (history records).
        entry("droplet", "512000001", "loadtest-01", exists=False, since=d(10, 13), last_seen=d(10, 20)),
        entry("droplet", "512000002", "loadtest-01", exists=False, since=d(10, 13), last_seen=d(10, 20)),
        # Renamed after the line was billed (`staging-web-01` on the invoice), then destroyed.
        entry("droplet", "512000010", "staging-web", exists=False, since=APR1, last_seen=d(4)),
        entry("droplet", "512000011", "staging-api-01", exists=False, since=APR1, last_seen=d(4)),
        entry("gpu_droplet", "512000020", "ml-train-gpu-01", exists=False, since=d(24), last_seen=d(24, 12)),
        entry("kubernetes_cluster", "c1a2", "k8s-staging", exists=False, since=d(5), last_seen=d(6)),
        # An old web-01, destroyed in March: never the April line's resource by name.
        entry("droplet", "300000001", "web-01", exists=False, since=datetime(2025, 1, 1, tzinfo=UTC), last_seen=d(1)),
    ]
)


def test_seed_rule_name_of_a_current_resource() -> None:
    m = match_line(cost_line(description="web-01 (s-1vcpu-1gb)", start=APR1, end=MAY1, **LINE), ACC, INVENTORY)
    assert (m.resource_id, m.attributed_by, m.still_exists, m.rule) == ("401112201", "name", True, "droplet_name_size")


def test_id_beats_name_when_two_droplets_share_it() -> None:
    a = match_line(
        cost_line(description="loadtest-01 (c-2)", start=d(10, 13), end=MAY1, resource_id="512000001", **LINE),
        ACC,
        INVENTORY,
    )
    b = match_line(
        cost_line(description="loadtest-01 (c-2)", start=d(10, 13), end=MAY1, resource_id="512000002", **LINE),
        ACC,
        INVENTORY,
    )
    assert (a.resource_id, b.resource_id) == ("512000001", "512000002")
    assert a.attributed_by == b.attributed_by == "resource_id" and a.still_exists is False


def test_without_ids_two_history_candidates_are_ambiguous_never_guessed() -> None:
    m = match_line(cost_line(description="loadtest-01 (c-2)", start=d(10, 13), end=d(10, 22), **LINE), ACC, INVENTORY)
    assert (m.resource_id, m.unmatched_reason) == (None, "ambiguous_history")


def test_a_renamed_droplet_is_found_by_its_id() -> None:
    m = match_line(
        cost_line(description="staging-web-01 (s-1vcpu-1gb)", start=APR1, end=MAY1, resource_id="512000010", **LINE),
        ACC,
        INVENTORY,
    )
    assert (m.resource_id, m.name, m.attributed_by) == ("512000010", "staging-web", "resource_id")


def test_the_items_uuid_is_tried_after_the_id() -> None:
    m = match_line(
        cost_line(
            description="x (s-2vcpu-4gb)",
            group_description="k8s-staging",
            start=APR1,
            end=MAY1,
            resource_uuid="c1a2",
            **LINE,
        ),
        ACC,
        INVENTORY,
    )
    assert (m.kind, m.resource_id, m.attributed_by) == ("kubernetes_cluster", "c1a2", "resource_id")


def test_an_id_the_inventory_never_saw_is_still_an_attribution() -> None:
    m = match_line(
        cost_line(description="ci-runner-0401a (s-2vcpu-4gb)", start=APR1, end=MAY1, resource_id="511000001", **LINE),
        ACC,
        INVENTORY,
    )
    assert (m.kind, m.name, m.resource_id, m.resource_key) == (
        "droplet",
        "ci-runner-0401a",
        "511000001",
        "default:droplet:511000001",
    )
    assert (m.attributed_by, m.still_exists, m.unmatched_reason) == ("item_resource_id", False, None)


def test_history_by_name_and_period() -> None:
    m = match_line(cost_line(description="staging-api-01 (s-1vcpu-2gb)", start=APR1, end=d(5), **LINE), ACC, INVENTORY)
    assert (m.resource_id, m.attributed_by, m.still_exists) == ("512000011", "name_period_history", False)


def test_history_outside_the_resources_life_is_not_it() -> None:
    """Seen last on 4 April: a line starting on the 20th is another resource with that name."""
    m = match_line(cost_line(description="staging-api-01 (s-1vcpu-2gb)", start=d(20), end=MAY1, **LINE), ACC, INVENTORY)
    assert m.unmatched_reason == "no_such_resource"


def test_a_current_resource_created_after_the_line_is_not_it() -> None:
    m = match_line(cost_line(description="web-02 (s-1vcpu-1gb)", start=APR1, end=MAY1, **LINE), ACC, INVENTORY)
    assert m.resource_id is None and m.unmatched_reason == "no_such_resource"


def test_a_gpu_droplet_line_is_attributed_from_the_gpu_listing() -> None:
    m = match_line(
        cost_line(description="ml-train-gpu-01 (gpu-4000adax1-20gb)", start=d(24), end=d(24, 2), **LINE), ACC, INVENTORY
    )
    assert (m.kind, m.resource_id, m.attributed_by) == ("gpu_droplet", "512000020", "name_period_history")
    assert m.rule == "droplet_name_size_as_gpu_droplet"


def test_tax_is_never_attributed_and_spaces_only_by_an_items_id() -> None:
    tax = match_line(
        cost_line(description="GST (10%)", product="Taxes", start=APR1, end=MAY1, is_tax=True, **LINE), ACC, INVENTORY
    )
    assert (tax.resource_id, tax.unmatched_reason) == (None, "tax_line")
    bucket = match_line(
        cost_line(
            description="Spaces (sgp1) 250GB",
            product="Spaces Subscription",
            start=APR1,
            end=MAY1,
            resource_uuid="b-1",
            **LINE,
        ),
        ACC,
        INVENTORY,
    )
    assert (bucket.kind, bucket.attributed_by, bucket.still_exists) == ("spaces", "item_resource_id", None)
    plain = match_line(
        cost_line(description="Spaces Subscription", product="Spaces Subscription", start=APR1, end=MAY1, **LINE),
        ACC,
        INVENTORY,
    )
    assert plain.unmatched_reason == "kind_not_inventoried"


def test_a_history_record_updates_the_index_and_a_tombstone_forgets() -> None:
    idx = InventoryIndex()
    live = Resource(kind="droplet", resource_id="9", name="box", attributes={"created_at": "2026-04-02T00:00:00Z"})
    gone = live.model_copy(update={"exists": False, "first_seen": d(2), "last_seen": d(3)})
    for r in (live, gone):
        rec = Record("cloud.resources.v1", 0, 0, f"{ACC}:droplet:9", encode(r, ACC), {}, None)
        change = handler.resource_change(rec)
        assert change.entry is not None
        idx.upsert(change.entry)
    e = idx.get(f"{ACC}:droplet:9")
    assert e is not None and (e.exists, e.since, e.last_seen) == (False, d(2), d(3))
    assert InventoryEntry.from_dict(e.to_dict()) == e
    assert idx.find(ACC, "droplet", "box") == [] and idx.find(ACC, "droplet", "box", exists=False) == [e]
    tomb = handler.resource_change(Record("cloud.resources.v1", 0, 1, f"{ACC}:droplet:9", None, {}, None))
    assert tomb.entry is None


def test_values_stored_before_the_history_read_as_current() -> None:
    old = {"resource_key": "a:droplet:1", "account": "a", "kind": "droplet", "resource_id": "1", "name": "x"}
    assert InventoryEntry.from_dict(old).exists is True


NAMES = st.sampled_from(["web-01", "loadtest-01", "staging-web", "ml-train-gpu-01", "anything"])


@given(rid=st.sampled_from(["401112201", "512000001", "512000002", "512000010", "512000020"]), name=NAMES)
def test_property_a_known_id_decides_whatever_the_description_says(rid: str, name: str) -> None:
    m = match_line(
        cost_line(description=f"{name} (s-1vcpu-1gb)", start=APR1, end=MAY1, resource_id=rid, **LINE), ACC, INVENTORY
    )
    assert (m.resource_id, m.attributed_by) == (rid, "resource_id")
    known = INVENTORY.by_id(ACC, rid)
    assert known is not None and m.still_exists is known.exists


@given(name=NAMES, day=st.integers(1, 28), hours=st.integers(1, 72))
def test_property_without_ids_only_name_rules_apply_and_current_means_exists(name: str, day: int, hours: int) -> None:
    start = d(day)
    end = datetime.fromtimestamp(start.timestamp() + hours * 3600, UTC)
    m = match_line(cost_line(description=f"{name} (s-1vcpu-1gb)", start=start, end=end, **LINE), ACC, INVENTORY)
    assert m.attributed_by in (None, "name", "name_period_history")
    if m.attributed_by == "name":
        assert m.still_exists is True
    if m.attributed_by == "name_period_history":
        assert m.still_exists is False
    if m.resource_id is None:
        assert m.unmatched_reason in ("no_such_resource", "ambiguous_history")
