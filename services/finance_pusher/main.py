"""`cloudbill run finance-pusher`: invoice-completed → finance import endpoint → invoice-pushed.

Without finance configuration the pusher stays idle and does not even join its consumer group, so
nothing is committed: configured later, it pushes everything not yet pushed from where the group left off.
"""

from __future__ import annotations

import logging

from services.finance_pusher.finance_client import FinanceClient
from services.finance_pusher.handler import SERVICE, PushHandler
from services.finance_pusher.ledger import Ledger
from shared.db import make_pool, migrate
from shared.events import InvoicePushed
from shared.kafka import ConsumerLoop, EventProducer, StopSignal, create_topics
from shared.metrics import serve
from shared.settings import Settings
from shared.topics import INVOICE_COMPLETED, INVOICE_PUSHED, group_id, retry_topic

log = logging.getLogger(__name__)


def idle_reason(settings: Settings) -> str | None:
    """Why the pusher cannot push (None: it can). Never names the secret's value."""
    if not settings.skyai_finance_url:
        return "SKYAI_FINANCE_URL is empty"
    if settings.skyai_finance_jwt_secret is None or not settings.skyai_finance_jwt_secret.get_secret_value():
        return "SKYAI_FINANCE_JWT_SECRET is not set"
    return None


def run(settings: Settings, stop: StopSignal | None = None) -> None:
    if stop is None:
        stop = StopSignal().install()
        serve(settings.metrics_port)
    prefix = settings.kafka_topic_prefix
    source = INVOICE_COMPLETED.name(prefix)

    if not settings.finance_configured:
        log.warning(
            "finance pusher idle: %s. Not consuming %s; invoices wait there and are pushed once finance is configured.",
            idle_reason(settings) or "finance is not configured",
            source,
        )
        while not stop.wait(1.0):
            pass
        return

    migrate(settings, ["finance_pusher"])
    create_topics(settings)
    pool = make_pool(settings, name=SERVICE)
    producer = EventProducer(settings, SERVICE)
    target = INVOICE_PUSHED.name(prefix)

    def publish(event: InvoicePushed, account: str) -> None:
        producer.publish(target, event.invoice_uuid, event, account)
        producer.flush()

    try:
        with FinanceClient.from_settings(settings) as client:
            handler = PushHandler(settings, client, Ledger(pool), publish)
            loop = ConsumerLoop(
                settings,
                service=SERVICE,
                group=group_id(settings, SERVICE),
                topics=[source],
                handler=handler,
                stop=stop,
                max_backoff_s=settings.skyai_finance_max_backoff_s,
                retry_topic=retry_topic(settings, SERVICE),
            )
            log.info("finance pusher pushing to %s as tenant %s", settings.skyai_finance_url, handler.tenant_id)
            loop.run()
    finally:
        try:
            producer.close()
        finally:
            pool.close()
