"""The Postgres ledger (schema finance_pusher) against the real database."""

from __future__ import annotations

from datetime import UTC, datetime

from services.finance_pusher.ledger import Ledger
from shared.db import make_pool, migrate
from shared.settings import Settings

T0 = datetime(2026, 5, 2, 3, 4, 5, tzinfo=UTC)


def test_ledger_records_pushes_settles_revisions_and_tracks_publication(database_url: str) -> None:
    s = Settings(_env_file=None, database_url=database_url)
    assert migrate(s, ["finance_pusher"]) == {"finance_pusher": ["001_ledger.sql", "002_money_gates.sql"]}
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


def test_holds_are_kept_whole_and_released_once(database_url: str) -> None:
    migrate(database_url, ["finance_pusher"])
    pool = make_pool(Settings(_env_file=None, database_url=database_url))
    try:
        ledger = Ledger(pool)
        completion = {"invoice_uuid": "u1", "revision": 2, "amount_gross_minor": 2733}
        assert ledger.record_hold(invoice_uuid="u1", revision=2, account="acct", completion=completion, reason="short")
        assert not ledger.record_hold(invoice_uuid="u1", revision=2, account="acct", completion={}, reason="again")
        hold = ledger.hold("u1", 2)
        assert hold is not None and (hold.completion, hold.reason, hold.released_at) == (completion, "short", None)
        assert ledger.latest_revision("u1") == 2 and ledger.latest_revision("nope") is None
        ledger.mark_released("u1", 2, released_by="ops", reason="credit note", released_at=T0)
        ledger.mark_released("u1", 2, released_by="someone-else", reason="again", released_at=T0)
        hold = ledger.hold("u1", 2)
        assert hold is not None and (hold.released_by, hold.release_reason, hold.released_at) == (
            "ops",
            "credit note",
            T0,
        )
        ledger.record_push(
            invoice_uuid="u1",
            revision=3,
            payload_sha256="h3",
            idempotency_key="k3",
            finance_invoice_id="fin-1",
            action="created",
            account="acct",
            pushed_at=T0,
        )
        assert ledger.latest_revision("u1") == 3
        assert [h.revision for h in ledger.holds("u1")] == [2]
    finally:
        pool.close()


def test_the_sender_id_is_one_per_ledger(database_url: str, postgres_server: str) -> None:
    """Stable for a ledger (a crash re-push reuses its keys), different for another deployment's ledger."""
    import uuid

    import psycopg

    from shared.devinfra import url_with_database

    other = f"sender_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(postgres_server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{other}"')
    ids = []
    for url in (database_url, database_url, url_with_database(postgres_server, other)):
        migrate(url, ["finance_pusher"])
        pool = make_pool(Settings(_env_file=None, database_url=url))
        try:
            ids.append(Ledger(pool).sender_id())
        finally:
            pool.close()
    assert ids[0] == ids[1] != ids[2] and len(ids[0]) == 32
