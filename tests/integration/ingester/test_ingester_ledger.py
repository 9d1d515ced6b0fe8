"""The ledger on a real PostgreSQL: reservations, re-emission, supersession, concurrency."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from services.ingester.csv_parser import parse_invoice_csv
from services.ingester.domain import RefetchPolicy
from services.ingester.ledger import Ledger
from shared.db import make_pool, migrate
from shared.settings import Settings
from tests.factories import invoice_discovered

CSV_A = "product,description,hours,start,end,USD\nDroplets,a (s),1,,,$1.00\nTaxes,GST (10%),,,,$0.10\n"
CSV_B = CSV_A.replace("$1.00", "$2.00")


@pytest.fixture
def ledger(database_url: str) -> Iterator[Ledger]:
    s = Settings(_env_file=None, database_url=database_url)
    assert migrate(s, ["ingester"]) == {
        "ingester": ["001_ledger.sql", "002_money_gates.sql", "003_commit_verification.sql"]
    }
    assert migrate(s, ["ingester"]) == {"ingester": []}  # idempotent
    pool = make_pool(s, name="ledger-test")
    try:
        yield Ledger(pool)
    finally:
        pool.close()


def test_reserve_reemit_commit_skip(ledger: Ledger) -> None:
    a = parse_invoice_csv(CSV_A)
    d1, t1 = ledger.reserve("inv", "acct", a)
    assert (d1.action, d1.revision) == ("new", 1)
    d2, t2 = ledger.reserve("inv", "acct", a)  # redelivered before the commit was confirmed
    assert (d2.action, d2.revision) == ("reemit", 1)
    assert t1 == t2  # same occurred_at: a byte-identical re-emission
    assert ledger.mark_committed("inv", 1) is True
    assert ledger.mark_committed("inv", 1) is False
    d3, t3 = ledger.reserve("inv", "acct", a)
    assert (d3.action, d3.revision, t3) == ("skip", 1, None)
    [row] = ledger.revisions("inv")
    assert (row["state"], row["line_count"], row["amount_net_minor"], row["amount_tax_minor"]) == (
        "committed",
        2,
        100,
        10,
    )
    assert row["amount_gross_minor"] == 110 and row["csv_sha256"] == a.csv_sha256 and row["account"] == "acct"


def test_new_content_supersedes_an_unconfirmed_revision_without_reusing_its_number(ledger: Ledger) -> None:
    ledger.reserve("inv", "acct", parse_invoice_csv(CSV_A))
    d, _ = ledger.reserve("inv", "acct", parse_invoice_csv(CSV_B))
    assert (d.action, d.revision, d.supersede) == ("new", 2, 1)
    assert [(r["revision"], r["state"]) for r in ledger.revisions("inv")] == [(1, "superseded"), (2, "pending")]
    ledger.mark_committed("inv", 2)
    d, _ = ledger.reserve("inv", "acct", parse_invoice_csv(CSV_A))  # A → B → A: a new revision
    assert (d.action, d.revision) == ("new", 3)


def test_concurrent_reservations_of_the_same_content_take_one_revision(ledger: Ledger) -> None:
    a = parse_invoice_csv(CSV_A)
    with ThreadPoolExecutor(4) as ex:
        results = list(ex.map(lambda _: ledger.reserve("inv", "acct", a)[0], range(8)))
    assert {r.revision for r in results} == {1}
    assert sorted(r.action for r in results) == ["new"] + ["reemit"] * 7
    assert len(ledger.revisions("inv")) == 1


# ------------------------------------------------------------------------------------------- money gates
DISCOVERED = {
    "invoice_id": None,
    "amount_minor": 110,
    "listed_amount_minor": 110,
    "date": datetime(2026, 5, 1, tzinfo=UTC),
}
POLICY = RefetchPolicy(initial_s=0.2, max_s=60, max_attempts=2)


def test_evidence_is_part_of_the_content(ledger: Ledger) -> None:
    a = parse_invoice_csv(CSV_A)
    ledger.reserve("inv", "acct", a, "ev-short", "mismatch")
    ledger.mark_committed("inv", 1)
    assert ledger.reserve("inv", "acct", a, "ev-short", "mismatch")[0].action == "skip"
    d, _ = ledger.reserve("inv", "acct", a, "ev-whole", "matched")  # DigitalOcean corrected its amount
    assert (d.action, d.revision) == ("new", 2)
    assert [r["reconciliation_status"] for r in ledger.revisions("inv")] == ["mismatch", "matched"]


def test_a_hold_is_scheduled_leased_counted_and_cleared(ledger: Ledger) -> None:
    ledger.remember("acct", invoice_discovered(invoice_uuid="inv", **DISCOVERED))
    assert ledger.last_discovery("inv") == ("acct", invoice_discovered(invoice_uuid="inv", **DISCOVERED))
    assert ledger.settle("inv", "unchanged", revision=1, reason="", policy=POLICY) is None  # not held: nothing
    hold = ledger.settle("inv", "held", revision=1, reason="short by 10", policy=POLICY)
    assert hold is not None and (hold.revision, hold.attempts, hold.reason) == (1, 0, "short by 10")
    assert ledger.claim_due_refetches(POLICY) == []  # not due yet
    time.sleep(0.3)
    assert ledger.claim_due_refetches(POLICY) == [("inv", "acct", 1)]
    assert ledger.claim_due_refetches(POLICY) == []  # leased: a second replica does not ask again
    hold = ledger.settle("inv", "unchanged", revision=1, reason="", policy=POLICY)
    assert hold is not None and hold.attempts == 1 and hold.next_at is not None
    hold = ledger.settle("inv", "rejected", revision=None, reason="cut mid-row", policy=POLICY)
    assert hold is not None and (hold.attempts, hold.next_at, hold.reason) == (2, None, "short by 10")  # max: admin
    assert ledger.settle("inv", "reconciled", revision=2, reason="", policy=POLICY) is None
    assert ledger.hold("inv") is None


def test_concurrent_claims_hand_each_due_hold_to_one_caller(ledger: Ledger) -> None:
    for i in range(6):
        ledger.remember("acct", invoice_discovered(invoice_uuid=f"inv-{i}", **DISCOVERED))
        ledger.settle(f"inv-{i}", "held", revision=1, reason="short", policy=POLICY)
    time.sleep(0.3)
    with ThreadPoolExecutor(3) as ex:
        claimed = [
            c for batch in ex.map(lambda _: ledger.claim_due_refetches(POLICY, limit=2), range(6)) for c in batch
        ]
    assert sorted(u for u, _, _ in claimed) == [f"inv-{i}" for i in range(6)]


# ---------------------------------------------------------------------------------- commit verification
LEASE = timedelta(minutes=5)


def _committed(ledger: Ledger, uuid: str, csv: str = CSV_A) -> int:
    d, _ = ledger.reserve(uuid, "acct", parse_invoice_csv(csv))
    assert ledger.mark_committed(uuid, d.revision)
    return d.revision


def test_a_committed_revision_unseen_past_a_checkpoint_is_claimed_once_per_emission(ledger: Ledger) -> None:
    rev = _committed(ledger, "lost")
    checkpoint = ledger.now()
    assert ledger.claim_unreadable(checkpoint, max_reemits=3, lease=LEASE) == [("lost", "acct", rev, 1)]
    assert ledger.claim_unreadable(checkpoint, max_reemits=3, lease=LEASE) == []  # leased: asked once
    # The re-emission: the handler reserves it again (same revision) and its commit is marked.
    d, _ = ledger.reserve("lost", "acct", parse_invoice_csv(CSV_A), reemit_unverified=rev)
    assert (d.action, d.revision) == ("reemit", rev)
    assert ledger.mark_committed("lost", rev) is True
    assert ledger.mark_committed("lost", rev) is False  # once per re-emission
    # Judged again only by a checkpoint taken after the new emission.
    assert ledger.claim_unreadable(checkpoint, max_reemits=3, lease=LEASE) == []
    later = ledger.now()
    assert ledger.claim_unreadable(later, max_reemits=3, lease=LEASE) == [("lost", "acct", rev, 2)]
    [row] = ledger.unverified()
    assert (row["invoice_uuid"], row["revision"], row["reemits"]) == ("lost", rev, 2)


def test_re_emissions_stop_at_the_maximum_and_the_revision_stays_visible(ledger: Ledger) -> None:
    rev = _committed(ledger, "gone")
    for n in (1, 2):
        assert ledger.claim_unreadable(ledger.now(), max_reemits=2, lease=timedelta(0)) == [("gone", "acct", rev, n)]
    assert ledger.claim_unreadable(ledger.now(), max_reemits=2, lease=timedelta(0)) == []
    assert [(u["invoice_uuid"], u["reemits"]) for u in ledger.unverified(ledger.now())] == [("gone", 2)]


def test_only_the_latest_revision_is_re_emitted_and_a_verified_one_is_skipped(ledger: Ledger) -> None:
    _committed(ledger, "inv", CSV_A)
    rev2 = _committed(ledger, "inv", CSV_B)  # replaces revision 1 downstream
    ledger.verified({("inv", rev2)}, "t", {0: 10})
    assert ledger.claim_unreadable(ledger.now(), max_reemits=5, lease=LEASE) == []
    assert ledger.unverified() == []  # revision 1 was never seen, but revision 2 replaced it: nothing to show
    # A verified revision asked for again (a stale request) is skipped, not re-emitted.
    d, _ = ledger.reserve("inv", "acct", parse_invoice_csv(CSV_B), reemit_unverified=rev2)
    assert (d.action, d.revision) == ("skip", rev2)


def test_a_pending_revision_seen_on_the_topic_is_committed_and_positions_only_move_forward(ledger: Ledger) -> None:
    d, _ = ledger.reserve("crashed", "acct", parse_invoice_csv(CSV_A))  # committed in Kafka, not marked (crash)
    assert ledger.verified({("crashed", d.revision), ("unknown", 1)}, "cost-lines", {0: 120, 1: 40}) == 1
    [row] = ledger.revisions("crashed")
    assert row["state"] == "committed" and row["verified_at"] is not None and row["committed_at"] is not None
    assert ledger.verified(set(), "cost-lines", {0: 100, 1: 55, 2: 7}) == 0  # another replica, behind on 0
    assert ledger.read_to("cost-lines") == {0: 120, 1: 55, 2: 7}
    assert ledger.read_to("other") == {}
    assert ledger.unverified() == []


def test_revisions_committed_before_verification_existed_count_as_verified(database_url: str) -> None:
    s = Settings(_env_file=None, database_url=database_url)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA ingester")
        conn.execute(
            "CREATE TABLE ingester.schema_migrations (name text PRIMARY KEY, sha256 text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
    migrate_only = ("001_ledger.sql", "002_money_gates.sql")
    folder = Path(__file__).parents[3] / "services" / "ingester" / "migrations"
    with psycopg.connect(database_url, autocommit=True) as conn:
        for name in migrate_only:
            conn.execute("SET search_path TO ingester, public")
            conn.execute((folder / name).read_text())
            conn.execute(
                "INSERT INTO ingester.schema_migrations (name, sha256) VALUES (%s, %s)",
                (name, hashlib.sha256((folder / name).read_bytes()).hexdigest()),
            )
        conn.execute(
            "INSERT INTO ingester.invoice_revisions (invoice_uuid, revision, account, csv_sha256, parser_version,"
            " line_count, currency, amount_net_minor, amount_tax_minor, amount_gross_minor, state, reserved_at,"
            " committed_at) VALUES ('old', 1, 'acct', 'x', 'v', 1, 'USD', 100, 10, 110, 'committed', now(), now()),"
            " ('half', 1, 'acct', 'y', 'v', 1, 'USD', 100, 10, 110, 'pending', now(), NULL)"
        )
    assert migrate(s, ["ingester"]) == {"ingester": ["003_commit_verification.sql"]}
    pool = make_pool(s, name="ledger-upgrade")
    try:
        ledger = Ledger(pool)
        assert ledger.unverified() == []
        assert ledger.claim_unreadable(ledger.now(), max_reemits=5, lease=LEASE) == []
        assert ledger.revisions("half")[0]["verified_at"] is None  # its commit is not known: judged when seen
    finally:
        pool.close()
