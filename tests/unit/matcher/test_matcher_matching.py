"""Matching cost lines to the inventory view (the `inventory` fixture: conftest.py)."""

from __future__ import annotations

import pytest

from services.matcher.domain.matching import InventoryEntry, InventoryIndex, match_line
from shared.events import Resource, decode, encode
from tests.factories import cost_line

ACC = "default"


def _e(kind: str, rid: str, name: str, account: str = ACC) -> InventoryEntry:
    return InventoryEntry(f"{account}:{kind}:{rid}", account, kind, rid, name)


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
