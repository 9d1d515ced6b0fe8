"""`cloudbill run poller`: polls DigitalOcean on cron schedules (UTC) until stopped.

Balance (`POLL_BALANCE_CRON`), billing history (`POLL_HISTORY_CRON`) and resource inventory
(`POLL_RESOURCES_CRON`) for every configured account. Replicas are safe to run side by side: each tick
of each (job, account) is polled once (see services/poller/poller.py and store.py).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime

from shared import metrics
from shared.db import make_pool, migrate
from shared.kafka import EventProducer, StopSignal, create_topics
from shared.settings import Settings

from .poller import ClientFactory, Poller
from .schedule import Schedule
from .store import PollStore

log = logging.getLogger(__name__)


def crons(settings: Settings) -> dict[str, str]:
    # Same order as JOBS: when several are due at one tick, the inventory is synced first.
    return {
        "resources": settings.poll_resources_cron,
        "balance": settings.poll_balance_cron,
        "history": settings.poll_history_cron,
    }


def build(
    settings: Settings,
    client_factory: ClientFactory | None = None,
    *,
    replica: str | None = None,
    stop: StopSignal | None = None,
):
    """Migrate, create topics, and wire the adapters. Returns (poller, close)."""
    migrate(settings, ["poller"])
    create_topics(settings)
    pool = make_pool(settings, name="poller")
    producer = EventProducer(settings, "cloudbill-poller")
    poller = Poller(settings, producer, PollStore(pool), client_factory, replica=replica, stop=stop)

    def close() -> None:
        try:
            producer.close(10)
        finally:
            pool.close()

    return poller, close


def run(
    settings: Settings,
    stop: StopSignal | None = None,
    *,
    client_factory: ClientFactory | None = None,
    replica: str | None = None,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> None:
    if stop is None:
        stop = StopSignal().install()
    schedule = Schedule(crons(settings), clock())
    if not settings.accounts():
        log.warning("no DigitalOcean account configured (DIGITALOCEAN_TOKEN / DIGITALOCEAN_ACCOUNTS): nothing to poll")
    poller, close = build(settings, client_factory, replica=replica, stop=stop)
    metrics.serve(settings.metrics_port)
    log.info("poller started: %s", crons(settings))
    try:
        while not stop.is_set():
            tick, jobs = schedule.next_due()
            wait = (tick - clock()).total_seconds()
            if wait > 0 and stop.wait(wait):
                break
            for job in jobs:
                if stop.is_set():
                    break
                poller.poll(job, tick=tick)
            schedule.advance(jobs, tick, clock())
    finally:
        close()
        log.info("poller stopped")
