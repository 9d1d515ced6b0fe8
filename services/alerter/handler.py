"""Balance snapshots and completed invoices → alerts, raised once, published, delivered.

`AlertHandler` is the consumer's handler (billing.balance.v1, billing.invoice-completed.v1). A balance is
evaluated at once: budget thresholds on the month-to-date usage and on the forecast, and a spike on the day
that just ended. A completed invoice is queued and checked by the `Sweeper` once the read model serves its
lines (the projector may be behind), so a slow projector never blocks the partition.

Once only (services/alerter/adapters.py): an alert is inserted under its id; only the insert that wins
publishes it (billing.alerts.v1, key = account, event id derived from the alert id) and queues its webhook. The handler
returns, and the offset is committed, only after the event's delivery is confirmed and recorded; a crash in
between leaves the row unpublished and the sweeper re-sends it (same id: the projector keeps one row).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal

import psycopg
from prometheus_client import Counter, Gauge

from services.alerter.adapters import AlertStore, InvoiceCheck, InvoiceCosts, WebhookError, WebhookSender
from services.alerter.domain import Rules, balance_alerts, new_cost_alerts, slack_payload
from shared.events import Balance, BillingAlert, InvoiceCompleted, InvoiceReleased
from shared.forecast import forecast, month_start
from shared.kafka import Record, Retryable
from shared.money import parse_minor
from shared.retry import backoff_s
from shared.settings import Settings

log = logging.getLogger(__name__)

SERVICE = "alerter"

MTD_SPEND = Gauge("cloudbill_mtd_spend_minor", "Month-to-date usage, pre-tax (minor units)", ["account", "currency"])
FORECAST_SPEND = Gauge(
    "cloudbill_forecast_spend_minor", "Month-end usage forecast, pre-tax (minor units)", ["account", "currency"]
)
BUDGET = Gauge("cloudbill_budget_minor", "Monthly budget (minor units)", ["account", "currency"])
BUDGET_RATIO = Gauge("cloudbill_budget_ratio", "Month-to-date usage / monthly budget", ["account"])
BUDGET_FORECAST_RATIO = Gauge("cloudbill_budget_forecast_ratio", "Month-end forecast / monthly budget", ["account"])
ALERTS_RAISED = Counter("cloudbill_alerts_raised_total", "Alerts raised (once each)", ["kind"])
WEBHOOK_DELIVERIES = Counter(
    "cloudbill_alert_webhook_deliveries_total", "Alert webhook attempts by outcome", ["outcome"]
)

# publish(account, alerts): produce them on billing.alerts.v1 and wait for their delivery (raises otherwise).
Publish = Callable[[str, Sequence[BillingAlert]], None]


def rules_from(settings: Settings) -> Rules:
    return Rules(
        thresholds=tuple(settings.alert_thresholds),
        forecast_min_days=settings.alert_forecast_min_days,
        spike_factor=Decimal(str(settings.anomaly_spike_factor)),
        baseline_days=settings.anomaly_baseline_days,
        min_increase_minor=parse_minor(settings.anomaly_min_increase, settings.currency),
        new_cost_min_minor=parse_minor(settings.anomaly_new_cost_min, settings.currency),
        new_cost_share_pct=settings.anomaly_new_cost_share_pct,
        lookback_months=settings.anomaly_lookback_months,
    )


class Raiser:
    """Insert (once), publish, record: shared by the handler and the sweeper."""

    def __init__(self, store: AlertStore, publish: Publish, *, webhook: bool, wake: Callable[[], None]) -> None:
        self.store = store
        self.publish = publish
        self.webhook = webhook
        self.wake = wake

    def raise_(self, account: str, alerts: Sequence[BillingAlert]) -> list[BillingAlert]:
        new = self.store.insert_new(account, alerts, webhook=self.webhook)
        if not new:
            return []
        for a in new:
            ALERTS_RAISED.labels(a.kind).inc()
            log.warning("ALERT %s %s: %s", a.kind, a.alert_id, a.message)
        self.publish(account, new)
        self.store.mark_published([a.alert_id for a in new])
        if self.webhook:
            self.wake()
        return new


class AlertHandler:
    def __init__(self, settings: Settings, store: AlertStore, raiser: Raiser) -> None:
        self.rules = rules_from(settings)
        self.budgets = settings.budgets_minor()
        self.window_days = settings.forecast_window_days
        self.store = store
        self.raiser = raiser
        for account, amount in self.budgets.items():
            BUDGET.labels(account, settings.currency).set(amount)

    def __call__(self, rec: Record) -> None:
        env, data = rec.event()
        try:
            if isinstance(data, Balance):
                self._balance(env.account, data)
            elif isinstance(data, InvoiceCompleted):
                self.store.queue_invoice_check(
                    InvoiceCheck(
                        invoice_uuid=data.invoice_uuid,
                        revision=data.revision,
                        account=env.account,
                        period=date.fromisoformat(data.period),
                        invoice_date=data.invoice_date,
                        net_minor=data.amount_net_minor,
                        currency=data.currency,
                    )
                )
            elif isinstance(data, InvoiceReleased):
                return  # an admin's release changes no amount: nothing to alert on
            else:
                raise ValueError(f"the alerter does not consume {env.type} records ({rec.topic})")
        except psycopg.Error as e:
            raise Retryable(f"alerter database unavailable: {type(e).__name__}", parkable=False) from e

    def _balance(self, account: str, b: Balance) -> None:
        at = b.generated_at
        self.store.save_balance(account, at, b.month_to_date_usage_minor, b.currency)
        lookback = timedelta(days=max(self.window_days, self.rules.baseline_days) + 2)
        snaps = self.store.snapshots(account, at - lookback, at)
        start = datetime.combine(month_start(at.astimezone(UTC)), time(), tzinfo=UTC)
        prev = self.store.last_before(account, start)
        prev_total = prev.mtd_usage_minor if prev and prev.at >= start - timedelta(days=2) else None
        fc = forecast(snaps, as_of=at, previous_month_total_minor=prev_total, window_days=self.window_days)
        if fc is None:
            return
        budget = self.budgets.get(account)
        MTD_SPEND.labels(account, b.currency).set(fc.mtd_minor)
        FORECAST_SPEND.labels(account, b.currency).set(fc.forecast_minor)
        if budget:
            BUDGET_RATIO.labels(account).set(fc.mtd_minor / budget)
            BUDGET_FORECAST_RATIO.labels(account).set(fc.forecast_minor / budget)
        self.raiser.raise_(account, balance_alerts(account, snaps, fc, budget, self.rules, b.currency))


class Sweeper:
    """The alerter's background duties, in one thread: invoice checks whose lines the read model now serves,
    events never confirmed, and webhooks due (leased, so replicas share the work without doubling it)."""

    def __init__(
        self,
        settings: Settings,
        store: AlertStore,
        costs: InvoiceCosts,
        raiser: Raiser,
        sender: WebhookSender | None,
        *,
        interval_s: float = 1.0,
        republish_after_s: float = 30.0,
    ) -> None:
        self.rules = rules_from(settings)
        self.store = store
        self.costs = costs
        self.raiser = raiser
        self.sender = sender
        self.interval_s = interval_s
        self.republish_after_s = republish_after_s
        self.max_attempts = settings.alert_webhook_max_attempts
        self.backoff_s = settings.alert_webhook_backoff_s
        self.max_backoff_s = settings.alert_webhook_max_backoff_s
        self.lease_s = max(30.0, settings.alert_webhook_timeout_s * 3)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------------------------------- lifecycle
    def wake(self) -> None:
        self._wake.set()

    def start(self) -> Sweeper:
        self._thread = threading.Thread(target=self._run, name="alerter-sweeper", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 15.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.sweep_once()
            except psycopg.Error as e:
                log.warning("alerter sweep: database unavailable (%s), trying again", type(e).__name__)
            except Exception:
                log.exception("alerter sweep failed, trying again")
            self._wake.wait(self.interval_s)
            self._wake.clear()

    # ---------------------------------------------------------------------------------------------- duties
    def sweep_once(self) -> None:
        self.check_invoices()
        self.republish()
        while not self._stop.is_set() and self.deliver_one():
            pass

    def check_invoices(self) -> None:
        for check in self.store.pending_invoice_checks():
            served = self.costs.served_revision(check.invoice_uuid)
            if served is None or served < check.revision:
                continue  # the projector has not served these lines yet
            if served > check.revision:
                self.store.invoice_checked(check.invoice_uuid, check.revision, "superseded")
                continue
            self.raiser.raise_(check.account, self.invoice_alerts(check))
            self.store.invoice_checked(check.invoice_uuid, check.revision, "checked")

    def invoice_alerts(self, check: InvoiceCheck) -> list[BillingAlert]:
        r = self.rules
        since = check.period
        for _ in range(r.lookback_months):
            since = month_start(since - timedelta(days=1))
        had_previous, products, resources = self.costs.seen_before(check.account, check.period, since)
        detected = datetime.combine(check.invoice_date, time(), tzinfo=UTC)
        args = (check.period, detected, check.net_minor)
        return new_cost_alerts(
            check.account,
            "anomaly_new_product",
            *args,
            self.costs.by_product(check.invoice_uuid),
            products,
            had_previous,
            r,
            check.currency,
        ) + new_cost_alerts(
            check.account,
            "anomaly_new_resource",
            *args,
            self.costs.by_resource(check.invoice_uuid),
            resources,
            had_previous,
            r,
            check.currency,
        )

    def republish(self) -> None:
        """Events never confirmed (a crash after the insert): sent again under the same id."""
        by_account: dict[str, list[BillingAlert]] = {}
        for acc, a in self.store.unpublished(older_than_s=self.republish_after_s):
            by_account.setdefault(acc, []).append(a)
        for acc, alerts in by_account.items():
            self.raiser.publish(acc, alerts)
            self.store.mark_published([a.alert_id for a in alerts])
            log.info("re-sent %d unconfirmed alert event(s) of account %s", len(alerts), acc)

    def deliver_one(self) -> bool:
        """Deliver the oldest due webhook; False when none is due."""
        if self.sender is None:
            return False
        job = self.store.claim_webhook(self.lease_s)
        if job is None:
            return False
        alert = BillingAlert.model_validate(job.event)
        try:
            self.sender.send(job.alert_id, slack_payload(alert, job.account))
        except WebhookError as e:
            last = job.attempts >= self.max_attempts or not e.retryable
            delay = None if last else backoff_s(job.attempts, base=self.backoff_s, cap=self.max_backoff_s)
            WEBHOOK_DELIVERIES.labels("failed" if last else "retry").inc()
            log.warning(
                "alert %s webhook attempt %d failed: %s%s",
                job.alert_id,
                job.attempts,
                e,
                " (giving up)" if last else f" (next in {delay:.1f}s)",
            )
            self.store.webhook_failed(job.alert_id, str(e), retry_in_s=delay)
            return True
        WEBHOOK_DELIVERIES.labels("delivered").inc()
        self.store.webhook_delivered(job.alert_id)
        log.info("alert %s delivered to the webhook (%s)", job.alert_id, self.sender.host)
        return True
