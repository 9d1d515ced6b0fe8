"""The ledger on a real PostgreSQL: reservations, re-emission, supersession, concurrency."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

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
    assert migrate(s, ["ingester"]) == {"ingester": ["001_ledger.sql", "002_money_gates.sql"]}
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
