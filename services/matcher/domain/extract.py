"""Name extraction: which resource (kind, name) a DigitalOcean invoice CSV row is about. Pure, no I/O.

DigitalOcean's CSV has no resource ids, only a `product`, a `group_description` and a free-text `description`
whose shape depends on the product (see the conventions' "CSV description shapes"). Every known product
has one rule here; a product we do not know is reported as `unknown_product`, never guessed, so a new
DigitalOcean product shows up as a visible gap instead of a wrong match.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from shared.tax import DEFAULT_RULE, TAX_PRODUCTS

# Kinds the poller inventories (Resource.kind) and the two the matcher knows but never finds in the inventory.
INVENTORIED_KINDS = frozenset(
    {
        "droplet",
        "volume",
        "database",
        "load_balancer",
        "kubernetes_cluster",
        "app",
        "snapshot",
        "floating_ip",
        "reserved_ip",
        "registry",
        "gpu_droplet",
    }
)
KIND_SPACES = "spaces"
KIND_TAX = "tax"

Reason = Literal["tax_line", "kind_not_inventoried", "description_not_understood", "unknown_product", "account_level"]


@dataclass(frozen=True)
class Extracted:
    """The resource a line is about. `name` None means "the only resource of that kind" (registry tiers)."""

    kind: str
    name: str | None
    rule: str


@dataclass(frozen=True)
class NotExtracted:
    """Why no resource can be named from the line; `kind` is set when the product told us that much."""

    reason: Reason
    kind: str | None = None
    detail: str = ""


Extraction = Extracted | NotExtracted

# `name (slug)` possibly followed by a size such as `100GB` / `2.5 GB` / `1TiB` (volumes, snapshots).
_SIZE_RE = re.compile(r"(?:^|\s+)\d+(?:\.\d+)?\s?[KMGTP]i?B$", re.IGNORECASE)
_IP_RE = re.compile(
    r"^(?:unused\s+)?(?:floating|reserved)\s+ips?\s*[-–:]\s*(?P<ip>[0-9a-f:.]+)$",
    re.IGNORECASE,
)
_BARE_IP_RE = re.compile(r"^(?:\d{1,3}\.){3}\d{1,3}$|^[0-9a-f:]*:[0-9a-f:]+$", re.IGNORECASE)


def is_tax_description(description: str) -> bool:
    """A tax named as a word in the description: the one rule, shared/tax.py (the parser applies it too)."""
    return DEFAULT_RULE.names_tax(description)


def split_name_and_paren(text: str) -> tuple[str, str | None]:
    """`web-01 (s-1vcpu-1gb)` → ("web-01", "s-1vcpu-1gb"); `lb-prod` → ("lb-prod", None).

    Only the LAST balanced parenthesised group is the slug, so a name that itself contains parentheses
    (`my (old) box (s-1vcpu-1gb)`) keeps them. An unbalanced text is returned whole as the name.
    """
    t = text.strip()
    if not t.endswith(")"):
        return t, None
    depth = 0
    for i in range(len(t) - 1, -1, -1):
        c = t[i]
        if c == ")":
            depth += 1
        elif c == "(":
            depth -= 1
            if depth == 0:
                name = t[:i].strip()
                if not name:
                    return t, None
                return name, t[i + 1 : -1].strip()
    return t, None


def _name_slug(description: str) -> tuple[str, str | None] | None:
    """Name before an optional `(slug)` and optional trailing size; None when nothing is left."""
    d = _SIZE_RE.sub("", description.strip())
    if not d:
        return None
    name, slug = split_name_and_paren(d)
    return (name, slug) if name else None


def _named(kind: str, description: str, rule_with_slug: str, rule_bare: str) -> Extraction:
    parsed = _name_slug(description)
    if parsed is None:
        return NotExtracted("description_not_understood", kind, "empty description")
    name, slug = parsed
    return Extracted(kind, name, rule_with_slug if slug is not None else rule_bare)


def _droplet(group: str, description: str) -> Extraction:
    if group:  # Kubernetes worker nodes are Droplets rows whose group is the cluster name.
        return Extracted("kubernetes_cluster", group, "kubernetes_node_group")
    return _named("droplet", description, "droplet_name_size", "droplet_name")


def _kubernetes(group: str, description: str) -> Extraction:
    if group:
        return Extracted("kubernetes_cluster", group, "kubernetes_cluster_group")
    # Without the group the description is a hash or `HA control plane`: it names no cluster.
    return NotExtracted("description_not_understood", "kubernetes_cluster", "no cluster name in group_description")


def _ip(kind: str, description: str) -> Extraction:
    d = description.strip()
    m = _IP_RE.match(d)
    if m:
        return Extracted(kind, m.group("ip"), f"{kind}_address")
    if _BARE_IP_RE.match(d):
        return Extracted(kind, d, f"{kind}_address")
    return NotExtracted("description_not_understood", kind, "no IP address in description")


def _registry(description: str) -> Extraction:
    # The description is the subscription tier (`basic`, `professional`), not the registry's name; an
    # account has at most one registry, so the matcher looks for "the" registry.
    return Extracted("registry", None, "registry_of_account")


def _spaces(_group: str, _description: str) -> Extraction:
    return NotExtracted(
        "kind_not_inventoried",
        KIND_SPACES,
        "Spaces buckets are listed only through the S3-compatible API (needs Spaces keys), not the v2 REST API",
    )


def _gpu_droplet(group: str, description: str) -> Extraction:
    return _named("gpu_droplet", description, "gpu_droplet_name_size", "gpu_droplet_name")


def _not_inventoried(kind: str, why: str) -> Callable[[str, str], Extraction]:
    return lambda _g, _d: NotExtracted("kind_not_inventoried", kind, why)


def _account_level(kind: str, why: str) -> Callable[[str, str], Extraction]:
    return lambda _g, _d: NotExtracted("account_level", kind, why)


def _product_key(product: str) -> str:
    return " ".join(product.strip().lower().split())


# product (normalised) -> rule(group_description, description)
_RULES = {
    "droplets": _droplet,
    "droplet": _droplet,
    "kubernetes clusters": _kubernetes,
    "kubernetes": _kubernetes,
    "volumes": lambda g, d: _named("volume", d, "volume_name_region_size", "volume_name"),
    "managed databases": lambda g, d: _named("database", d, "database_name_size", "database_name"),
    "databases": lambda g, d: _named("database", d, "database_name_size", "database_name"),
    "load balancers": lambda g, d: _named("load_balancer", d, "load_balancer_name_size", "load_balancer_name"),
    "app platform": lambda g, d: _named("app", d, "app_name_tier", "app_name"),
    "apps": lambda g, d: _named("app", d, "app_name_tier", "app_name"),
    "snapshots": lambda g, d: _named("snapshot", d, "snapshot_name_region_size", "snapshot_name"),
    "droplet snapshots": lambda g, d: _named("snapshot", d, "snapshot_name_region_size", "snapshot_name"),
    "volume snapshots": lambda g, d: _named("snapshot", d, "snapshot_name_region_size", "snapshot_name"),
    "backups": lambda g, d: _named("droplet", d, "backup_of_droplet", "backup_of_droplet"),
    "droplet backups": lambda g, d: _named("droplet", d, "backup_of_droplet", "backup_of_droplet"),
    "database clusters": lambda g, d: _named("database", d, "database_name_size", "database_name"),
    "gpu droplets": _gpu_droplet,
    "kubernetes node pools": _kubernetes,
    "floating ips": lambda g, d: _ip("floating_ip", d),
    "reserved ips": lambda g, d: _ip("reserved_ip", d),
    "container registry": lambda g, d: _registry(d),
    "spaces subscription": _spaces,
    "spaces": _spaces,
    "functions": _not_inventoried("function", "Functions namespaces are not inventoried (the line names no resource)"),
    "monitoring": _account_level("monitoring", "Monitoring alerts are billed to the account, not to a resource"),
    "uptime": _not_inventoried("uptime_check", "Uptime checks are not inventoried (/v2/uptime/checks is not listed)"),
    "uptime checks": _not_inventoried("uptime_check", "Uptime checks are not inventoried (/v2/uptime/checks)"),
    "bandwidth": _account_level("bandwidth", "Outbound transfer overage is pooled per account"),
    "outbound data transfer": _account_level("bandwidth", "Outbound transfer overage is pooled per account"),
    "credits": _account_level("credit", "A credit applies to the account"),
    "credit": _account_level("credit", "A credit applies to the account"),
    "promo credit": _account_level("credit", "A credit applies to the account"),
}


def known_products() -> frozenset[str]:
    return frozenset(_RULES) | {"taxes"}


def extract(product: str, group_description: str, description: str, *, is_tax: bool | None = None) -> Extraction:
    """(product, group_description, description) → the resource the row is about, or why there is none.

    Tax or not is the one rule of shared/tax.py: a cost line carries the ingester's decision (`is_tax`, made
    with the configured tax names), which the matcher follows so its reason and the invoice's tax total never
    disagree; without it the rule is applied here with the default names.
    """
    group = (group_description or "").strip()
    desc = (description or "").strip()
    key = _product_key(product or "")
    tax = is_tax if is_tax is not None else DEFAULT_RULE.is_tax(product or "", desc)
    if tax or key in TAX_PRODUCTS:
        return NotExtracted("tax_line", KIND_TAX)
    rule = _RULES.get(key)
    if rule is None:
        return NotExtracted("unknown_product", None, f"product {product!r} is not known to the matcher")
    return rule(group, desc)
