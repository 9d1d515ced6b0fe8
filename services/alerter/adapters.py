"""The alerter's adapters: its Postgres ledger (`alerter` schema), the read model's invoice costs, the webhook.

The ledger is what makes an alert happen once: `alerter.alerts` is keyed by the alert's id, inserted with
ON CONFLICT DO NOTHING, so of two replicas (or a replay, or a restart) exactly one insert wins and only the
winner publishes the event and queues the webhook. Publishing and delivering are then retried from the row
(an outbox) until confirmed, so a crash between "decided" and "told" loses nothing.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any
from urllib.parse import urlsplit

import httpx
from psycopg.types.json import Jsonb

from services.alerter.domain import CostItem, Snapshot
from shared.db import DictPool
from shared.events import BillingAlert

log = logging.getLogger(__name__)

A = "alerter"
R = "readmodel"


@dataclass(frozen=True)
class PendingWebhook:
    alert_id: str
    account: str
    event: dict[str, Any]
    attempts: int


class AlertStore:
    """The `alerter` schema: balance snapshots, the once-only alert ledger and its outbox."""

    def __init__(self, pool: DictPool) -> None:
        self.pool = pool

    # ------------------------------------------------------------------------------------------- balances
    def save_balance(self, account: str, at: datetime, mtd_usage_minor: int, currency: str) -> None:
        with self.pool.connection() as conn:
            conn.execute(
                f"INSERT INTO {A}.balances (account, generated_at, mtd_usage_minor, currency) VALUES (%s, %s, %s, %s)"
                " ON CONFLICT (account, generated_at) DO UPDATE SET mtd_usage_minor = EXCLUDED.mtd_usage_minor,"
                " currency = EXCLUDED.currency",
                (account, at, mtd_usage_minor, currency),
            )

    def snapshots(self, account: str, since: datetime, until: datetime) -> list[Snapshot]:
        with self.pool.connection() as conn:
            rows = conn.execute(
                f"SELECT generated_at, mtd_usage_minor FROM {A}.balances WHERE account = %s"
                " AND generated_at >= %s AND generated_at <= %s ORDER BY generated_at",
                (account, since, until),
            ).fetchall()
        return [Snapshot(r["generated_at"], r["mtd_usage_minor"]) for r in rows]

    def last_before(self, account: str, before: datetime) -> Snapshot | None:
        """The last snapshot before a month starts: that month's total as the poller last saw it."""
        with self.pool.connection() as conn:
            row = conn.execute(
                f"SELECT generated_at, mtd_usage_minor FROM {A}.balances WHERE account = %s AND generated_at < %s"
                " ORDER BY generated_at DESC LIMIT 1",
                (account, before),
            ).fetchone()
        return Snapshot(row["generated_at"], row["mtd_usage_minor"]) if row else None

    # ------------------------------------------------------------------------------------------------ alerts
    def insert_new(self, account: str, alerts: Sequence[BillingAlert], *, webhook: bool) -> list[BillingAlert]:
        """Record the alerts; returns those recorded now (the others were raised before, by anyone)."""
        if not alerts:
            return []
        new: list[BillingAlert] = []
        with self.pool.connection() as conn, conn.transaction():
            for a in alerts:
                row = conn.execute(
                    f"INSERT INTO {A}.alerts (alert_id, account, kind, period, event, webhook_state)"
                    " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (alert_id) DO NOTHING RETURNING alert_id",
                    (
                        a.alert_id,
                        account,
                        a.kind,
                        a.period,
                        Jsonb(a.model_dump(mode="json")),
                        "pending" if webhook else "disabled",
                    ),
                ).fetchone()
                if row is not None:
                    new.append(a)
        return new

    def mark_published(self, alert_ids: Sequence[str]) -> None:
        with self.pool.connection() as conn:
            conn.execute(
                f"UPDATE {A}.alerts SET published_at = now() WHERE alert_id = ANY(%s) AND published_at IS NULL",
                (list(alert_ids),),
            )

    def unpublished(self, older_than_s: float = 0.0, limit: int = 500) -> list[tuple[str, BillingAlert]]:
        """Alerts whose event was never confirmed (a crash between the insert and the delivery report), raised
        more than `older_than_s` ago (younger ones are still being published by their raiser)."""
        with self.pool.connection() as conn:
            rows = conn.execute(
                f"SELECT account, event FROM {A}.alerts WHERE published_at IS NULL"
                " AND raised_at <= now() - make_interval(secs => %s) ORDER BY seq LIMIT %s",
                (older_than_s, limit),
            ).fetchall()
        return [(r["account"], BillingAlert.model_validate(r["event"])) for r in rows]

    def claim_webhook(self, lease_s: float) -> PendingWebhook | None:
        """The oldest due webhook, leased to this caller (SKIP LOCKED: replicas never deliver one at once)."""
        with self.pool.connection() as conn, conn.transaction():
            row = conn.execute(
                f"UPDATE {A}.alerts SET webhook_lease_until = now() + make_interval(secs => %s),"
                " webhook_attempts = webhook_attempts + 1"
                f" WHERE alert_id = (SELECT alert_id FROM {A}.alerts WHERE webhook_state = 'pending'"
                "   AND webhook_next_at <= now() AND (webhook_lease_until IS NULL OR webhook_lease_until < now())"
                "   ORDER BY seq LIMIT 1 FOR UPDATE SKIP LOCKED)"
                " RETURNING alert_id, account, event, webhook_attempts",
                (lease_s,),
            ).fetchone()
        if row is None:
            return None
        return PendingWebhook(row["alert_id"], row["account"], row["event"], row["webhook_attempts"])

    def webhook_delivered(self, alert_id: str) -> None:
        with self.pool.connection() as conn:
            conn.execute(
                f"UPDATE {A}.alerts SET webhook_state = 'delivered', webhook_delivered_at = now(),"
                " webhook_lease_until = NULL, webhook_last_error = NULL WHERE alert_id = %s",
                (alert_id,),
            )

    def webhook_failed(self, alert_id: str, error: str, *, retry_in_s: float | None) -> None:
        """Try again after `retry_in_s`, or give up (None): the alert stays visible with its last error."""
        with self.pool.connection() as conn:
            conn.execute(
                f"UPDATE {A}.alerts SET webhook_lease_until = NULL, webhook_last_error = %s,"
                " webhook_state = CASE WHEN %s::float8 IS NULL THEN 'failed' ELSE 'pending' END,"
                " webhook_next_at = now() + make_interval(secs => COALESCE(%s::float8, 0)) WHERE alert_id = %s",
                (error[:500], retry_in_s, retry_in_s, alert_id),
            )

    # ------------------------------------------------------------------------------------- invoice checks
    def queue_invoice_check(self, check: InvoiceCheck) -> None:
        with self.pool.connection() as conn:
            conn.execute(
                f"INSERT INTO {A}.invoice_checks (invoice_uuid, revision, account, period, invoice_date, net_minor,"
                " currency) VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                (
                    check.invoice_uuid,
                    check.revision,
                    check.account,
                    check.period,
                    check.invoice_date,
                    check.net_minor,
                    check.currency,
                ),
            )

    def pending_invoice_checks(self, limit: int = 50) -> list[InvoiceCheck]:
        with self.pool.connection() as conn:
            rows = conn.execute(
                f"SELECT invoice_uuid, revision, account, period, invoice_date, net_minor, currency"
                f" FROM {A}.invoice_checks WHERE checked_at IS NULL ORDER BY period, invoice_uuid, revision LIMIT %s",
                (limit,),
            ).fetchall()
        return [InvoiceCheck(**r) for r in rows]

    def invoice_checked(self, invoice_uuid: str, revision: int, outcome: str) -> None:
        with self.pool.connection() as conn:
            conn.execute(
                f"UPDATE {A}.invoice_checks SET checked_at = now(), outcome = %s"
                " WHERE invoice_uuid = %s AND revision = %s",
                (outcome, invoice_uuid, revision),
            )


@dataclass(frozen=True)
class InvoiceCheck:
    """A completed invoice revision waiting to be checked for new products and resources."""

    invoice_uuid: str
    revision: int
    account: str
    period: date
    invoice_date: date
    net_minor: int
    currency: str


class InvoiceCosts:
    """An invoice's cost by product and by resource, from the read model's attributed lines (served revision).

    Read from the read model rather than from the cost-line topic: the projector already holds each invoice's
    served line set, replaced whole by a new revision, so the alerter's work per invoice is one query, whatever
    the number of lines, and better attribution later changes what it sees without changing it."""

    def __init__(self, pool: DictPool) -> None:
        self.pool = pool

    def served_revision(self, invoice_uuid: str) -> int | None:
        with self.pool.connection() as conn:
            row = conn.execute(f"SELECT revision FROM {R}.invoices WHERE invoice_uuid = %s", (invoice_uuid,)).fetchone()
        return row["revision"] if row else None

    def by_product(self, invoice_uuid: str) -> list[CostItem]:
        with self.pool.connection() as conn:
            rows = conn.execute(
                f"SELECT product, sum(amount_minor)::bigint AS amount FROM {R}.cost_lines"
                " WHERE invoice_uuid = %s AND current AND NOT is_tax GROUP BY product ORDER BY product",
                (invoice_uuid,),
            ).fetchall()
        return [CostItem(r["product"], r["product"], r["amount"]) for r in rows]

    def by_resource(self, invoice_uuid: str) -> list[CostItem]:
        with self.pool.connection() as conn:
            rows = conn.execute(
                f"SELECT {_RESOURCE_KEY} AS key, min(COALESCE(name, description)) AS label,"
                f" sum(amount_minor)::bigint AS amount FROM {R}.cost_lines"
                " WHERE invoice_uuid = %s AND current AND NOT is_tax AND kind IS NOT NULL AND name IS NOT NULL"
                " GROUP BY 1 ORDER BY 1",
                (invoice_uuid,),
            ).fetchall()
        return [CostItem(r["key"], f"{r['key'].split(':', 1)[0]} {r['label']}", r["amount"]) for r in rows]

    def seen_before(self, account: str, period: date, since: date) -> tuple[bool, set[str], set[str]]:
        """(any invoice in [since, period), its products, its resources) for one account."""
        with self.pool.connection() as conn:
            rows = conn.execute(
                f"SELECT DISTINCT product, CASE WHEN kind IS NOT NULL AND name IS NOT NULL THEN {_RESOURCE_KEY} END"
                f" AS key FROM {R}.cost_lines WHERE account = %s AND current AND period >= %s AND period < %s",
                (account, since, period),
            ).fetchall()
        return bool(rows), {r["product"] for r in rows}, {r["key"] for r in rows if r["key"]}


# A resource is its attributed id when there is one, else its kind and (case-folded) name.
_RESOURCE_KEY = "kind || ':' || COALESCE(resource_id, lower(name))"


class WebhookError(Exception):
    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    """`sha256=<hex>` of HMAC-SHA256(secret, "<timestamp>.<body>"): the receiver recomputes it to trust the body
    and rejects old timestamps (replays)."""
    return "sha256=" + hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


class WebhookSender:
    """POSTs an alert's Slack-compatible JSON, signed. Its URL and secret are never logged (only the host)."""

    def __init__(
        self, url: str, secret: str | None, *, timeout_s: float = 10.0, client: httpx.Client | None = None
    ) -> None:
        self._url = url
        self._secret = secret.encode() if secret else None
        self.host = urlsplit(url).hostname or "?"
        self.client = client or httpx.Client(timeout=timeout_s, follow_redirects=False)

    def send(self, alert_id: str, payload: dict[str, Any]) -> None:
        body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
        ts = str(int(time.time()))
        headers = {
            "content-type": "application/json",
            "user-agent": "cloudbill-alerter",
            "x-cloudbill-alert-id": alert_id,
            "x-cloudbill-timestamp": ts,
        }
        if self._secret:
            headers["x-cloudbill-signature"] = sign(self._secret, ts, body)
        try:
            r = self.client.post(self._url, content=body, headers=headers)
        except httpx.HTTPError as e:
            raise WebhookError(f"webhook {self.host}: {type(e).__name__}", retryable=True) from None
        if r.status_code < 300:
            return
        retryable = r.status_code >= 500 or r.status_code in (408, 425, 429)
        raise WebhookError(f"webhook {self.host}: HTTP {r.status_code}", retryable=retryable)

    def close(self) -> None:
        self.client.close()
