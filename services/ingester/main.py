"""`cloudbill run ingester`: invoice-discovered → invoice CSV → cost lines + end marker, transactionally.

Thin wiring only: migrate the `ingester` schema, create topics, one DigitalOcean client per configured
account, the ledger, and a TransactionalProcessor running `IngestHandler` until stop/SIGTERM.
"""

from __future__ import annotations

import logging

from services.ingester.handlers import SERVICE, IngestHandler
from services.ingester.ledger import Ledger
from shared import metrics
from shared.db import make_pool, migrate
from shared.digitalocean import DigitalOceanClient
from shared.kafka import StopSignal, TransactionalProcessor, create_topics
from shared.settings import Settings
from shared.topics import INVOICE_DISCOVERED, group_id

log = logging.getLogger(__name__)


def run(settings: Settings, stop: StopSignal | None = None) -> None:
    if stop is None:
        stop = StopSignal().install()
    migrate(settings, ["ingester"])
    create_topics(settings)
    metrics.serve(settings.metrics_port)

    clients = {
        a.name: DigitalOceanClient(
            settings.digitalocean_api_url,
            a.token,
            per_page=settings.digitalocean_per_page,
            max_retries=settings.digitalocean_max_retries,
            timeout_s=settings.digitalocean_timeout_s,
            service=SERVICE,
        )
        for a in settings.accounts()
    }
    if not clients:
        log.warning("no DigitalOcean account configured: every invoice will be dead-lettered (unknown account)")
    pool = make_pool(settings, name=SERVICE)
    try:
        handler = IngestHandler(settings, Ledger(pool), clients.get, known_accounts=sorted(clients))
        processor = TransactionalProcessor(
            settings,
            service=SERVICE,
            group=group_id(settings, SERVICE),
            topics=[INVOICE_DISCOVERED.name(settings.kafka_topic_prefix)],
            transform=handler.transform,
            after_commit=handler.after_commit,
            stop=stop,
        )
        processor.run()
        log.info("ingester stopped after %d record(s), %d dead-lettered", processor.processed, processor.dead_lettered)
    finally:
        pool.close()
        for c in clients.values():
            c.close()
