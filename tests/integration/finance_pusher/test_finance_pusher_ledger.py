"""The Postgres ledger (schema finance_pusher) against the real database."""

from __future__ import annotations

from datetime import UTC, datetime

from services.finance_pusher.ledger import Ledger
from shared.db import make_pool, migrate
from shared.settings import Settings

T0 = datetime(2026, 5, 2, 3, 4, 5, tzinfo=UTC)


def test_ledger_records_pushes_settles_revisions_and_tracks_publication(database_url: str) -> None:
    s = Settings(_env_file=None, database_url=database_url)
    assert migrate(s, ["finance_pusher"]) == {"finance_pusher": ["001_ledger.sql"]}
    assert migrate(s, ["finance_pusher"]) == {"finance_pusher": []}
    pool = make_pool(s)
    try:
        ledger = Ledger(pool)
        assert ledger.current("u1") is None
        p1 = ledger.record_push(
            invoice_uuid="u1",
            revision=1,
            payload_sha256="h1",
            idempotency_key="k1",
            finance_invoice_id="fin-1",
            action="created",
            account="acct",
            pushed_at=T0,
        )
        cur = ledger.current("u1")
        assert cur is not None
        assert (cur.state.revision, cur.state.payload_sha256) == (1, "h1")
        assert cur.last_push == p1 and p1.published_at is None

        ledger.mark_published(p1.id)
        first_published = ledger.current("u1").last_push.published_at
        assert first_published is not None
        ledger.mark_published(p1.id)  # idempotent: the first time stays
        assert ledger.current("u1").last_push.published_at == first_published

        ledger.note_revision("u1", 3)
        ledger.note_revision("u1", 2)  # never goes back
        assert ledger.current("u1").state.revision == 3

        p2 = ledger.record_push(
            invoice_uuid="u1",
            revision=4,
            payload_sha256="h4",
            idempotency_key="k4",
            finance_invoice_id="fin-1",
            action="updated",
            account="acct",
            pushed_at=T0,
        )
        cur = ledger.current("u1")
        assert (cur.state.revision, cur.state.payload_sha256, cur.last_push.id) == (4, "h4", p2.id)
        assert [p.action for p in ledger.pushes("u1")] == ["created", "updated"]
        assert ledger.pushes("other") == []
        with pool.connection() as conn:
            row = conn.execute(
                "SELECT finance_invoice_id, pushed_to_finance_at FROM finance_pusher.invoices WHERE invoice_uuid = 'u1'"
            ).fetchone()
        assert row == {"finance_invoice_id": "fin-1", "pushed_to_finance_at": T0}
    finally:
        pool.close()
