"""`cloudbill run ingester`: invoice-discovered → invoice CSV → cost lines + end marker, transactionally.

Thin wiring only: migrate the `ingester` schema, create topics, one DigitalOcean client per configured
account, the ledger, a TransactionalProcessor running `IngestHandler` until stop/SIGTERM, and beside it the
held invoices' re-fetch clock (services/ingester/refetch.py) and the commit verifier
(services/ingester/verify.py), each in a thread.
"""

from __future__ import annotations

import logging

from services.ingester.handler import SERVICE, IngestHandler
from services.ingester.ledger import Ledger
from services.ingester.refetch import RefetchClock
from services.ingester.verify import CommitVerifier
from shared import metrics
from shared.db import make_pool, migrate
from shared.digitalocean import DigitalOceanClient, interruptible_sleep
from shared.kafka import StopSignal, TransactionalProcessor, create_topics
from shared.settings import Settings
from shared.topics import INVOICE_DISCOVERED, group_id, retry_topic

log = logging.getLogger(__name__)


def do_clients(settings: Settings, stop: StopSignal) -> dict[str, DigitalOceanClient]:
    """One DigitalOcean client per account, made for a consumer: its retry waits end at once on SIGTERM, and a
    record's calls (at most three: invoice list, summary, CSV), retries and waits included, stay under half of
    max.poll.interval.ms however DigitalOcean answers, so the group never evicts the ingester mid-record."""
    budget = min(settings.digitalocean_retry_budget_s, settings.kafka_max_poll_interval_ms / 1000 / 6)
    return {
        a.name: DigitalOceanClient(
            a.api_url or settings.digitalocean_api_url,
            a.token,
            per_page=settings.digitalocean_per_page,
            max_retries=settings.digitalocean_max_retries,
            timeout_s=min(settings.digitalocean_timeout_s, budget / 2),
            retry_budget_s=budget,
            min_wait_s=settings.retry_min_s,
            sleep=interruptible_sleep(stop),
            service=SERVICE,
        )
        for a in settings.accounts()
    }


def run(settings: Settings, stop: StopSignal | None = None) -> None:
    if stop is None:
        stop = StopSignal().install()
    migrate(settings, ["ingester"])
    create_topics(settings)
    metrics.serve(settings.metrics_port)

    clients = do_clients(settings, stop)
    if not clients:
        log.warning("no DigitalOcean account configured: every invoice will be dead-lettered (unknown account)")
    pool = make_pool(settings, name=SERVICE)
    try:
        ledger = Ledger(pool)
        handler = IngestHandler(settings, ledger, clients.get, known_accounts=sorted(clients))
        processor = TransactionalProcessor(
            settings,
            service=SERVICE,
            group=group_id(settings, SERVICE),
            topics=[INVOICE_DISCOVERED.name(settings.kafka_topic_prefix)],
            transform=handler.transform,
            after_commit=handler.after_commit,
            stop=stop,
            retry_topic=retry_topic(settings, SERVICE),
        )
        clock = RefetchClock(settings, ledger, handler.policy, stop)
        threads = [clock.start()]
        if settings.ingester_verify_interval_s > 0:
            threads.append(CommitVerifier(settings, ledger, stop).start())
        try:
            processor.run()
        finally:
            stop.set()
            for t in threads:
                t.join(15)
        log.info("ingester stopped after %d record(s), %d dead-lettered", processor.processed, processor.dead_lettered)
    finally:
        pool.close()
        for c in clients.values():
            c.close()
