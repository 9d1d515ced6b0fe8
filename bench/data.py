"""Realistic bench payloads: a cost-line event as it travels the topics, and read-model rows for COPY.

The ceilings move the same bytes and rows the pipeline moves, so the ratio between the two is meaningful.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime
from typing import Any

from shared.events import CostLine, CostLineMatched, encode

KINDS = ("droplet", "volume", "database", "load_balancer", "kubernetes_cluster", "app", "snapshot", "reserved_ip")
KIND_WEIGHTS = (45, 15, 8, 8, 5, 7, 7, 5)

# readmodel.cost_lines columns written by COPY (the API load and the COPY ceiling).
COST_LINE_COLUMNS = (
    "invoice_uuid",
    "revision",
    "line_index",
    "account",
    "current",
    "period",
    "product",
    "group_description",
    "description",
    "hours",
    "start_at",
    "end_at",
    "amount_minor",
    "currency",
    "project_name",
    "category",
    "is_tax",
    "kind",
    "name",
    "resource_id",
    "resource_key",
    "rule",
    "unmatched_reason",
    "event_id",
)


def line_event(invoice_uuid: str = "00000000-0000-4000-8000-000000000001", index: int = 7) -> bytes:
    """One matched cost line, encoded as on billing.cost-lines-matched.v1 (about 650 bytes)."""
    line = CostLine(
        invoice_uuid=invoice_uuid,
        revision=1,
        line_index=index,
        product="Droplets",
        description=f"node-{index:05d} (s-1vcpu-1gb)",
        hours=720,
        start=datetime(2026, 4, 1, tzinfo=UTC),
        end=datetime(2026, 5, 1, tzinfo=UTC),
        amount_minor=1234,
        project_name="Default",
        category="iaas",
        is_tax=False,
    )
    m = CostLineMatched(
        line=line,
        kind="droplet",
        name=f"node-{index:05d}",
        resource_id=str(300_000_000 + index),
        resource_key=f"bench:droplet:{300_000_000 + index}",
        rule="droplet_name",
    )
    return encode(m, "bench", datetime(2026, 5, 1, tzinfo=UTC))


def periods(n: int, last: date = date(2026, 4, 1)) -> list[date]:
    """`n` consecutive billing periods ending at `last`, oldest first."""
    out, y, m = [], last.year, last.month
    for _ in range(n):
        out.append(date(y, m, 1))
        y, m = (y, m - 1) if m > 1 else (y - 1, 12)
    return out[::-1]


def cost_line_rows(
    total: int, *, n_periods: int = 24, lines_per_invoice: int = 500, seed: int = 1
) -> Iterator[tuple[Any, ...]]:
    """`total` served cost lines spread over `n_periods` periods, in COST_LINE_COLUMNS order."""
    rng = random.Random(seed)
    months = periods(n_periods)
    start, end = datetime(2026, 4, 1, tzinfo=UTC), datetime(2026, 5, 1, tzinfo=UTC)
    invoice = ""
    for i in range(total):
        index = i % lines_per_invoice
        if index == 0:
            invoice = str(uuid.UUID(int=rng.getrandbits(128), version=4))
            period = months[(i // lines_per_invoice) % n_periods]
        kind = rng.choices(KINDS, KIND_WEIGHTS)[0]
        matched = rng.random() < 0.5
        rid = str(rng.randrange(10**9)) if matched else None
        row: tuple[Any, ...] = (
            invoice,
            1,
            index,
            "bench",
            True,
            period,
            "Droplets",
            "",
            f"{kind}-{index:05d} (s-1vcpu-1gb)",
            720,
            start,
            end,
            rng.randint(1, 6000),
            "USD",
            "Default",
            "iaas",
            False,
            kind,
            f"{kind}-{index:05d}",
            rid,
            f"bench:{kind}:{rid}" if matched else None,
            f"{kind}_name" if matched else None,
            None if matched else "no_such_resource",
            f"{invoice}:{index}",
        )
        yield row
