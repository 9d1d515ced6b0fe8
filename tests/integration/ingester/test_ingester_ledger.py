"""The ledger on a real PostgreSQL: reservations, re-emission, supersession, concurrency."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from services.ingester.csv_parser import parse_invoice_csv
from services.ingester.ledger import Ledger
from shared.db import make_pool, migrate
from shared.settings import Settings

CSV_A = "product,description,hours,start,end,USD\nDroplets,a (s),1,,,$1.00\nTaxes,GST (10%),,,,$0.10\n"
CSV_B = CSV_A.replace("$1.00", "$2.00")


@pytest.fixture
def ledger(database_url: str) -> Iterator[Ledger]:
    s = Settings(_env_file=None, database_url=database_url)
    assert migrate(s, ["ingester"]) == {"ingester": ["001_ledger.sql"]}
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
