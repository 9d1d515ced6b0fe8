"""Every product DigitalOcean bills has a rule or a documented reason (docs/architecture.md, "Products").

One case per row of the docs' table, with the product's real description shape; and the table itself is checked
against the matcher's rules, so neither can gain a product the other lacks.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from services.matcher.domain.extract import Extracted, NotExtracted, extract, known_products

DOCS = Path(__file__).resolve().parents[3] / "docs" / "architecture.md"

# (product, group_description, description) → (kind, name) extracted, or (reason, kind) not.
CASES: list[tuple[str, str, str, tuple[str, str | None] | tuple[str, str | None, str]]] = [
    ("Droplets", "", "web-01 (s-1vcpu-1gb)", ("droplet", "web-01")),
    ("GPU Droplets", "", "ml-train-gpu-01 (gpu-h100x1-80gb)", ("gpu_droplet", "ml-train-gpu-01")),
    ("Volumes", "", "volume-sfo2-01 (sfo2) 100GB", ("volume", "volume-sfo2-01")),
    ("Snapshots", "", "web-01-1712000000 (syd1) 1.5GB", ("snapshot", "web-01-1712000000")),
    ("Volume Snapshots", "", "pgdata-1712000000 (syd1) 50GB", ("snapshot", "pgdata-1712000000")),
    ("Backups", "", "web-01 (s-1vcpu-1gb)", ("droplet", "web-01")),
    ("Droplets", "k8s-prod", "k8s-prod-pool-abc12 (s-2vcpu-4gb)", ("kubernetes_cluster", "k8s-prod")),
    ("Kubernetes Clusters", "k8s-prod", "HA control plane", ("kubernetes_cluster", "k8s-prod")),
    ("Kubernetes Node Pools", "k8s-prod", "2f0c9a1e7b", ("kubernetes_cluster", "k8s-prod")),
    ("Load Balancers", "", "lb-prod (lb-small)", ("load_balancer", "lb-prod")),
    ("Managed Databases", "", "db-postgresql-syd1-11111 (db-s-1vcpu-1gb)", ("database", "db-postgresql-syd1-11111")),
    ("Database Clusters", "", "db-mysql-nyc3-22222 (db-s-2vcpu-4gb)", ("database", "db-mysql-nyc3-22222")),
    ("App Platform", "", "my-app (professional-xs)", ("app", "my-app")),
    ("Container Registry", "", "professional", ("registry", None)),
    ("Floating IPs", "", "Unused Floating IP - 1.1.1.1", ("floating_ip", "1.1.1.1")),
    ("Reserved IPs", "", "Unused Reserved IP - 170.64.130.21", ("reserved_ip", "170.64.130.21")),
    ("Spaces Subscription", "", "Spaces Subscription", ("kind_not_inventoried", "spaces", "S3")),
    ("Spaces", "", "Spaces (sgp1) 250GB", ("kind_not_inventoried", "spaces", "S3")),
    ("Functions", "", "fn-namespace-syd1 (GB-seconds)", ("kind_not_inventoried", "function", "namespaces")),
    ("Monitoring", "", "Monitoring alert policies", ("account_level", "monitoring", "account")),
    ("Uptime", "", "Uptime checks", ("kind_not_inventoried", "uptime_check", "Uptime")),
    ("Bandwidth", "", "Outbound transfer overage 120GB", ("account_level", "bandwidth", "pooled")),
    ("Credits", "", "Promo credit", ("account_level", "credit", "credit")),
    ("Taxes", "", "GST (10%)", ("tax_line", "tax", "")),
]


@pytest.mark.parametrize(("product", "group", "description", "expected"), CASES)
def test_every_product_has_a_rule_or_a_reason(product: str, group: str, description: str, expected: tuple) -> None:
    got = extract(product, group, description)
    if isinstance(got, Extracted):
        assert (got.kind, got.name) == expected
    else:
        assert isinstance(got, NotExtracted)
        reason, kind, why = expected
        assert (got.reason, got.kind) == (reason, kind)
        assert why in got.detail


def _documented_products() -> set[str]:
    text = DOCS.read_text()
    section = text.split("### Products", 1)[1].split("\n### ", 1)[0]
    rows = [r for r in section.splitlines() if r.startswith("| ") and not r.startswith("| product")]
    names: set[str] = set()
    for r in rows:
        first = r.split("|")[1]
        names |= {" ".join(p.lower().split()) for p in re.findall(r"`([^`]+)`", first)}
    return names


def test_the_docs_table_names_exactly_the_products_the_matcher_knows() -> None:
    assert _documented_products() == set(known_products())
