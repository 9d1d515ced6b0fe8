"""The push handler with an in-memory ledger and a mocked finance: decisions, crash safety, failures."""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from datetime import UTC, datetime

import httpx
import psycopg
import pytest
from pydantic import SecretStr

from services.finance_pusher.domain import InvalidInvoice, PushedState
from services.finance_pusher.finance_client import FinanceClient, FinanceRejected
from services.finance_pusher.handler import SERVICE, NotHeld, PushHandler, StaleRelease
from services.finance_pusher.ledger import HoldRecord, InvoiceLedger, PushRecord
from shared.events import Balance, InvoicePushed, Reconciliation
from shared.kafka import Retryable
from shared.metrics import CONFIG_ERRORS
from shared.reconciliation import Expected, reconcile
from shared.settings import Settings
from tests.factories import event_record, invoice_completed, invoice_released, short_of
from tests.helpers import proven

UUID = "4a1c5f7e-0000-4000-8000-000000000426"
SECRET = "unit-test-finance-secret-" + "0123456789abcdef" * 4
NOW = datetime(2026, 5, 2, 3, 4, 5, tzinfo=UTC)
ON_TOPIC = {"topic": "t.billing.invoice-completed.v1", "key": UUID}
# 8 of 33 lines: gross 2733 where DigitalOcean billed 8692 (the truncated-CSV case).
SHORT = {
    "invoice_uuid": UUID,
    "line_count": 8,
    "amount_gross_minor": 2733,
    "amount_tax_minor": 0,
    "amount_net_minor": 2733,
    "reconciliation": short_of(8692),
}


class MemoryLedger:
    """The Ledger's contract in memory (the Postgres one is covered by the integration tests)."""

    def __init__(self) -> None:
        self.rows: list[PushRecord] = []
        self.state: dict[str, tuple[PushedState, int]] = {}
        self.held: dict[tuple[str, int], HoldRecord] = {}
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

    def sender_id(self) -> str:
        return "memory-ledger"

    # holds
    def record_hold(self, *, invoice_uuid: str, revision: int, account: str, completion: dict, reason: str) -> bool:
        if (invoice_uuid, revision) in self.held:
            return False
        self.held[(invoice_uuid, revision)] = HoldRecord(
            invoice_uuid, revision, account, completion, reason, NOW, None, None, None
        )
        return True

    def hold(self, invoice_uuid: str, revision: int) -> HoldRecord | None:
        return self.held.get((invoice_uuid, revision))

    def mark_released(self, invoice_uuid: str, revision: int, *, released_by: str, reason: str, released_at) -> None:
        h = self.held[(invoice_uuid, revision)]
        if h.released_at is None:
            self.held[(invoice_uuid, revision)] = replace(
                h, released_at=released_at, released_by=released_by, release_reason=reason
            )

    def latest_revision(self, invoice_uuid: str) -> int | None:
        revs = [r for (u, r) in self.held if u == invoice_uuid]
        if invoice_uuid in self.state:
            revs.append(self.state[invoice_uuid][0].revision)
        return max(revs, default=None)


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
    handler(event_record(invoice_completed(invoice_uuid=UUID), **ON_TOPIC))
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
    handler(event_record(invoice_completed(invoice_uuid=UUID), **ON_TOPIC))
    caplog.set_level(logging.DEBUG, logger="services.finance_pusher")
    handler(event_record(invoice_completed(invoice_uuid=UUID), offset=1, **ON_TOPIC))  # redelivery
    handler(
        event_record(invoice_completed(invoice_uuid=UUID, revision=2), offset=2, **ON_TOPIC)
    )  # new revision, same totals
    assert len(finance.calls) == 1 and len(ledger.rows) == 1 and len(published) == 1
    assert ledger.state[UUID][0].revision == 2
    assert any("no HTTP call" in r.getMessage() and r.levelno == logging.DEBUG for r in caplog.records)


def test_changed_revision_is_pushed_and_finance_says_updated(env) -> None:
    handler, finance, ledger, published = env
    handler(event_record(invoice_completed(invoice_uuid=UUID), **ON_TOPIC))
    handler(
        event_record(
            invoice_completed(invoice_uuid=UUID, revision=2, amount_gross_minor=8700, amount_net_minor=7910),
            offset=1,
            **ON_TOPIC,
        )
    )
    assert len(finance.calls) == 2
    assert [r.action for r in ledger.rows] == ["created", "updated"]
    assert [e.action for e, _ in published] == ["created", "updated"]
    assert len(finance.rows) == 1


def test_older_revision_after_newer_is_not_pushed(env) -> None:
    handler, finance, ledger, _ = env
    handler(
        event_record(
            invoice_completed(invoice_uuid=UUID, revision=3, amount_gross_minor=8700, amount_net_minor=7910), **ON_TOPIC
        )
    )
    handler(event_record(invoice_completed(invoice_uuid=UUID, revision=2), offset=1, **ON_TOPIC))
    assert len(finance.calls) == 1
    # the newer revision with unchanged content also counts as settled
    handler(
        event_record(
            invoice_completed(invoice_uuid=UUID, revision=5, amount_gross_minor=8700, amount_net_minor=7910),
            offset=2,
            **ON_TOPIC,
        )
    )
    handler(
        event_record(
            invoice_completed(
                invoice_uuid=UUID, revision=4, amount_gross_minor=1, amount_tax_minor=0, amount_net_minor=1
            ),
            offset=3,
            **ON_TOPIC,
        )
    )
    assert len(finance.calls) == 1 and ledger.state[UUID][0].revision == 5


def test_crash_between_http_success_and_ledger_write_re_pushes_as_updated(env) -> None:
    handler, finance, ledger, published = env
    ledger.fail_record_once = True
    with pytest.raises(Retryable, match="ledger database unavailable"):
        handler(event_record(invoice_completed(invoice_uuid=UUID), **ON_TOPIC))
    assert published == [] and ledger.rows == []
    handler(event_record(invoice_completed(invoice_uuid=UUID), **ON_TOPIC))  # redelivered
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
        handler(event_record(invoice_completed(invoice_uuid=UUID), **ON_TOPIC))
    assert ledger.rows[0].published_at is None
    handler(event_record(invoice_completed(invoice_uuid=UUID), **ON_TOPIC))
    assert len(finance.calls) == 1
    ((event, _),) = published
    assert event.action == "created" and ledger.rows[0].published_at is not None


def test_net_plus_tax_not_gross_is_dead_lettered_before_sending(env) -> None:
    handler, finance, _, _ = env
    with pytest.raises(InvalidInvoice, match="!= gross"):
        handler(event_record(invoice_completed(invoice_uuid=UUID, amount_gross_minor=9999), **ON_TOPIC))
    assert finance.calls == []


def test_other_event_types_are_poison(env) -> None:
    handler, _, _, _ = env
    bal = Balance(month_to_date_balance_minor=1, account_balance_minor=1, month_to_date_usage_minor=1, generated_at=NOW)
    with pytest.raises(ValueError, match="unexpected event type"):
        handler(event_record(bal, **ON_TOPIC))


def test_5xx_and_429_are_retryable_honouring_retry_after(env) -> None:
    handler, finance, ledger, _ = env
    finance.script = [httpx.Response(503), httpx.Response(429, headers={"Retry-After": "4"})]
    with pytest.raises(Retryable) as e1:
        handler(event_record(invoice_completed(invoice_uuid=UUID), **ON_TOPIC))
    assert e1.value.delay_s is None  # the loop's capped backoff
    with pytest.raises(Retryable) as e2:
        handler(event_record(invoice_completed(invoice_uuid=UUID), **ON_TOPIC))
    assert e2.value.delay_s == 4.0
    handler(event_record(invoice_completed(invoice_uuid=UUID), **ON_TOPIC))
    assert [r.action for r in ledger.rows] == ["created"]


def test_auth_error_is_reported_once_and_retried_slowly(env, caplog) -> None:
    handler, finance, ledger, _ = env
    finance.script = [httpx.Response(401, json={"error": "unauthorized", "detail": "bad signature"})] * 3
    caplog.set_level(logging.INFO)
    for _ in range(3):
        with pytest.raises(Retryable) as ei:
            handler(event_record(invoice_completed(invoice_uuid=UUID), **ON_TOPIC))
        assert ei.value.delay_s == 123.0
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "401" in errors[0].getMessage()
    assert "SKYAI_FINANCE_JWT_SECRET" in errors[0].getMessage()
    assert all(SECRET not in r.getMessage() for r in caplog.records)
    assert CONFIG_ERRORS.labels(SERVICE, "finance_unauthorized")._value.get() == 1
    handler(
        event_record(invoice_completed(invoice_uuid=UUID), **ON_TOPIC)
    )  # fixed (e.g. finance reconfigured): cleared
    assert CONFIG_ERRORS.labels(SERVICE, "finance_unauthorized")._value.get() == 0
    assert [r.action for r in ledger.rows] == ["created"]


def test_422_is_rejected_with_the_body(env) -> None:
    handler, finance, ledger, _ = env
    body = {"error": "validation_failed", "errors": [{"field": "invoice_date", "message": "invalid date"}]}
    finance.script = [httpx.Response(422, json=body)]
    with pytest.raises(FinanceRejected) as ei:
        handler(event_record(invoice_completed(invoice_uuid=UUID), **ON_TOPIC))
    assert UUID in str(ei.value) and "validation_failed" in str(ei.value) and "HTTP 422" in str(ei.value)
    assert ledger.rows == []


# ------------------------------------------------------------------------------------------- money gate
def test_an_unreconciled_revision_is_held_not_pushed(env, caplog) -> None:
    handler, finance, ledger, published = env
    with caplog.at_level(logging.WARNING):
        handler(event_record(invoice_completed(**SHORT), **ON_TOPIC))
    assert finance.calls == [] and published == []
    (hold,) = ledger.held.values()
    assert (hold.revision, hold.released_at) == (1, None)
    assert "variance -5959" in hold.reason and "HELD" in caplog.text


@pytest.mark.parametrize(
    "rec_",
    [
        Reconciliation(status="matched"),  # a status without evidence proves nothing
        proven(8000, 790),  # evidence about other totals than the ones being pushed
    ],
)
def test_matched_status_without_matching_arithmetic_is_held(env, rec_: Reconciliation) -> None:
    handler, finance, ledger, _ = env
    handler(event_record(invoice_completed(invoice_uuid=UUID).model_copy(update={"reconciliation": rec_}), **ON_TOPIC))
    assert finance.calls == [] and len(ledger.held) == 1


def test_a_summary_tax_check_on_other_taxes_is_held(env) -> None:
    handler, finance, ledger, _ = env
    evidence = reconcile(
        gross_minor=8692,
        tax_minor=700,
        csv_currency="USD",
        expected=Expected("USD", 8692, 8692, summary_amount_minor=8692, summary_taxes_minor=700, summary_fetched=True),
    )
    handler(
        event_record(invoice_completed(invoice_uuid=UUID).model_copy(update={"reconciliation": evidence}), **ON_TOPIC)
    )  # pushes tax 790, checked 700
    assert finance.calls == [] and len(ledger.held) == 1


def test_release_pushes_exactly_the_held_revision_with_who_and_why(env) -> None:
    handler, finance, ledger, published = env
    handler(event_record(invoice_completed(**SHORT), **ON_TOPIC))
    handler(event_record(invoice_released(invoice_uuid=UUID, released_at=NOW), offset=1, **ON_TOPIC))
    (call,) = finance.calls
    body = json.loads(call.content)
    assert (body["amount_gross_minor"], body["lines_count"]) == (2733, 8)
    assert published[0][0].revision == 1
    hold = ledger.held[(UUID, 1)]
    assert (hold.released_by, hold.release_reason) == ("ops@example.test", "credit note")
    handler(
        event_record(invoice_completed(**SHORT), offset=2, **ON_TOPIC)
    )  # a replayed completion of the released revision: finance has it already
    assert len(finance.calls) == 1


def test_release_of_a_revision_never_held_is_dead_lettered(env) -> None:
    handler, finance, _, _ = env
    with pytest.raises(NotHeld):
        handler(event_record(invoice_released(invoice_uuid=UUID, revision=7, released_at=NOW), **ON_TOPIC))
    assert finance.calls == []


def test_a_newer_reconciling_revision_supersedes_a_hold_and_its_release(env) -> None:
    handler, finance, _, _ = env
    handler(event_record(invoice_completed(revision=1, **SHORT), **ON_TOPIC))
    handler(
        event_record(invoice_completed(invoice_uuid=UUID, revision=2), offset=1, **ON_TOPIC)
    )  # the re-fetched, whole CSV
    assert [json.loads(c.content)["amount_gross_minor"] for c in finance.calls] == [8692]
    with pytest.raises(StaleRelease, match="revision 2 came since"):
        handler(event_record(invoice_released(invoice_uuid=UUID, revision=1, released_at=NOW), offset=2, **ON_TOPIC))
    assert len(finance.calls) == 1


def test_content_revert_uses_a_new_idempotency_key_per_revision(env) -> None:
    handler, finance, _, _ = env
    a, b = (
        invoice_completed(invoice_uuid=UUID, revision=1),
        invoice_completed(invoice_uuid=UUID, revision=2, amount_gross_minor=8693, amount_net_minor=7903).model_copy(
            update={"reconciliation": proven(8693, 790)}
        ),
    )
    handler(event_record(a, **ON_TOPIC))
    handler(event_record(b, offset=1, **ON_TOPIC))
    handler(event_record(invoice_completed(invoice_uuid=UUID, revision=3), offset=2, **ON_TOPIC))  # A again
    keys = [c.headers["idempotency-key"] for c in finance.calls]
    assert len(keys) == 3 and len(set(keys)) == 3
    assert json.loads(finance.calls[-1].content)["amount_gross_minor"] == 8692
