"""The matcher tests' inventory: one resource of every kind the matcher knows, plus a namesake in another account."""

from __future__ import annotations

import pytest

from services.matcher.domain.matching import InventoryEntry, InventoryIndex

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
