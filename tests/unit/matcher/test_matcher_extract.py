"""Name extraction from real-shaped DigitalOcean CSV rows."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.matcher.domain.extract import Extracted, NotExtracted, extract, is_tax_description, split_name_and_paren


@pytest.mark.parametrize(
    ("product", "group", "description", "kind", "name", "rule"),
    [
        ("Droplets", "", "web-01 (s-1vcpu-1gb)", "droplet", "web-01", "droplet_name_size"),
        ("Droplets", "", "indra (s-2vcpu-4gb)", "droplet", "indra", "droplet_name_size"),
        ("Droplets", "", "API-01 (s-1vcpu-2gb)", "droplet", "API-01", "droplet_name_size"),
        ("Droplets", "", "loadtest-01 (c-2)", "droplet", "loadtest-01", "droplet_name_size"),
        ("Droplets", "", "web-01", "droplet", "web-01", "droplet_name"),
        ("Droplets", "", "  web-01   ", "droplet", "web-01", "droplet_name"),
        ("Droplets", "", "my box (old) (s-1vcpu-1gb)", "droplet", "my box (old)", "droplet_name_size"),
        ("Droplets", "", "web.example.com (s-1vcpu-1gb)", "droplet", "web.example.com", "droplet_name_size"),
        ("droplets", "", "web-01 (s-1vcpu-1gb)", "droplet", "web-01", "droplet_name_size"),
        ("DROPLETS", "", "web-01 (s-1vcpu-1gb)", "droplet", "web-01", "droplet_name_size"),
        (
            "Droplets",
            "k8s-prod",
            "k8s-prod-pool-abc12 (s-2vcpu-4gb)",
            "kubernetes_cluster",
            "k8s-prod",
            "kubernetes_node_group",
        ),
        (
            "Droplets",
            " k8s-staging ",
            "k8s-staging-pool-7x2kq (s-2vcpu-4gb)",
            "kubernetes_cluster",
            "k8s-staging",
            "kubernetes_node_group",
        ),
        (
            "Kubernetes Clusters",
            "k8s-prod",
            "HA control plane",
            "kubernetes_cluster",
            "k8s-prod",
            "kubernetes_cluster_group",
        ),
        (
            "Kubernetes Clusters",
            "k8s-prod",
            "f3a9c1d2e4b5",
            "kubernetes_cluster",
            "k8s-prod",
            "kubernetes_cluster_group",
        ),
        ("Volumes", "", "volume-sfo2-01 (sfo2) 100GB", "volume", "volume-sfo2-01", "volume_name_region_size"),
        ("Volumes", "", "vol-data-syd1 (syd1) 50GB", "volume", "vol-data-syd1", "volume_name_region_size"),
        ("Volumes", "", "pvc-1a2b (nyc3) 1.5 GB", "volume", "pvc-1a2b", "volume_name_region_size"),
        ("Volumes", "", "big (fra1) 2TiB", "volume", "big", "volume_name_region_size"),
        ("Volumes", "", "volume-nyc1-02", "volume", "volume-nyc1-02", "volume_name"),
        (
            "Managed Databases",
            "",
            "db-postgresql-fra1-11111 (db-s-1vcpu-1gb)",
            "database",
            "db-postgresql-fra1-11111",
            "database_name_size",
        ),
        (
            "Databases",
            "",
            "db-mysql-nyc3-22222 (db-s-2vcpu-4gb)",
            "database",
            "db-mysql-nyc3-22222",
            "database_name_size",
        ),
        ("Load Balancers", "", "lb-prod (lb-small)", "load_balancer", "lb-prod", "load_balancer_name_size"),
        ("Load Balancers", "", "lb-prod", "load_balancer", "lb-prod", "load_balancer_name"),
        ("App Platform", "", "my-app (basic-xxs)", "app", "my-app", "app_name_tier"),
        ("App Platform", "", "my-app", "app", "my-app", "app_name"),
        (
            "Snapshots",
            "",
            "web-01-1712000000 (nyc3) 2.5GB",
            "snapshot",
            "web-01-1712000000",
            "snapshot_name_region_size",
        ),
        ("Backups", "", "web-01 (s-1vcpu-1gb)", "droplet", "web-01", "backup_of_droplet"),
        ("Droplet Backups", "", "web-01 (s-1vcpu-1gb)", "droplet", "web-01", "backup_of_droplet"),
        ("Floating IPs", "", "Unused Floating IP - 1.1.1.1", "floating_ip", "1.1.1.1", "floating_ip_address"),
        ("Floating IPs", "", "unused floating ip - 10.0.0.254", "floating_ip", "10.0.0.254", "floating_ip_address"),
        ("Floating IPs", "", "Floating IP - 1.1.1.1", "floating_ip", "1.1.1.1", "floating_ip_address"),
        ("Floating IPs", "", "1.1.1.1", "floating_ip", "1.1.1.1", "floating_ip_address"),
        ("Reserved IPs", "", "Unused Reserved IP - 1.2.3.4", "reserved_ip", "1.2.3.4", "reserved_ip_address"),
        (
            "Reserved IPs",
            "",
            "Unused Reserved IP - 2a03:b0c0:2:d0::1",
            "reserved_ip",
            "2a03:b0c0:2:d0::1",
            "reserved_ip_address",
        ),
        ("Container Registry", "", "basic", "registry", None, "registry_of_account"),
        ("Container Registry", "", "professional", "registry", None, "registry_of_account"),
    ],
)
def test_shapes_are_extracted(
    product: str, group: str, description: str, kind: str, name: str | None, rule: str
) -> None:
    assert extract(product, group, description) == Extracted(kind, name, rule)


@pytest.mark.parametrize(
    ("product", "group", "description", "is_tax", "reason", "kind"),
    [
        ("Taxes", "", "GST (10%)", True, "tax_line", "tax"),
        ("Taxes", "", "STATE SALES TAX (6.25%)", True, "tax_line", "tax"),
        ("taxes", "", "anything", False, "tax_line", "tax"),
        ("", "", "GST (10%)", None, "tax_line", "tax"),  # no decision carried: the shared rule decides
        ("Other", "", "VAT (20%)", None, "tax_line", "tax"),
        ("Droplets", "", "tax-server (s-1vcpu-1gb)", True, "tax_line", "tax"),  # the ingester's is_tax wins
        ("Spaces Subscription", "", "Spaces Subscription", False, "kind_not_inventoried", "spaces"),
        ("Spaces Subscription", "", "Spaces (sgp1) 250GB", False, "kind_not_inventoried", "spaces"),
        ("Spaces", "", "Spaces (nyc3) 250GB", False, "kind_not_inventoried", "spaces"),
        ("Functions", "", "fn-namespace", False, "kind_not_inventoried", "function"),
        ("Bandwidth", "", "Outbound transfer overage 120GB", False, "account_level", "bandwidth"),
        ("Videos Of Cats", "", "cat-01", False, "unknown_product", None),
        ("", "", "web-01 (s-1vcpu-1gb)", False, "unknown_product", None),
        ("Droplets", "", "", False, "description_not_understood", "droplet"),
        ("Droplets", "", "   ", False, "description_not_understood", "droplet"),
        ("Volumes", "", "100GB", False, "description_not_understood", "volume"),
        ("Kubernetes Clusters", "", "HA control plane", False, "description_not_understood", "kubernetes_cluster"),
        ("Floating IPs", "", "Unused Floating IP", False, "description_not_understood", "floating_ip"),
        ("Floating IPs", "", "", False, "description_not_understood", "floating_ip"),
        ("Load Balancers", "", "", False, "description_not_understood", "load_balancer"),
    ],
)
def test_lines_without_a_resource_say_why(
    product: str, group: str, description: str, is_tax: bool | None, reason: str, kind: str | None
) -> None:
    got = extract(product, group, description, is_tax=is_tax)
    assert isinstance(got, NotExtracted)
    assert (got.reason, got.kind) == (reason, kind)


def test_unknown_product_is_reported_not_guessed() -> None:
    got = extract("Droplets v2", "", "web-01 (s-1vcpu-1gb)")
    assert isinstance(got, NotExtracted) and got.reason == "unknown_product"
    assert "Droplets v2" in got.detail


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("web-01 (s-1vcpu-1gb)", ("web-01", "s-1vcpu-1gb")),
        ("a (b) (c)", ("a (b)", "c")),
        ("a (b (c))", ("a", "b (c)")),
        ("(s-1vcpu-1gb)", ("(s-1vcpu-1gb)", None)),
        ("web-01 s-1vcpu-1gb)", ("web-01 s-1vcpu-1gb)", None)),
        ("web-01", ("web-01", None)),
        ("", ("", None)),
    ],
)
def test_split_name_and_paren(text: str, expected: tuple[str, str | None]) -> None:
    assert split_name_and_paren(text) == expected


_NAME = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9 ._()-]{0,40}[A-Za-z0-9.]", fullmatch=True)
_SLUG = st.from_regex(r"[a-z0-9][a-z0-9-]{0,20}", fullmatch=True)


@given(name=_NAME, slug=_SLUG)
def test_any_name_with_a_slug_round_trips(name: str, slug: str) -> None:
    got = extract("Droplets", "", f"{name} ({slug})")
    assert got == Extracted("droplet", name.strip(), "droplet_name_size")


@given(name=_NAME, region=_SLUG, size=st.integers(1, 16000))
def test_any_volume_round_trips(name: str, region: str, size: int) -> None:
    got = extract("Volumes", "", f"{name} ({region}) {size}GB")
    assert got == Extracted("volume", name.strip(), "volume_name_region_size")


@given(st.text(max_size=80), st.text(max_size=30), st.text(max_size=30))
def test_extract_never_raises(description: str, product: str, group: str) -> None:
    assert isinstance(extract(product, group, description), Extracted | NotExtracted)


@pytest.mark.parametrize(
    ("text", "tax"),
    [
        ("GST (10%)", True),
        ("State Sales Tax", True),
        ("HST", True),
        ("web-01", False),
        ("syntax-highlighter (s-1vcpu-1gb)", False),
        ("taxonomy-data", False),
    ],
)
def test_tax_rule_is_the_shared_one(text: str, tax: bool) -> None:
    assert is_tax_description(text) is tax


@pytest.mark.parametrize(
    ("description", "name"),
    [("syntax-highlighter (s-1vcpu-1gb)", "syntax-highlighter"), ("taxonomy-data (s-1vcpu-1gb)", "taxonomy-data")],
)
def test_a_tax_inside_a_name_is_a_resource_not_a_tax(description: str, name: str) -> None:
    assert extract("Droplets", "", description) == Extracted("droplet", name, "droplet_name_size")
