"""Matching cost lines to the inventory view, and the handler's decode/dead-letter decisions."""

from __future__ import annotations

import pytest

from services.matcher import handler
from services.matcher.domain.matching import InventoryEntry, InventoryIndex, match_line
from shared.events import EventDecodeError, Reconciliation, Resource, decode, encode
from shared.kafka.records import Record
from tests.assembly_reader import DictTables
from tests.factories import cost_line, invoice_end, record

ACC = "default"


def _e(kind: str, rid: str, name: str, account: str = ACC) -> InventoryEntry:
    return InventoryEntry(f"{account}:{kind}:{rid}", account, kind, rid, name)


@pytest.fixture
def inventory() -> InventoryIndex:
    return InventoryIndex(
        [
            _e("droplet", "401", "web-01"),
            _e("droplet", "402", "api-01"),
            _e("droplet", "403", "My Box (old)"),
            _e("volume", "v-1", "vol-data-syd1"),
            _e("database", "d-1", "db-postgresql-syd1-11111"),
            _e("load_balancer", "lb-1", "lb-prod"),
            _e("kubernetes_cluster", "k-1", "k8s-prod"),
            _e("app", "a-1", "my-app"),
            _e("snapshot", "s-1", "web-01-1712000000"),
            _e("reserved_ip", "1.2.3.4", "1.2.3.4"),
            _e("floating_ip", "5.6.7.8", "5.6.7.8"),
            _e("registry", "acme", "acme"),
            _e("droplet", "999", "web-01", account="other"),
        ]
    )


@pytest.mark.parametrize(
    ("product", "description", "group", "key", "rule"),
    [
        ("Droplets", "web-01 (s-1vcpu-1gb)", "", "default:droplet:401", "droplet_name_size"),
        ("Droplets", "API-01 (s-1vcpu-2gb)", "", "default:droplet:402", "droplet_name_size"),
        ("Droplets", "WEB-01", "", "default:droplet:401", "droplet_name"),
        ("Droplets", "my box (old) (s-1vcpu-1gb)", "", "default:droplet:403", "droplet_name_size"),
        (
            "Droplets",
            "k8s-prod-pool-abc12 (s-2vcpu-4gb)",
            "K8S-prod",
            "default:kubernetes_cluster:k-1",
            "kubernetes_node_group",
        ),
        (
            "Kubernetes Clusters",
            "HA control plane",
            "k8s-prod",
            "default:kubernetes_cluster:k-1",
            "kubernetes_cluster_group",
        ),
        ("Volumes", "vol-data-syd1 (syd1) 50GB", "", "default:volume:v-1", "volume_name_region_size"),
        (
            "Managed Databases",
            "db-postgresql-syd1-11111 (db-s-1vcpu-1gb)",
            "",
            "default:database:d-1",
            "database_name_size",
        ),
        ("Load Balancers", "lb-prod (lb-small)", "", "default:load_balancer:lb-1", "load_balancer_name_size"),
        ("App Platform", "my-app (basic-xxs)", "", "default:app:a-1", "app_name_tier"),
        ("Snapshots", "web-01-1712000000 (nyc3) 2.5GB", "", "default:snapshot:s-1", "snapshot_name_region_size"),
        ("Backups", "web-01 (s-1vcpu-1gb)", "", "default:droplet:401", "backup_of_droplet"),
        ("Reserved IPs", "Unused Reserved IP - 1.2.3.4", "", "default:reserved_ip:1.2.3.4", "reserved_ip_address"),
        (
            "Floating IPs",
            "Unused Floating IP - 1.2.3.4",
            "",
            "default:reserved_ip:1.2.3.4",
            "floating_ip_address_as_reserved_ip",
        ),
        ("Floating IPs", "Unused Floating IP - 5.6.7.8", "", "default:floating_ip:5.6.7.8", "floating_ip_address"),
        ("Container Registry", "basic", "", "default:registry:acme", "registry_of_account"),
    ],
)
def test_lines_match_by_kind_and_name_any_case(
    inventory: InventoryIndex, product: str, description: str, group: str, key: str, rule: str
) -> None:
    m = match_line(
        cost_line(product=product, description=description, group_description=group, invoice_uuid="inv"), ACC, inventory
    )
    assert (m.resource_key, m.rule, m.unmatched_reason) == (key, rule, None)
    assert m.resource_id == key.split(":", 2)[2]


@pytest.mark.parametrize(
    ("product", "description", "group", "is_tax", "reason", "kind"),
    [
        ("Droplets", "ci-runner-0401a (s-2vcpu-4gb)", "", False, "no_such_resource", "droplet"),
        ("Droplets", "web-01-old (s-1vcpu-1gb)", "", False, "no_such_resource", "droplet"),
        (
            "Droplets",
            "k8s-staging-pool-7x2kq (s-2vcpu-4gb)",
            "k8s-staging",
            False,
            "no_such_resource",
            "kubernetes_cluster",
        ),
        ("Volumes", "web-01 (syd1) 50GB", "", False, "no_such_resource", "volume"),  # right name, wrong kind
        ("Spaces Subscription", "Spaces Subscription", "", False, "kind_not_inventoried", "spaces"),
        ("Taxes", "GST (10%)", "", True, "tax_line", "tax"),
        ("Droplets", "", "", False, "description_not_understood", "droplet"),
        ("Teleporters", "beam-01", "", False, "unknown_product", None),
    ],
)
def test_unmatched_lines_carry_a_reason(
    inventory: InventoryIndex, product: str, description: str, group: str, is_tax: bool, reason: str, kind: str | None
) -> None:
    m = match_line(
        cost_line(product=product, description=description, group_description=group, invoice_uuid="inv", is_tax=is_tax),
        ACC,
        inventory,
    )
    assert (m.unmatched_reason, m.kind, m.resource_id, m.resource_key) == (reason, kind, None, None)


def test_matching_is_per_account(inventory: InventoryIndex) -> None:
    assert (
        match_line(
            cost_line(product="Droplets", description="web-01 (x)", invoice_uuid="inv"), "other", inventory
        ).resource_key
        == "other:droplet:999"
    )
    assert (
        match_line(
            cost_line(product="Droplets", description="api-01 (x)", invoice_uuid="inv"), "other", inventory
        ).unmatched_reason
        == "no_such_resource"
    )


def test_registry_needs_exactly_one(inventory: InventoryIndex) -> None:
    assert (
        match_line(
            cost_line(product="Container Registry", description="basic", invoice_uuid="inv"), "nobody", inventory
        ).unmatched_reason
        == "no_such_resource"
    )
    inventory.upsert(_e("registry", "second", "second"))
    assert (
        match_line(
            cost_line(product="Container Registry", description="basic", invoice_uuid="inv"), ACC, inventory
        ).unmatched_reason
        == "description_not_understood"
    )


def test_two_resources_with_one_name_are_flagged(inventory: InventoryIndex) -> None:
    inventory.upsert(_e("droplet", "400", "web-01"))
    m = match_line(cost_line(product="Droplets", description="web-01 (s)", invoice_uuid="inv"), ACC, inventory)
    assert m.resource_key == "default:droplet:400"
    assert m.rule == "droplet_name_size_ambiguous_2"


def test_index_upsert_rename_and_remove_are_idempotent() -> None:
    idx = InventoryIndex()
    e = _e("droplet", "1", "old-name")
    idx.upsert(e)
    idx.upsert(e)
    assert len(idx) == 1 and idx.find(ACC, "droplet", "OLD-NAME") == [e]
    renamed = _e("droplet", "1", "new-name")
    idx.upsert(renamed)
    assert idx.find(ACC, "droplet", "old-name") == [] and idx.find(ACC, "droplet", "new-name") == [renamed]
    idx.remove("default:droplet:1")
    idx.remove("default:droplet:1")
    assert len(idx) == 0 and idx.of_kind(ACC, "droplet") == [] and "default:droplet:1" not in idx


def test_enriched_event_ids_are_deterministic_and_change_with_the_match(inventory: InventoryIndex) -> None:
    line = cost_line(product="Droplets", description="ghost (s)", invoice_uuid="inv")
    before = match_line(line, ACC, inventory)
    again = match_line(line, ACC, inventory)
    assert decode(encode(before, ACC))[0].event_id == decode(encode(again, ACC))[0].event_id
    inventory.upsert(_e("droplet", "77", "ghost"))
    after = match_line(line, ACC, inventory)
    assert after.resource_id == "77"
    assert decode(encode(after, ACC))[0].event_id != decode(encode(before, ACC))[0].event_id


def test_entry_round_trips_through_the_table_value() -> None:
    e = _e("app", "a", "my (app)")
    assert InventoryEntry.from_dict(e.to_dict()) == e
    r = Resource(kind="volume", resource_id="v", name="Vol")
    assert InventoryEntry.from_resource("acc:volume:v", "acc", r) == InventoryEntry(
        "acc:volume:v", "acc", "volume", "v", "Vol"
    )


# ------------------------------------------------------------------------------------------- handler
def test_resource_records_and_tombstones() -> None:
    r = Resource(kind="droplet", resource_id="1", name="web-01")
    ch = handler.resource_change(record(encode(r, "acc"), key="acc:droplet:1"))
    assert ch.entry == InventoryEntry("acc:droplet:1", "acc", "droplet", "1", "web-01")
    gone = handler.resource_change(record(None, key="acc:droplet:1"))
    assert gone.resource_key == "acc:droplet:1" and gone.entry is None


@pytest.mark.parametrize(
    ("value", "key"),
    [
        (b"not json", "acc:droplet:1"),
        (b'{"event_id": "x"}', "acc:droplet:1"),
        (
            encode(cost_line(product="Droplets", description="x", invoice_uuid="inv"), "acc"),
            "acc:droplet:1",
        ),  # wrong type on the topic
        (encode(Resource(kind="droplet", resource_id="1", name="x"), "acc"), None),  # no key
    ],
)
def test_bad_resource_records_raise_for_the_dead_letter_queue(value: bytes, key: str | None) -> None:
    with pytest.raises(EventDecodeError):
        handler.resource_change(record(value, key=key))


def _step(rec: Record, index: InventoryIndex, tables: DictTables) -> handler.Step:
    step = handler.cost_line_record(rec, index, tables, matched_topic="m", completed_topic="c")
    tables.apply(step)
    return step


# The end marker of the two-line invoice (a droplet line of 100 and a tax line of 100).
END_OF_TWO_LINES = invoice_end(
    invoice_uuid="inv",
    invoice_id=None,
    invoice_date="2026-05-01",
    line_count=2,
    amount_net_minor=100,
    amount_tax_minor=100,
    csv_sha256="x",
    reconciliation=Reconciliation(status="unknown"),
)


def test_cost_line_records_enrich_then_complete(inventory: InventoryIndex) -> None:
    tables = DictTables()
    lines = [
        cost_line(0, product="Droplets", description="web-01 (s)", invoice_uuid="inv"),
        cost_line(1, product="Taxes", description="GST (10%)", invoice_uuid="inv", is_tax=True),
    ]
    end = END_OF_TWO_LINES
    outs = []
    for i, ev in enumerate([*lines, end]):
        outs += _step(record(encode(ev, ACC), key="inv", offset=i), inventory, tables).outs
    assert [o.topic for o in outs] == ["m", "m", "c"]
    assert all(o.key == "inv" for o in outs)
    _, done = decode(outs[-1].value)
    assert (done.line_count, done.matched_count, done.amount_gross_minor) == (2, 1, 200)
    _, first = decode(outs[0].value)
    assert first.resource_key == "default:droplet:401"
    assert tables.facts == {} and list(tables.done) == ["inv|1"]


@pytest.mark.parametrize(
    "value",
    [None, b"", b"{}", b"\xff\xfe", encode(Resource(kind="droplet", resource_id="1", name="x"), ACC)],
)
def test_bad_cost_line_records_raise_for_the_dead_letter_queue(inventory: InventoryIndex, value: bytes | None) -> None:
    with pytest.raises(EventDecodeError):
        handler.cost_line_record(record(value), inventory, DictTables(), matched_topic="m", completed_topic="c")


def test_records_processed_again_after_a_crash_give_byte_identical_outputs(inventory: InventoryIndex) -> None:
    """A crash before the tables' changelog is written means the records are read again: same bytes out."""
    lines = [
        cost_line(0, product="Droplets", description="web-01 (s)", invoice_uuid="inv"),
        cost_line(1, product="Taxes", description="GST (10%)", invoice_uuid="inv", is_tax=True),
    ]
    end = END_OF_TWO_LINES
    records = [record(encode(ev, ACC), key="inv", offset=i) for i, ev in enumerate([*lines, end])]

    def run() -> list[bytes]:
        tables = DictTables()
        return [o.value for r in records for o in _step(r, inventory, tables).outs]

    first = run()
    assert len(first) == 3
    assert run() == first
