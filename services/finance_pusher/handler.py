"""invoice-completed record → money gate → push decision → finance → ledger → invoice-pushed event.

One consumed record (InvoiceCompleted, or an admin's InvoiceReleased) → at most one push and one event.
Orchestration, not pure: it calls finance (`finance_client.py`), the push ledger (`ledger.py`) and the
producer it is given; the payload and the push decision are pure in `domain.py`. `main.py` builds those
adapters and the consumer loop that commits the offset once `PushHandler` returns.

The money gate (docs/architecture.md): a revision is pushed only when its reconciliation proves it complete
(`shared.reconciliation.unproven_reason`, the arithmetic re-done on the totals being pushed). Anything else
is held: recorded whole in the ledger, not sent. An admin's `InvoiceReleased` (same topic, same key) pushes
exactly the held revision, unless a newer revision came since; a newer revision that reconciles simply
supersedes it.

Crash safety (at-least-once in, effectively-once at finance): the offset is committed only after this
handler returns, and it returns only once finance accepted the invoice, the ledger recorded it and the
invoice-pushed event was delivered. A crash anywhere before that redelivers the record:
- before the ledger write: the revision is pushed again with the same Idempotency-Key and the same body;
  finance replays its first answer (a finance without keys dedups on (tenant, source, external_id) and
  answers "updated"), still one row;
- after the ledger write, before the event: the ledger says "unchanged" (no HTTP call) and the push row
  is still unpublished, so the event is re-emitted from the ledger (same event id: deterministic).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any, Literal, cast

import psycopg

from services.finance_pusher.domain import SOURCE, build_payload, decide, idempotency_key, payload_sha256
from services.finance_pusher.finance_client import (
    FinanceClient,
    FinanceConfigError,
    FinanceRejected,
    FinanceUnavailable,
    ImportResult,
)
from services.finance_pusher.ledger import Ledger, PushRecord
from shared.events import InvoiceCompleted, InvoicePushed, InvoiceReleased, utcnow
from shared.kafka import Record, Retryable
from shared.metrics import CONFIG_ERRORS
from shared.reconciliation import unproven_reason
from shared.settings import Settings

log = logging.getLogger(__name__)

SERVICE = "finance-pusher"

# publish(event, account): produce invoice-pushed keyed by invoice uuid and wait for its delivery.
Publish = Callable[[InvoicePushed, str], None]


def pushed_event(push: PushRecord) -> InvoicePushed:
    return InvoicePushed(
        invoice_uuid=push.invoice_uuid,
        revision=push.revision,
        finance_invoice_id=push.finance_invoice_id,
        action=cast(Literal["created", "updated"], push.action),  # finance's answer, as the ledger stored it
        payload_sha256=push.payload_sha256,
        pushed_at=push.pushed_at,
    )


CONFIG_REASONS = ("finance_unauthorized", "finance_forbidden", "finance_endpoint")


class NotHeld(ValueError):
    """A release for a revision the pusher never held (dead-lettered: the admin named the wrong thing)."""


class StaleRelease(ValueError):
    """A release for a held revision that a newer revision has replaced (dead-lettered, never pushed)."""


def _config_reason(status: int) -> str:
    return {401: "finance_unauthorized", 403: "finance_forbidden"}.get(status, "finance_endpoint")


class PushHandler:
    def __init__(
        self,
        settings: Settings,
        client: FinanceClient,
        ledger: Ledger,
        publish: Publish,
        *,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.tenant_id = settings.skyai_finance_tenant_id
        self.auth_retry_s = settings.skyai_finance_auth_retry_s
        self.client = client
        self.ledger = ledger
        self.publish = publish
        self.clock = clock
        self._config_error: str | None = None  # reason label while reported, so it is reported once
        self.calls = 0
        self.skipped = 0
        self.held = 0
        self._sender: str | None = None  # the ledger's identity, read on first push
        for reason in CONFIG_REASONS:  # a (re)started pusher knows of no configuration error yet
            CONFIG_ERRORS.labels(SERVICE, reason).set(0)

    def __call__(self, rec: Record) -> None:
        env, data = rec.event()
        try:
            if isinstance(data, InvoiceReleased):
                self._release(data)
                return
            if not isinstance(data, InvoiceCompleted):
                raise ValueError(f"unexpected event type {env.type!r} on the invoice-completed topic")
            payload = build_payload(data, tenant_id=self.tenant_id)  # InvalidInvoice → dead-lettered
            why = unproven_reason(data.reconciliation, data.amount_gross_minor, data.amount_tax_minor)
            if why is not None and not self._released(data):
                self._hold(data, why, env.account)
                return
            self._handle(data, payload, payload_sha256(payload), env.account)
        except psycopg.Error as e:
            # The invoice itself is fine: a database problem must make it wait, never dead-letter it.
            detail = (str(e).splitlines() or [""])[0][:200]
            raise Retryable(f"ledger database unavailable: {type(e).__name__}: {detail}", parkable=False) from e

    # ----------------------------------------------------------------------------------- money gate
    def _released(self, inv: InvoiceCompleted) -> bool:
        hold = self.ledger.hold(inv.invoice_uuid, inv.revision)
        return hold is not None and hold.released_at is not None

    def _hold(self, inv: InvoiceCompleted, why: str, account: str) -> None:
        """Not proven complete: never sent. Kept whole for an admin's release."""
        current = self.ledger.current(inv.invoice_uuid)
        if current is not None and inv.revision < current.state.revision:
            log.debug("invoice %s revision %d: stale and unproven, ignored", inv.invoice_uuid, inv.revision)
            return
        first = self.ledger.record_hold(
            invoice_uuid=inv.invoice_uuid,
            revision=inv.revision,
            account=account,
            completion=inv.model_dump(mode="json"),
            reason=why,
        )
        if first:
            self.held += 1
            log.warning(
                "HELD invoice %s revision %d, not pushed to finance: %s (gross %d; release with "
                "`cloudbill invoices release %s --reason ...` or wait for a re-fetch)",
                inv.invoice_uuid,
                inv.revision,
                why,
                inv.amount_gross_minor,
                inv.invoice_uuid,
            )

    def _release(self, ev: InvoiceReleased) -> None:
        """An admin accepts a held revision: push exactly what was held (unless a newer revision came since)."""
        hold = self.ledger.hold(ev.invoice_uuid, ev.revision)
        if hold is None:
            raise NotHeld(f"invoice {ev.invoice_uuid} revision {ev.revision} is not held by the finance pusher")
        latest = self.ledger.latest_revision(ev.invoice_uuid)
        if latest is not None and latest > ev.revision:
            raise StaleRelease(
                f"invoice {ev.invoice_uuid}: release of revision {ev.revision} by {ev.released_by} refused, "
                f"revision {latest} came since"
            )
        self.ledger.mark_released(
            ev.invoice_uuid, ev.revision, released_by=ev.released_by, reason=ev.reason, released_at=ev.released_at
        )
        inv = InvoiceCompleted.model_validate(hold.completion)
        log.warning(
            "invoice %s revision %d RELEASED by %s (%s): pushing despite %s",
            ev.invoice_uuid,
            ev.revision,
            ev.released_by,
            ev.reason,
            hold.reason,
        )
        payload = build_payload(inv, tenant_id=self.tenant_id)
        self._handle(inv, payload, payload_sha256(payload), hold.account)

    def _handle(self, inv: InvoiceCompleted, payload: dict[str, Any], digest: str, account: str) -> None:
        current = self.ledger.current(inv.invoice_uuid)
        decision = decide(current.state if current else None, inv.revision, digest)
        if decision.verdict != "push" and current is not None:
            self.skipped += 1
            level = logging.DEBUG if decision.verdict == "unchanged" else logging.INFO
            log.log(
                level,
                "not pushing invoice %s revision %d (no HTTP call): %s",
                inv.invoice_uuid,
                inv.revision,
                decision.reason,
            )
            if decision.verdict == "unchanged" and inv.revision > current.state.revision:
                self.ledger.note_revision(inv.invoice_uuid, inv.revision)
            if current.last_push.published_at is None:
                log.info("re-emitting invoice-pushed for invoice %s (delivery not confirmed before)", inv.invoice_uuid)
                self._publish(current.last_push)
            return

        if self._sender is None:
            self._sender = self.ledger.sender_id()
        key = idempotency_key(self.tenant_id, SOURCE, inv.invoice_uuid, inv.revision, digest, self._sender)
        result = self._push(inv, payload, key)
        push = self.ledger.record_push(
            invoice_uuid=inv.invoice_uuid,
            revision=inv.revision,
            payload_sha256=digest,
            idempotency_key=key,
            finance_invoice_id=result.invoice_id,
            action=result.action,
            account=account,
            pushed_at=self.clock(),
        )
        log.info(
            "pushed invoice %s revision %d to finance: %s as %s (%s)",
            inv.invoice_uuid,
            inv.revision,
            result.action,
            result.invoice_id,
            decision.reason,
        )
        self._publish(push)

    def _push(self, inv: InvoiceCompleted, payload: dict[str, Any], key: str) -> ImportResult:
        self.calls += 1
        try:
            result = self.client.import_invoice(payload, idempotency_key=key)
        except FinanceUnavailable as e:
            raise Retryable(f"invoice {inv.invoice_uuid}: {e}", delay_s=e.retry_after_s) from e
        except FinanceConfigError as e:
            self._report_config_error(e)
            raise Retryable(
                f"invoice {inv.invoice_uuid} waits: finance configuration error (HTTP {e.status})",
                delay_s=self.auth_retry_s,
                parkable=False,  # every invoice would fail alike: parking them all helps nobody
            ) from e
        except FinanceRejected as e:
            raise FinanceRejected(
                f"invoice {inv.invoice_uuid} revision {inv.revision}: {e}", status=e.status, body=e.body
            ) from e
        if result.action not in ("created", "updated"):
            raise Retryable(f"invoice {inv.invoice_uuid}: finance answered an unknown action {result.action!r}")
        self._clear_config_error()
        return result

    def _publish(self, push: PushRecord) -> None:
        try:
            self.publish(pushed_event(push), push.account)
        except Exception as e:  # delivery failed: the ledger keeps it unpublished, the retry re-emits it
            raise Retryable(f"invoice-pushed for {push.invoice_uuid} not delivered: {e}", parkable=False) from e
        self.ledger.mark_published(push.id)

    # ----------------------------------------------------------------------------- configuration errors
    def _report_config_error(self, e: FinanceConfigError) -> None:
        reason = _config_reason(e.status)
        if self._config_error == reason:
            return
        if self._config_error is not None:
            CONFIG_ERRORS.labels(SERVICE, self._config_error).set(0)
        self._config_error = reason
        CONFIG_ERRORS.labels(SERVICE, reason).set(1)
        log.error(
            "CONFIGURATION ERROR: %s. Check SKYAI_FINANCE_URL, SKYAI_FINANCE_JWT_SECRET, SKYAI_FINANCE_JWT_ALGORITHM "
            "and the identity (SKYAI_FINANCE_TENANT_ID, SKYAI_FINANCE_ROLES). Nothing is dead-lettered: invoices "
            "wait and the push is retried every %gs.",
            e,
            self.auth_retry_s,
            extra={"config_error": reason},
        )

    def _clear_config_error(self) -> None:
        if self._config_error is not None:
            CONFIG_ERRORS.labels(SERVICE, self._config_error).set(0)
            log.warning("finance accepts the pusher's credentials again (%s cleared)", self._config_error)
            self._config_error = None
