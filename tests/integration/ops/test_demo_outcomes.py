"""What `cloudbill demo` waits for: every discovered invoice pushed, held or dead-lettered (read models)."""

from __future__ import annotations

from cloudbill.status import invoice_outcomes
from services.projector.domain import to_change
from services.projector.store import ReadModelWriter
from shared.db import connect, migrate
from shared.kafka import deadletter as dl
from shared.kafka.records import Record
from shared.topics import COST_LINES, INVOICE_COMPLETED, INVOICE_DISCOVERED, INVOICE_PUSHED
from tests import factories as f

P = "o."


def _apply(database_url: str, records: list[Record]) -> None:
    changes = [ch for r in records if (ch := to_change(r, P)) is not None]
    with connect(database_url, autocommit=True) as conn, conn.transaction():
        ReadModelWriter(conn).apply(changes)


def test_outcomes_pushed_dead_lettered_pending(database_url: str) -> None:
    assert invoice_outcomes(database_url) == {"pushed": [], "held": [], "dead_lettered": [], "pending": []}  # no schema
    migrate(database_url, ["readmodel"])
    lines = [f.cost_line(0, invoice_uuid="inv-pushed", billed=True)]
    poison = Record(
        f"{INVOICE_DISCOVERED.name(P)}.dlq",
        0,
        0,
        "inv-poison",
        b"not json",
        headers={
            dl.H_TOPIC: INVOICE_DISCOVERED.name(P).encode(),
            dl.H_PARTITION: b"0",
            dl.H_OFFSET: b"7",
            dl.H_ERROR_CLASS: b"ValueError",
            dl.H_ERROR_MESSAGE: b"bad csv",
            dl.H_SERVICE: b"ingester",
        },
    )
    seen = {"invoice_id": "42", "description": "Invoice", "amount_minor": 1000}
    events = [  # (topic, key, data) at offsets 0, 1, 2...
        (INVOICE_DISCOVERED, "inv-pushed", f.invoice_discovered(invoice_uuid="inv-pushed", **seen)),
        (
            COST_LINES,
            "inv-pushed",
            f.invoice_end(lines, invoice_uuid="inv-pushed", invoice_id="42", csv_sha256="sha-1"),
        ),
        (
            INVOICE_COMPLETED,
            "inv-pushed",
            f.invoice_completed(lines, invoice_uuid="inv-pushed", invoice_id="42", matched_count=1),
        ),
        (INVOICE_PUSHED, "inv-pushed", f.invoice_pushed(invoice_uuid="inv-pushed", revision=1)),
        (INVOICE_DISCOVERED, "inv-poison", f.invoice_discovered(invoice_uuid="inv-poison", **seen)),
        (INVOICE_DISCOVERED, "inv-waiting", f.invoice_discovered(invoice_uuid="inv-waiting", **seen)),
        (INVOICE_DISCOVERED, "inv-held", f.invoice_discovered(invoice_uuid="inv-held", **seen)),
        (COST_LINES, "inv-held", f.invoice_end(lines, invoice_uuid="inv-held", invoice_id="42", csv_sha256="sha-1")),
        (
            INVOICE_COMPLETED,
            "inv-held",
            f.invoice_completed(lines, invoice_uuid="inv-held", invoice_id="42", matched_count=1),
        ),
    ]
    records = [
        f.event_record(data, account=f.ACCOUNT, topic=topic.name(P), key=key, offset=i)
        for i, (topic, key, data) in enumerate(events)
    ]
    _apply(database_url, [*records, poison])
    with connect(database_url, autocommit=True) as conn:  # what the money gates record for an unproven revision
        conn.execute("UPDATE readmodel.invoices SET held = true WHERE invoice_uuid = 'inv-held'")
    assert invoice_outcomes(database_url) == {
        "pushed": ["inv-pushed"],
        "held": ["inv-held"],
        "dead_lettered": ["inv-poison"],
        "pending": ["inv-waiting"],
    }
