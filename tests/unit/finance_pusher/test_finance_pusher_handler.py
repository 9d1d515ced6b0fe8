"""The push handler with an in-memory ledger and a mocked finance: decisions, crash safety, failures."""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from datetime import UTC, date, datetime

import httpx
import psycopg
import pytest
from pydantic import SecretStr

from services.finance_pusher.finance_client import FinanceClient, FinanceRejected
from services.finance_pusher.handlers import SERVICE, PushHandler
from services.finance_pusher.ledger import InvoiceLedger, PushRecord
from services.finance_pusher.payload import InvalidInvoice, PushedState
from shared.events import Balance, InvoiceCompleted, InvoicePushed, Reconciliation, encode
from shared.kafka import Record, Retryable
from shared.metrics import CONFIG_ERRORS
from shared.settings import Settings

UUID = "4a1c5f7e-0000-4000-8000-000000000426"
SECRET = "unit-test-finance-secret-" + "0123456789abcdef" * 4
NOW = datetime(2026, 5, 2, 3, 4, 5, tzinfo=UTC)


class MemoryLedger:
    """The Ledger's contract in memory (the Postgres one is covered by the integration tests)."""

    def __init__(self) -> None:
        self.rows: list[PushRecord] = []
        self.state: dict[str, tuple[PushedState, int]] = {}
        self.fail_record_once = False

    def current(self, invoice_uuid: str) -> InvoiceLedger | None:
        if invoice_uuid not in self.state:
            return None
        st, push_id = self.state[invoice_uuid]
        return InvoiceLedger(st, self.rows[push_id - 1])

    def record_push(self, **kw) -> PushRecord:
        if self.fail_record_once:
            self.fail_record_once = False
            raise psycopg.OperationalError("connection lost")
        row = PushRecord(id=len(self.rows) + 1, published_at=None, **kw)
        self.rows.append(row)
        prev = self.state.get(row.invoice_uuid)
        rev = max(row.revision, prev[0].revision) if prev else row.revision
        self.state[row.invoice_uuid] = (PushedState(rev, row.payload_sha256), row.id)
        return row

    def note_revision(self, invoice_uuid: str, revision: int) -> None:
        st, pid = self.state[invoice_uuid]
        self.state[invoice_uuid] = (PushedState(max(st.revision, revision), st.payload_sha256), pid)

    def mark_published(self, push_id: int) -> None:
        row = self.rows[push_id - 1]
        if row.published_at is None:
            self.rows[push_id - 1] = replace(row, published_at=NOW)


class FakeFinance:
    """Dedups on external_id like the real one; answers can be scripted per call."""

    def __init__(self) -> None:
        self.calls: list[httpx.Request] = []
        self.rows: dict[str, dict] = {}
        self.script: list[httpx.Response] = []

    def __call__(self, req: httpx.Request) -> httpx.Response:
        self.calls.append(req)
        if self.script:
            return self.script.pop(0)
        body = json.loads(req.content)
        action = "updated" if body["external_id"] in self.rows else "created"
        self.rows[body["external_id"]] = body
        return httpx.Response(
            200, json={"action": action, "invoice_id": f"fin-{body['external_id'][:4]}", "vendor_id": "v"}
        )


def completed(revision: int = 1, gross: int = 8692, tax: int = 790, net: int = 7902) -> InvoiceCompleted:
    return InvoiceCompleted(
        invoice_uuid=UUID,
        invoice_id="123",
        revision=revision,
        period="2026-04-01",
        invoice_date=date(2026, 5, 1),
        line_count=33,
        matched_count=6,
        amount_net_minor=net,
        amount_tax_minor=tax,
        amount_gross_minor=gross,
        reconciliation=Reconciliation(status="matched"),
    )


def rec(data, offset: int = 0) -> Record:
    return Record("t.billing.invoice-completed.v1", 0, offset, UUID, encode(data, "acct"))


@pytest.fixture
def env():
    settings = Settings(_env_file=None, skyai_finance_jwt_secret=SECRET, skyai_finance_auth_retry_s=123.0)
    finance = FakeFinance()
    ledger = MemoryLedger()
    published: list[tuple[InvoicePushed, str]] = []
    client = FinanceClient("http://fin", SecretStr(SECRET), transport=httpx.MockTransport(finance))
    handler = PushHandler(settings, client, ledger, lambda e, a: published.append((e, a)), clock=lambda: NOW)
    yield handler, finance, ledger, published
    client.close()
    CONFIG_ERRORS.clear()


def test_first_push_records_and_emits(env) -> None:
    handler, finance, ledger, published = env
    handler(rec(completed()))
    assert len(finance.calls) == 1
    assert json.loads(finance.calls[0].content)["amount_gross_minor"] == 8692
    (row,) = ledger.rows
    assert (row.action, row.finance_invoice_id, row.revision, row.account) == ("created", "fin-4a1c", 1, "acct")
    assert row.published_at is not None
    ((event, account),) = published
    assert account == "acct"
    assert (event.invoice_uuid, event.action, event.finance_invoice_id, event.pushed_at) == (
        UUID,
        "created",
        "fin-4a1c",
        NOW,
    )
    assert event.payload_sha256 == row.payload_sha256


def test_unchanged_payload_is_not_pushed_again(env, caplog) -> None:
    handler, finance, ledger, published = env
    handler(rec(completed()))
    caplog.set_level(logging.DEBUG, logger="services.finance_pusher")
    handler(rec(completed(), offset=1))  # redelivery
    handler(rec(completed(revision=2), offset=2))  # new revision, same totals
    assert len(finance.calls) == 1 and len(ledger.rows) == 1 and len(published) == 1
    assert ledger.state[UUID][0].revision == 2
    assert any("no HTTP call" in r.getMessage() and r.levelno == logging.DEBUG for r in caplog.records)


def test_changed_revision_is_pushed_and_finance_says_updated(env) -> None:
    handler, finance, ledger, published = env
    handler(rec(completed()))
    handler(rec(completed(revision=2, gross=8700, net=7910), offset=1))
    assert len(finance.calls) == 2
    assert [r.action for r in ledger.rows] == ["created", "updated"]
    assert [e.action for e, _ in published] == ["created", "updated"]
    assert len(finance.rows) == 1


def test_older_revision_after_newer_is_not_pushed(env) -> None:
    handler, finance, ledger, _ = env
    handler(rec(completed(revision=3, gross=8700, net=7910)))
    handler(rec(completed(revision=2), offset=1))
    assert len(finance.calls) == 1
    # the newer revision with unchanged content also counts as settled
    handler(rec(completed(revision=5, gross=8700, net=7910), offset=2))
    handler(rec(completed(revision=4, gross=1, net=1, tax=0), offset=3))
    assert len(finance.calls) == 1 and ledger.state[UUID][0].revision == 5


def test_crash_between_http_success_and_ledger_write_re_pushes_as_updated(env) -> None:
    handler, finance, ledger, published = env
    ledger.fail_record_once = True
    with pytest.raises(Retryable, match="ledger database unavailable"):
        handler(rec(completed()))
    assert published == [] and ledger.rows == []
    handler(rec(completed()))  # redelivered
    assert len(finance.calls) == 2
    assert finance.calls[0].headers["idempotency-key"] == finance.calls[1].headers["idempotency-key"]
    assert [r.action for r in ledger.rows] == ["updated"] and len(finance.rows) == 1
    assert [e.action for e, _ in published] == ["updated"]


def test_crash_between_ledger_write_and_event_re_emits_without_http(env) -> None:
    handler, finance, ledger, published = env
    fail = [True]

    def flaky(event, account) -> None:
        if fail.pop(0) if fail else False:
            raise RuntimeError("broker down")
        published.append((event, account))

    handler.publish = flaky
    with pytest.raises(Retryable, match="not delivered"):
        handler(rec(completed()))
    assert ledger.rows[0].published_at is None
    handler(rec(completed()))
    assert len(finance.calls) == 1
    ((event, _),) = published
    assert event.action == "created" and ledger.rows[0].published_at is not None


def test_net_plus_tax_not_gross_is_dead_lettered_before_sending(env) -> None:
    handler, finance, _, _ = env
    with pytest.raises(InvalidInvoice, match="!= gross"):
        handler(rec(completed(gross=9999)))
    assert finance.calls == []


def test_other_event_types_are_poison(env) -> None:
    handler, _, _, _ = env
    bal = Balance(month_to_date_balance_minor=1, account_balance_minor=1, month_to_date_usage_minor=1, generated_at=NOW)
    with pytest.raises(ValueError, match="unexpected event type"):
        handler(rec(bal))


def test_5xx_and_429_are_retryable_honouring_retry_after(env) -> None:
    handler, finance, ledger, _ = env
    finance.script = [httpx.Response(503), httpx.Response(429, headers={"Retry-After": "4"})]
    with pytest.raises(Retryable) as e1:
        handler(rec(completed()))
    assert e1.value.delay_s is None  # the loop's capped backoff
    with pytest.raises(Retryable) as e2:
        handler(rec(completed()))
    assert e2.value.delay_s == 4.0
    handler(rec(completed()))
    assert [r.action for r in ledger.rows] == ["created"]


def test_auth_error_is_reported_once_and_retried_slowly(env, caplog) -> None:
    handler, finance, ledger, _ = env
    finance.script = [httpx.Response(401, json={"error": "unauthorized", "detail": "bad signature"})] * 3
    caplog.set_level(logging.INFO)
    for _ in range(3):
        with pytest.raises(Retryable) as ei:
            handler(rec(completed()))
        assert ei.value.delay_s == 123.0
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "401" in errors[0].getMessage()
    assert "SKYAI_FINANCE_JWT_SECRET" in errors[0].getMessage()
    assert all(SECRET not in r.getMessage() for r in caplog.records)
    assert CONFIG_ERRORS.labels(SERVICE, "finance_unauthorized")._value.get() == 1
    handler(rec(completed()))  # fixed (e.g. finance reconfigured): cleared
    assert CONFIG_ERRORS.labels(SERVICE, "finance_unauthorized")._value.get() == 0
    assert [r.action for r in ledger.rows] == ["created"]


def test_422_is_rejected_with_the_body(env) -> None:
    handler, finance, ledger, _ = env
    body = {"error": "validation_failed", "errors": [{"field": "invoice_date", "message": "invalid date"}]}
    finance.script = [httpx.Response(422, json=body)]
    with pytest.raises(FinanceRejected) as ei:
        handler(rec(completed()))
    assert UUID in str(ei.value) and "validation_failed" in str(ei.value) and "HTTP 422" in str(ei.value)
    assert ledger.rows == []
