"""The read-model writer on a real PostgreSQL: revisions replacing line sets, out-of-order topics, poison rows,
and the cost-lines query using its index at a million rows."""

from __future__ import annotations

import itertools
import random
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from services.api.queries import ReadModelRepository, cost_lines_sql
from services.projector.domain import Change, to_change
from services.projector.main import Projector
from services.projector.store import ReadModelWriter
from shared.db import connect, migrate
from shared.events import BillingHistoryEntry, EventData
from shared.kafka import StopSignal
from shared.settings import Settings
from shared.topics import (
    COST_LINES,
    COST_LINES_MATCHED,
    HISTORY,
    INVOICE_COMPLETED,
    INVOICE_DISCOVERED,
    INVOICE_PUSHED,
)
from tests import factories as f
from tests.helpers import dump

P = "s."
U = "inv-1"
SEEN = {"invoice_id": "42", "description": "Invoice"}  # the invoice as the poller saw it


def change(topic, data: EventData, offset: int = 0) -> Change:
    ch = to_change(f.event_record(data, account=f.ACCOUNT, topic=topic.name(P), key=U, offset=offset), P)
    assert ch is not None
    return ch


@pytest.fixture
def conn(database_url: str):
    migrate(database_url, ["readmodel"])
    with connect(database_url, autocommit=True) as c:
        yield c


def apply(conn: psycopg.Connection, *changes: Change) -> None:
    with conn.transaction():
        ReadModelWriter(conn).apply(list(changes))


def reset(conn: psycopg.Connection) -> None:
    conn.execute(
        "TRUNCATE readmodel.invoices, readmodel.cost_lines, readmodel.balance_snapshots, readmodel.history_entries,"
        " readmodel.resources, readmodel.dead_letters, readmodel.invoice_actions"
    )


def served(conn: psycopg.Connection, kind: str | None = None) -> list[tuple[int, int]]:
    rows = conn.execute(
        cost_lines_sql(kind),
        {"period": f.PERIOD, "kind": kind, "after_uuid": "", "after_index": -1, "limit": 1000},
    ).fetchall()
    return [(r["revision"], r["line_index"]) for r in rows]


def invoice(conn: psycopg.Connection) -> dict[str, Any]:
    return conn.execute("SELECT * FROM readmodel.invoices WHERE invoice_uuid = %s", (U,)).fetchone()


def revision_events(revision: int, n: int) -> dict[str, list[Change]]:
    lines = [f.cost_line(i, 100 * revision, invoice_uuid=U, revision=revision, billed=True) for i in range(n - 1)] + [
        f.cost_line(n - 1, 10, invoice_uuid=U, revision=revision, is_tax=True, billed=True)
    ]
    return {
        "end": [
            change(
                COST_LINES,
                f.invoice_end(lines, invoice_uuid=U, revision=revision, invoice_id="42", csv_sha256=f"sha-{revision}"),
            )
        ],
        "lines": [
            change(COST_LINES_MATCHED, f.cost_line_matched(x, str(x.line_index) if x.line_index < 2 else None))
            for x in lines
        ],
        "completed": [
            change(
                INVOICE_COMPLETED,
                f.invoice_completed(lines, invoice_uuid=U, revision=revision, invoice_id="42", matched_count=2),
            )
        ],
    }


def test_a_new_revision_replaces_the_line_set_only_at_its_completion(conn: psycopg.Connection) -> None:
    r1, r2 = revision_events(1, 4), revision_events(2, 3)
    apply(
        conn,
        change(
            INVOICE_DISCOVERED,
            f.invoice_discovered(invoice_uuid=U, **SEEN, amount_minor=1000),
        ),
        *r1["end"],
        *r1["lines"],
    )
    assert served(conn) == []  # nothing served before a completion
    assert invoice(conn)["status_rank"] == 2  # every line in: matched
    apply(conn, *r1["completed"])
    assert served(conn) == [(1, i) for i in range(4)]
    assert invoice(conn)["lines_count"] == 4 and invoice(conn)["amount_gross_minor"] == 310

    apply(conn, *r2["end"], *r2["lines"][:2])
    inv = invoice(conn)
    assert served(conn) == [(1, i) for i in range(4)]  # revision 2 stored, not served
    assert (inv["status_revision"], inv["status_rank"]) == (2, 1)
    assert (inv["revision"], inv["ingested_revision"], inv["amount_gross_minor"]) == (1, 2, 310)
    apply(conn, *r2["lines"][2:], *r2["completed"])
    assert served(conn) == [(2, 0), (2, 1), (2, 2)]
    assert conn.execute("SELECT count(*) AS n FROM readmodel.cost_lines").fetchone()["n"] == 3
    assert invoice(conn)["amount_gross_minor"] == 410 and invoice(conn)["revision"] == 2

    # A replayed line or completion of revision 1 changes nothing any more.
    before = dump(conn)
    apply(conn, *r1["lines"], *r1["completed"], *r1["end"])
    assert dump(conn) == before
    assert served(conn, "droplet") == [(2, 0), (2, 1)]


def test_topics_in_any_order_give_the_same_read_models(conn: psycopg.Connection) -> None:
    r1 = revision_events(1, 3)
    groups = {
        "discovered": [
            change(
                INVOICE_DISCOVERED,
                f.invoice_discovered(invoice_uuid=U, **SEEN, amount_minor=210),
            )
        ],
        **r1,
        "pushed": [change(INVOICE_PUSHED, f.invoice_pushed(invoice_uuid=U, revision=1))],
    }
    dumps = []
    for order in itertools.permutations(groups):
        reset(conn)
        for name in order:
            apply(conn, *groups[name])
        dumps.append(dump(conn))
        inv = invoice(conn)
        assert (inv["status_rank"], inv["revision"], inv["finance_invoice_id"]) == (4, 1, f"fin-{U}"), order
        assert inv["amount_minor"] == 210 and inv["matched_count"] == 2
    assert all(d == dumps[0] for d in dumps)
    assert len(dumps[0]["cost_lines"]) == 3


def test_two_revisions_interleaved_at_random_converge(conn: psycopg.Connection) -> None:
    r1, r2 = revision_events(1, 4), revision_events(2, 3)
    singles = [c for g in (r1, r2) for cs in g.values() for c in cs] + [
        change(
            INVOICE_DISCOVERED,
            f.invoice_discovered(invoice_uuid=U, **SEEN, amount_minor=1000),
        ),
        change(INVOICE_PUSHED, f.invoice_pushed(invoice_uuid=U, revision=1)),
        change(INVOICE_PUSHED, f.invoice_pushed(invoice_uuid=U, revision=2, action="updated", minute=5)),
    ]
    rng = random.Random(8)
    dumps = []
    for _ in range(40):
        rng.shuffle(singles)
        reset(conn)
        for c in singles:
            apply(conn, c)
        dumps.append(dump(conn))
    assert all(d == dumps[0] for d in dumps)
    inv = invoice(conn)
    assert (inv["status_revision"], inv["status_rank"], inv["revision"], inv["pushed_revision"]) == (2, 4, 2, 2)
    assert inv["finance_action"] == "updated"
    assert served(conn) == [(2, 0), (2, 1), (2, 2)]


def test_one_batch_in_any_order_with_duplicates_equals_one_by_one(conn: psycopg.Connection) -> None:
    """The writer applies a batch's lines last, in one COPY: that must not change what ends up served."""
    r1, r2 = revision_events(1, 4), revision_events(2, 3)
    singles = [c for g in (r1, r2) for cs in g.values() for c in cs] + [
        change(
            INVOICE_DISCOVERED,
            f.invoice_discovered(invoice_uuid=U, **SEEN, amount_minor=1000),
        )
    ]
    rng = random.Random(14)
    for _ in range(15):
        rng.shuffle(singles)
        reset(conn)
        for c in singles:
            apply(conn, c)
        one_by_one = dump(conn)
        reset(conn)
        batch = singles + rng.sample(singles, 5)  # redelivered records inside the same batch
        apply(conn, *batch)
        apply(conn, *rng.sample(singles, len(singles)))  # and a whole replay afterwards
        assert dump(conn) == one_by_one
    assert served(conn) == [(2, 0), (2, 1), (2, 2)]


def test_status_never_moves_backwards(conn: psycopg.Connection) -> None:
    r1 = revision_events(1, 2)
    apply(conn, change(INVOICE_PUSHED, f.invoice_pushed(invoice_uuid=U, revision=1)))
    assert invoice(conn)["status_rank"] == 4
    apply(
        conn,
        *r1["completed"],
        *r1["end"],
        change(
            INVOICE_DISCOVERED,
            f.invoice_discovered(invoice_uuid=U, **SEEN, amount_minor=1000),
        ),
    )
    assert invoice(conn)["status_rank"] == 4
    # An incomplete line set is "ingested", a complete one "matched".
    reset(conn)
    apply(conn, *r1["end"], r1["lines"][0])
    assert invoice(conn)["status_rank"] == 1
    apply(conn, r1["lines"][1])
    assert invoice(conn)["status_rank"] == 2


def test_a_row_the_database_refuses_is_dead_lettered_and_the_rest_written(database_url: str) -> None:
    migrate(database_url, ["readmodel"])

    class FakeDlq:
        def __init__(self) -> None:
            self.out: list[Any] = []
            self.closed = False

        def produce(self, out: Any) -> None:
            self.out.append(out)

        def flush(self) -> None:
            pass

        def close(self) -> None:
            self.closed = True

    dlq = FakeDlq()
    settings = Settings(_env_file=None, database_url=database_url, kafka_topic_prefix=P)
    projector = Projector(settings, stop=StopSignal(), dlq=dlq)  # type: ignore[arg-type]
    good = f.invoice_discovered(invoice_uuid="good", **SEEN, amount_minor=1000)
    bad = f.invoice_discovered(invoice_uuid="bad", **SEEN, amount_minor=1000).model_copy(
        update={"description": "nul\x00byte"}
    )
    for i, data in enumerate([good, bad]):
        projector.handle(
            f.event_record(
                data, account=f.ACCOUNT, topic=INVOICE_DISCOVERED.name(P), partition=1, key=data.invoice_uuid, offset=i
            )
        )
    projector.flush()
    projector.close()
    assert dlq.closed
    assert [o.topic for o in dlq.out] == [INVOICE_DISCOVERED.dlq(P)]
    assert dlq.out[0].headers["dlq.source.offset"] == "1"
    with connect(database_url) as c:
        assert [r["invoice_uuid"] for r in c.execute("SELECT invoice_uuid FROM readmodel.invoices")] == ["good"]


def test_a_held_revision_shows_its_variance_until_a_newer_one_is_pushed(database_url: str, conn) -> None:
    short = [f.cost_line(i, 100, invoice_uuid=U, billed=True) for i in range(3)]
    apply(
        conn,
        change(
            INVOICE_DISCOVERED,
            f.invoice_discovered(invoice_uuid=U, **SEEN, amount_minor=1000),
        ),
        change(
            INVOICE_COMPLETED,
            f.invoice_completed(
                short, invoice_uuid=U, revision=1, invoice_id="42", matched_count=0, reconciliation=f.short_of(1000)
            ),
        ),
    )
    inv = invoice(conn)
    assert (inv["status_rank"], inv["held"], inv["amount_gross_minor"]) == (3, True, 300)
    assert (inv["reconciliation_expected_minor"], inv["reconciliation_actual_minor"]) == (1000, 300)
    assert inv["reconciliation_difference_minor"] == -700 and "variance -700" in inv["hold_reason"]
    assert [c["source"] for c in inv["reconciliation_checks"]] == ["billing_history", "invoice_list"]
    with ConnectionPool(database_url, kwargs={"row_factory": dict_row, "autocommit": True}, open=True) as pool:
        repo = ReadModelRepository(pool)
        assert [r["invoice_uuid"] for r in repo.invoices("held", None, None, 10).rows] == [U]
        assert repo.invoices("completed", None, None, 10).rows == []
        assert [r["reconciliation_difference_minor"] for r in repo.held()] == [-700]

        # An admin releases it (recorded with who and why); the pusher pushes it: pushed, no longer held.
        apply(
            conn,
            change(INVOICE_COMPLETED, f.invoice_released(invoice_uuid=U, revision=1), offset=1),
            change(INVOICE_PUSHED, f.invoice_pushed(invoice_uuid=U, revision=1)),
        )
        assert (invoice(conn)["status_rank"], repo.held()) == (4, [])
        _, _, actions = repo.invoice(U)
        assert [(a["action"], a["revision"], a["actor"], a["reason"]) for a in actions] == [
            ("release", 1, "ops@example.test", "credit note")
        ]

        # A newer, whole revision completes: proven, completed, then pushed.
        whole = [f.cost_line(i, 250, invoice_uuid=U, revision=2, billed=True) for i in range(4)]
        apply(
            conn,
            change(
                INVOICE_COMPLETED,
                f.invoice_completed(whole, invoice_uuid=U, revision=2, invoice_id="42", matched_count=0),
            ),
        )
        inv = invoice(conn)
        assert (inv["status_revision"], inv["status_rank"], inv["held"], inv["amount_gross_minor"]) == (
            2,
            3,
            False,
            1000,
        )
        assert repo.invoices("completed", None, None, 10).rows[0]["invoice_uuid"] == U


def test_billing_history_served_by_type_newest_first(database_url: str, conn) -> None:
    entries = [f.billing_history_entry(i) for i in range(3)] + [f.billing_history_entry(9, uuid=U)]
    entries.append(BillingHistoryEntry(entry_type="Credit", description="Promo", amount_minor=-500, date=f.T0))
    apply(conn, *[change(HISTORY, e, offset=i) for i, e in enumerate(entries)])
    with ConnectionPool(database_url, kwargs={"row_factory": dict_row, "autocommit": True}, open=True) as pool:
        repo = ReadModelRepository(pool)
        payments = repo.history("Payment", None, None, None, None, 2)
        assert [r["amount_minor"] for r in payments.rows] == [-1000, -1000] and payments.has_more
        last = payments.rows[-1]
        rest = repo.history("Payment", None, None, None, (last["date"], last["event_id"]), 2)
        assert len(rest.rows) == 1 and not rest.has_more
        assert [r["description"] for r in repo.history("Credit", None, None, None, None, 10).rows] == ["Promo"]
        assert len(repo.history(None, None, None, None, None, 10).rows) == 5


def test_cost_lines_by_period_and_kind_use_the_index_at_a_million_rows(conn: psycopg.Connection) -> None:
    """24 periods x 10 kinds x ~4,200 lines: the page query must be an index range scan, not a sort of the period."""
    conn.execute(
        """
        INSERT INTO readmodel.cost_lines (invoice_uuid, revision, line_index, account, current, period, product,
            group_description, description, amount_minor, currency, project_name, category, is_tax, kind, event_id)
        SELECT 'inv-' || (g / 1000), 1, g % 1000, 'a', true,
               date '2024-01-01' + make_interval(months => (g / 1000) % 24), 'Droplets', '', 'x', 1, 'USD', '', '',
               false, (ARRAY['droplet','volume','database','load_balancer','kubernetes_cluster','app','snapshot',
                             'floating_ip','reserved_ip','registry'])[1 + g % 10], ''
        FROM generate_series(0, 999999) AS g
        """
    )
    conn.execute("ANALYZE readmodel.cost_lines")
    params = {"period": "2025-06-01", "kind": "volume", "after_uuid": "inv-5", "after_index": 3, "limit": 101}
    for kind, index in (("volume", "cost_lines_period_kind_cursor"), (None, "cost_lines_period_cursor")):
        plan = "\n".join(
            r["QUERY PLAN"] for r in conn.execute("EXPLAIN " + cost_lines_sql(kind), params | {"kind": kind})
        )
        assert f"Index Scan using {index}" in plan or f"Index Only Scan using {index}" in plan, plan
        assert "Sort" not in plan, plan
