"""The finance pusher in a thread against the finance simulator, the real broker and the real Postgres."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime

import httpx
import psycopg
import pytest
from pydantic import SecretStr

from services.finance_pusher import main
from services.finance_pusher.finance_client import FinanceClient
from services.finance_pusher.handler import SERVICE, PushHandler
from services.finance_pusher.ledger import Ledger, PushRecord
from shared.db import make_pool, migrate
from shared.events import InvoiceCompleted, InvoicePushed, InvoiceReleased, decode, encode
from shared.kafka import EventProducer, Record, Retryable, StopSignal, group_lag
from shared.metrics import CONFIG_ERRORS, RETRIES
from shared.reconciliation import Expected, reconcile
from shared.settings import Settings
from shared.topics import INVOICE_COMPLETED, INVOICE_PUSHED, group_id
from sims.finance.app import create_app
from sims.scenario import APRIL_2026_INVOICE_ID, APRIL_2026_INVOICE_UUID
from sims.server import RunningServer, run_in_thread
from tests.factories import invoice_completed
from tests.helpers import read_all, wait_until

SECRET = "finance-sim-shared-secret-" + "5f3a9c0e1b2d4f68" * 4
ACCOUNT = "default"
APRIL = {"invoice_uuid": APRIL_2026_INVOICE_UUID, "invoice_id": APRIL_2026_INVOICE_ID}  # proven, 33 lines
T0 = datetime(2026, 5, 2, 9, 0, tzinfo=UTC)


# ------------------------------------------------------------------------------------------ helpers
@pytest.fixture
def sim(database_url: str) -> Iterator[RunningServer]:
    server = run_in_thread(create_app(database_url, SECRET, algorithm="HS512"))
    yield server
    server.stop()


def configured(settings: Settings, sim: RunningServer, **kw) -> Settings:
    """The pusher's settings on this sim, with short retry intervals so failure tests stay quick."""
    base = {
        "skyai_finance_url": sim.url,
        "skyai_finance_jwt_secret": SecretStr(SECRET),
        "skyai_finance_max_backoff_s": 0.5,
        "skyai_finance_auth_retry_s": 0.5,
    }
    return settings.model_copy(update=base | kw)


@contextmanager
def pusher(settings: Settings) -> Iterator[None]:
    stop = StopSignal()
    thread = threading.Thread(target=main.run, args=(settings, stop), daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(30)
        assert not thread.is_alive(), "the pusher did not stop"


def month(i: int) -> InvoiceCompleted:
    """Another monthly invoice (2025-01 + i months), with its own uuid and totals."""
    start = date(2025 + i // 12, i % 12 + 1, 1)
    invoiced = date(start.year + start.month // 12, start.month % 12 + 1, 1)
    return invoice_completed(
        invoice_uuid=f"00000000-0000-4000-8000-{i:012d}",
        invoice_id=str(9000000 + i),
        period=start.isoformat(),
        invoice_date=invoiced,
        amount_net_minor=1000 + i,
        amount_tax_minor=100,
        amount_gross_minor=1100 + i,
    )


def produce(settings: Settings, *events: InvoiceCompleted) -> None:
    p = EventProducer(settings, "test")
    for e in events:
        p.publish(INVOICE_COMPLETED.name(settings.kafka_topic_prefix), e.invoice_uuid, e, ACCOUNT)
    p.flush()


def pushed(settings: Settings) -> list[InvoicePushed]:
    out = []
    for r in read_all(settings, INVOICE_PUSHED.name(settings.kafka_topic_prefix)):
        _env, data = decode(r.value)
        assert isinstance(data, InvoicePushed) and r.key == data.invoice_uuid
        out.append(data)
    return out


def dead_letters(settings: Settings) -> list:
    return read_all(settings, INVOICE_COMPLETED.dlq(settings.kafka_topic_prefix))


def caught_up(settings: Settings) -> bool:
    """The pusher's group committed every invoice-completed record."""
    lags = group_lag(settings, group_id(settings, SERVICE), [INVOICE_COMPLETED.name(settings.kafka_topic_prefix)])
    return all(p.lag == 0 for p in lags)


def committed_nothing(settings: Settings) -> bool:
    lags = group_lag(settings, group_id(settings, SERVICE), [INVOICE_COMPLETED.name(settings.kafka_topic_prefix)])
    return all(p.committed is None or p.committed < 0 for p in lags)


def finance(sim: RunningServer, path: str) -> dict:
    return httpx.get(sim.url + path, timeout=10).json()


def retries(settings: Settings) -> float:
    return RETRIES.labels(SERVICE, INVOICE_COMPLETED.name(settings.kafka_topic_prefix))._value.get()


# --------------------------------------------------------------------------------------------- tests
def test_april_2026_lands_once_unchanged_is_not_resent_and_a_new_revision_is_updated(settings, sim) -> None:
    """The acceptance verification (README), then the re-run.

    Delivering the same completion again makes NO call to finance: its payload hashes like the one the
    ledger recorded for this invoice, so the pusher knows finance already has exactly this content. A new
    revision with other totals is pushed, and finance answers "updated": still one row.
    """
    s = configured(settings, sim)
    produce(s, invoice_completed(**APRIL))
    with pusher(s):
        first = wait_until(lambda: pushed(s), timeout=30, what="invoice-pushed")
        assert [(e.action, e.revision, e.invoice_uuid) for e in first] == [("created", 1, APRIL_2026_INVOICE_UUID)]
        rows = finance(sim, "/api/v1/invoices")["invoices"]
        assert len(rows) == 1
        row = rows[0]
        assert (row["amount_gross_minor"], row["amount_tax_minor"], row["amount_net_minor"]) == (8692, 790, 7902)
        assert (row["source"], row["tenant_id"], row["external_id"]) == (
            "digitalocean",
            "platform-admin",
            APRIL_2026_INVOICE_UUID,
        )
        assert (row["invoice_number"], row["invoice_date"], row["lines_count"]) == ("9217394", "2026-05-01", 33)
        assert row["billing_period"] == {"start": "2026-04-01", "end": "2026-04-30"}
        assert (row["vendor"]["name"], row["vendor"]["category"]) == ("DigitalOcean", "cloud")
        assert first[0].finance_invoice_id == row["id"]
        vendors = finance(sim, "/api/v1/vendors")["vendors"]
        assert [(v["name"], v["category"], v["tenant_id"]) for v in vendors] == [
            ("DigitalOcean", "cloud", "platform-admin")
        ]
        calls_before = finance(sim, "/_sim/calls")["total"]
        assert calls_before == 1

        produce(s, invoice_completed(**APRIL))  # the same completion delivered again
        wait_until(lambda: caught_up(s), timeout=30, what="redelivery consumed")
        assert finance(sim, "/_sim/calls")["total"] == calls_before
        assert len(pushed(s)) == 1

        produce(
            s,
            invoice_completed(
                **APRIL, revision=2, amount_net_minor=7802, amount_tax_minor=780, amount_gross_minor=8582
            ),
        )
        events = wait_until(lambda: (e := pushed(s)) and len(e) == 2 and e, timeout=30, what="second push")
        assert [e.action for e in events] == ["created", "updated"]
        assert events[1].revision == 2 and events[1].finance_invoice_id == row["id"]

        produce(s, invoice_completed(**APRIL))  # revision 1 arriving late must not overwrite revision 2
        wait_until(lambda: caught_up(s), timeout=30, what="stale revision consumed")

    rows = finance(sim, "/api/v1/invoices")["invoices"]
    assert len(rows) == 1
    assert (rows[0]["amount_gross_minor"], rows[0]["amount_tax_minor"], rows[0]["update_count"]) == (8582, 780, 1)
    assert finance(sim, "/_sim/calls")["total"] == 2
    assert dead_letters(s) == []


def test_finance_down_then_back_every_invoice_pushed_none_twice(settings, sim) -> None:
    """Finance unavailable for a few seconds (a minute, scaled down): the partitions wait, nothing is lost."""
    s = configured(settings, sim)
    warm_up, invoices = month(11), [month(i) for i in range(6)]
    produce(s, warm_up)
    with pusher(s):
        wait_until(lambda: len(pushed(s)) == 1, timeout=30, what="the pusher consuming")
        httpx.post(sim.url + "/_sim/faults", json={"unavailable_seconds": 4}, timeout=10).raise_for_status()
        produce(s, *invoices)
        events = wait_until(lambda: (e := pushed(s)) and len(e) >= 7 and e, timeout=60, what="6 more pushes")
        wait_until(lambda: caught_up(s), timeout=30, what="offsets committed")
    assert sorted(e.invoice_uuid for e in events) == sorted(i.invoice_uuid for i in [warm_up, *invoices])
    assert {e.action for e in events} == {"created"}
    rows = finance(sim, "/api/v1/invoices")["invoices"]
    assert len(rows) == 7 and all(r["update_count"] == 0 for r in rows)
    calls = finance(sim, "/_sim/calls")
    assert calls["by_outcome"].get("unavailable", 0) >= 1  # finance really was down meanwhile
    assert calls["by_outcome"].get("created") == 7 and "updated" not in calls["by_outcome"]
    assert retries(s) >= 1
    assert dead_letters(s) == []


def test_wrong_secret_is_refused_reported_once_and_nothing_dead_lettered(settings, sim, caplog) -> None:
    """A 401 is a configuration error: one loud log line and the gauge, slow retries, no DLQ, no commit."""
    caplog.set_level(logging.INFO)
    wrong = "not-the-finance-secret-" + "0" * 48
    s = configured(settings, sim, skyai_finance_jwt_secret=SecretStr(wrong))
    produce(s, month(0), month(1))
    with pusher(s):
        wait_until(lambda: retries(s) >= 3, timeout=30, what="several refused attempts")
        assert CONFIG_ERRORS.labels(SERVICE, "finance_unauthorized")._value.get() == 1
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, [r.getMessage() for r in errors]
    assert "HTTP 401" in errors[0].getMessage() and "SKYAI_FINANCE_JWT_SECRET" in errors[0].getMessage()
    assert all(wrong not in r.getMessage() and SECRET not in r.getMessage() for r in caplog.records)
    calls = finance(sim, "/_sim/calls")
    assert calls["total"] >= 3 and calls["by_outcome"] == {"unauthorized": calls["total"]}
    assert finance(sim, "/api/v1/invoices")["total"] == 0
    assert dead_letters(s) == [] and pushed(s) == []
    assert committed_nothing(s)

    # The secret fixed: both invoices go through from where the group was, and the gauge clears.
    with pusher(configured(settings, sim)):
        wait_until(lambda: len(pushed(s)) == 2, timeout=30, what="pushes after the fix")
    assert CONFIG_ERRORS.labels(SERVICE, "finance_unauthorized")._value.get() == 0
    assert finance(sim, "/api/v1/invoices")["total"] == 2


def test_invalid_invoices_are_dead_lettered_with_the_reason(settings, sim) -> None:
    """net + tax != gross is caught before sending; a sim-side 422 (currency not ISO 4217) keeps its body."""
    s = configured(settings, sim)
    bad_totals = month(1).model_copy(update={"amount_gross_minor": 9999})
    bad_currency = month(2).model_copy(update={"currency": "usd"})
    good = month(3)
    produce(s, bad_totals, bad_currency, good)
    with pusher(s):
        dlq = wait_until(lambda: (d := dead_letters(s)) and len(d) == 2 and d, timeout=30, what="2 dead letters")
        wait_until(lambda: len(pushed(s)) == 1, timeout=30, what="the good invoice pushed")
    by_uuid = {r.key: r.headers["dlq.error.message"].decode() for r in dlq}
    assert "!= gross 9999" in by_uuid[bad_totals.invoice_uuid]
    assert "not pushed" in by_uuid[bad_totals.invoice_uuid]
    msg = by_uuid[bad_currency.invoice_uuid]
    assert "HTTP 422" in msg and "validation_failed" in msg and "currency" in msg and "ISO 4217" in msg
    calls = finance(sim, "/_sim/calls")
    assert calls["by_outcome"] == {"validation_failed": 1, "created": 1}  # the bad totals never reached finance
    assert [r["external_id"] for r in finance(sim, "/api/v1/invoices")["invoices"]] == [good.invoice_uuid]


def test_without_finance_configuration_idle_says_so_once_then_pushes_everything(settings, sim, caplog) -> None:
    """No secret: idle, one log line, no consumption (nothing committed); configured later, all get pushed."""
    caplog.set_level(logging.INFO)
    produce(settings, month(4), month(5))
    idle = settings.model_copy(update={"skyai_finance_url": sim.url, "skyai_finance_jwt_secret": None})
    with pusher(idle):
        wait_until(lambda: any("idle" in r.getMessage() for r in caplog.records), timeout=10, what="idle message")
        # Stay idle across several of its 1 s wake-ups to show the message is not repeated.
        threading.Event().wait(2.5)
    idle_lines = [r.getMessage() for r in caplog.records if "idle" in r.getMessage()]
    assert len(idle_lines) == 1 and "SKYAI_FINANCE_JWT_SECRET is not set" in idle_lines[0]
    assert finance(sim, "/_sim/calls")["total"] == 0
    assert committed_nothing(settings)

    s = configured(settings, sim)
    with pusher(s):
        wait_until(lambda: len(pushed(s)) == 2, timeout=30, what="pushes once configured")
    assert finance(sim, "/api/v1/invoices")["total"] == 2


def test_crash_windows_are_safe_with_the_real_ledger_and_finance(database_url, sim) -> None:
    """The handler against Postgres and the sim, crashing in each window between finance and the commit.

    - After finance accepted but before the ledger write: the redelivered record is pushed again with the same
      Idempotency-Key and body; finance replays its first answer ("created"), still one row, unchanged.
    - After the ledger write but before the event was delivered: the redelivery makes no HTTP call and
      re-emits the event recorded in the ledger.
    """
    s = configured(Settings(_env_file=None, database_url=database_url), sim)
    migrate(s, ["finance_pusher"])
    pool = make_pool(s)
    published: list[InvoicePushed] = []
    rec = Record(
        "t.billing.invoice-completed.v1", 0, 0, APRIL_2026_INVOICE_UUID, encode(invoice_completed(**APRIL), ACCOUNT)
    )
    try:
        with FinanceClient.from_settings(s) as client:
            ledger = Ledger(pool)

            class CrashBeforeLedger(Ledger):
                def record_push(self, **kw) -> PushRecord:
                    raise psycopg.OperationalError("server closed the connection")

            crashing = PushHandler(s, client, CrashBeforeLedger(pool), lambda e, a: published.append(e))
            with pytest.raises(Retryable):
                crashing(rec)
            assert finance(sim, "/api/v1/invoices")["total"] == 1 and ledger.pushes() == [] and published == []

            def broker_down(e, a) -> None:
                raise RuntimeError("broker down")

            with pytest.raises(Retryable, match="not delivered"):
                PushHandler(s, client, ledger, broker_down)(rec)
            (push,) = ledger.pushes()
            assert push.action == "created" and push.published_at is None

            PushHandler(s, client, ledger, lambda e, a: published.append(e))(rec)
            assert [e.action for e in published] == ["created"]
            assert ledger.pushes()[0].published_at is not None
    finally:
        pool.close()
    calls = finance(sim, "/_sim/calls")
    assert calls["by_outcome"] == {"created": 1, "replayed": 1}
    keys = {c["idempotency_key"] for c in calls["calls"]}
    assert len(keys) == 1  # the same deterministic key both times, with the same body: a replay
    (row,) = finance(sim, "/api/v1/invoices")["invoices"]
    assert row["update_count"] == 0


# ------------------------------------------------------------------------------------------- money gates
def test_a_content_revert_a_b_a_ends_with_a_in_finance(settings, sim) -> None:
    """Finance honours Idempotency-Key; revision 3 has A's body again but its own key, so finance takes it."""
    s = configured(settings, sim)
    a = invoice_completed(**APRIL, revision=1)
    b = invoice_completed(**APRIL, revision=2, line_count=34)  # B: one line split in two, same money
    produce(s, a, b, invoice_completed(**APRIL, revision=3))
    with pusher(s):
        wait_until(lambda: len(pushed(s)) == 3, timeout=30, what="A, B and A pushed")
    (row,) = finance(sim, "/api/v1/invoices")["invoices"]
    assert (row["lines_count"], row["amount_gross_minor"], row["update_count"]) == (33, 8692, 2)
    calls = finance(sim, "/_sim/calls")
    assert calls["by_outcome"] == {"created": 1, "updated": 2}
    assert len({c["idempotency_key"] for c in calls["calls"]}) == 3
    assert [p.revision for p in pushed(s)] == [1, 2, 3]


def test_a_held_revision_reaches_finance_only_when_released(settings, sim) -> None:
    s = configured(settings, sim)
    short = invoice_completed(
        **APRIL, revision=1, line_count=8, amount_net_minor=2733, amount_tax_minor=0, amount_gross_minor=2733
    )
    short = short.model_copy(
        update={
            "reconciliation": reconcile(
                gross_minor=2733, tax_minor=0, csv_currency="USD", expected=Expected("USD", 8692, 8692)
            )
        }
    )
    produce(s, short)
    with pusher(s):
        wait_until(lambda: caught_up(s), timeout=30, what="held revision consumed")
        assert finance(sim, "/_sim/calls")["total"] == 0 and pushed(s) == []
        release = InvoiceReleased(
            invoice_uuid=APRIL_2026_INVOICE_UUID, revision=1, released_by="ops", reason="credit note", released_at=T0
        )
        p = EventProducer(s, "admin")
        p.publish(INVOICE_COMPLETED.name(s.kafka_topic_prefix), APRIL_2026_INVOICE_UUID, release, ACCOUNT)
        p.close()
        wait_until(lambda: len(pushed(s)) == 1, timeout=30, what="released revision pushed")
    (row,) = finance(sim, "/api/v1/invoices")["invoices"]
    assert (row["amount_gross_minor"], row["lines_count"]) == (2733, 8)
    assert dead_letters(s) == []
