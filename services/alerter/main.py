"""`cloudbill run alerter`: balances and completed invoices → budget and anomaly alerts (once each).

Alerts go to billing.alerts.v1 (the projector serves them at GET /api/v1/billing/alerts), to the webhook when
ALERT_WEBHOOK_URL is set, and to Prometheus (METRICS_PORT) as MTD spend, forecast and budget-ratio gauges.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from services.alerter.adapters import AlertStore, InvoiceCosts, WebhookSender
from services.alerter.handler import SERVICE, AlertHandler, Raiser, Sweeper
from shared.db import make_pool, migrate
from shared.events import BillingAlert
from shared.kafka import ConsumerLoop, EventProducer, StopSignal, create_topics
from shared.metrics import serve
from shared.settings import Settings
from shared.topics import ALERTS, STAGES, group_id

log = logging.getLogger(__name__)


def webhook_sender(settings: Settings) -> WebhookSender | None:
    url = settings.alert_webhook_url.get_secret_value() if settings.alert_webhook_url else ""
    if not url:
        return None
    secret = settings.alert_webhook_secret.get_secret_value() if settings.alert_webhook_secret else None
    if not secret:
        log.warning("ALERT_WEBHOOK_SECRET is not set: alert webhooks are sent unsigned")
    return WebhookSender(url, secret, timeout_s=settings.alert_webhook_timeout_s)


def run(settings: Settings, stop: StopSignal | None = None, *, group: str | None = None) -> None:
    """Until stop/SIGTERM. `group`: another consumer group (tests: a replica replaying everything at once)."""
    if stop is None:
        stop = StopSignal().install()
        serve(settings.metrics_port)
    migrate(settings, ["alerter"])
    create_topics(settings)
    pool = make_pool(settings, name=SERVICE)
    producer = EventProducer(settings, SERVICE)
    target = ALERTS.name(settings.kafka_topic_prefix)
    sender = webhook_sender(settings)

    def publish(account: str, alerts: Sequence[BillingAlert]) -> None:
        for a in alerts:
            producer.publish(target, account, a, account)
        producer.flush()

    store = AlertStore(pool)
    sweeper: Sweeper | None = None
    try:
        raiser = Raiser(store, publish, webhook=sender is not None, wake=lambda: sweeper.wake() if sweeper else None)
        sweeper = Sweeper(settings, store, InvoiceCosts(pool), raiser, sender).start()
        if sender is not None:
            log.info("alerter: webhooks to %s", sender.host)
        budgets = settings.budgets_minor()
        log.info(
            "alerter: budgets for %s, thresholds %s%%",
            ", ".join(sorted(budgets)) or "no account (BUDGETS unset: anomalies only)",
            "/".join(map(str, settings.alert_thresholds)),
        )
        loop = ConsumerLoop(
            settings,
            service=SERVICE,
            group=group or group_id(settings, SERVICE),
            topics=STAGES[SERVICE].topics(settings),
            handler=AlertHandler(settings, store, raiser),
            stop=stop,
        )
        loop.run()
    finally:
        if sweeper is not None:
            sweeper.stop()
        try:
            producer.close()
        finally:
            if sender is not None:
                sender.close()
            pool.close()
