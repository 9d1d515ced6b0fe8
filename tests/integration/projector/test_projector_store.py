"""The invoice status order as the store applies it on a real PostgreSQL: (revision, rank) only ever grows."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest

from services.projector.domain import RANK, Change, to_change
from services.projector.store import ReadModelWriter
from shared.db import connect, migrate
from shared.events import EventData
from shared.topics import COST_LINES, INVOICE_COMPLETED, INVOICE_PUSHED, Topic
from tests import factories as f

P = "s."
U = "inv-status"


@pytest.fixture
def conn(database_url: str) -> Iterator[psycopg.Connection]:
    migrate(database_url, ["readmodel"])
    with connect(database_url, autocommit=True) as c:
        yield c


def status_after(conn: psycopg.Connection, topic: Topic, data: EventData) -> tuple[int, int]:
    """Apply one record's change in its own transaction; the invoice's (status_revision, status_rank) after it."""
    ch: Change | None = to_change(f.event_record(data, account=f.ACCOUNT, topic=topic.name(P), key=U), P)
    assert ch is not None
    with conn.transaction():
        ReadModelWriter(conn).apply([ch])
    row = conn.execute("SELECT status_revision, status_rank FROM readmodel.invoices WHERE invoice_uuid = %s", (U,))
    got = row.fetchone()
    assert got is not None
    return got["status_revision"], got["status_rank"]


def test_status_order_never_goes_backwards(conn: psycopg.Connection) -> None:
    lines = [f.cost_line(0, 100, invoice_uuid=U, billed=True)]
    assert status_after(conn, INVOICE_PUSHED, f.invoice_pushed(invoice_uuid=U, revision=1)) == (1, RANK["pushed"])
    # A completion of the pushed revision, read late: the status stays "pushed".
    assert status_after(conn, INVOICE_COMPLETED, f.invoice_completed(lines, invoice_uuid=U, revision=1)) == (1, 4)
    # A new revision starts again at "ingested".
    assert status_after(conn, COST_LINES, f.invoice_end(lines, invoice_uuid=U, revision=2)) == (2, 1)
