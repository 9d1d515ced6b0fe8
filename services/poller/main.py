"""`cloudbill run poller`: polls DigitalOcean on cron schedules (UTC) until stopped.

Balance (`POLL_BALANCE_CRON`), billing history (`POLL_HISTORY_CRON`) and resource inventory
(`POLL_RESOURCES_CRON`) for every configured account. Replicas are safe to run side by side: each tick
of each (job, account) is polled once (see services/poller/poller.py and store.py).

Missed runs are made up at start, as anacron does (`POLL_CATCH_UP`, on by default): a job whose last
success is older than its schedule's previous tick, or that never ran, runs once now (inventory first),
then follows its schedule. Without this, a deployment started at 03:00 would have no billing history
until 02:23 the next day.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime

from shared import metrics
from shared.db import make_pool, migrate
from shared.kafka import EventProducer, StopSignal, create_topics
from shared.settings import Settings

from .poller import ClientFactory, Poller, PollResult
from .schedule import PollRetries, Schedule
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
) -> tuple[Poller, Callable[[], None]]:
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
    retries = PollRetries(settings.poll_retry_initial_s, settings.poll_retry_max_s)
    try:
        if settings.poll_catch_up:
            catch_up(poller, schedule, clock(), stop, retries, clock)
        serve(poller, schedule, retries, stop, clock)
    finally:
        close()
        log.info("poller stopped")


def serve(
    poller: Poller,
    schedule: Schedule,
    retries: PollRetries,
    stop: StopSignal,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> None:
    """Poll each tick of the schedule, and retry failed polls with backoff in between, until stopped."""
    while not stop.is_set():
        tick, jobs = schedule.next_due()
        retry_at = retries.next_due()
        at = tick if retry_at is None else min(tick, retry_at)
        wait = (at - clock()).total_seconds()
        if wait > 0 and stop.wait(wait):
            break
        if clock() >= tick:
            for job in jobs:
                if stop.is_set():
                    break
                retries.superseded(job)  # this tick polls it anyway
                _record(retries, job, tick, poller.poll(job, tick=tick), clock())
            schedule.advance(jobs, tick, clock())
        for job, failed_tick, attempt in retries.due(clock()):
            if stop.is_set():
                break
            log.info("%s poll of the %s tick failed: retry %d now", job, failed_tick.isoformat(), attempt)
            # missed_only: only the accounts with no success since that tick are polled again
            _record(retries, job, failed_tick, poller.poll(job, tick=failed_tick, missed_only=True), clock())


def _record(retries: PollRetries, job: str, tick: datetime, results: list[PollResult], now: datetime) -> None:
    if any(r.failed for r in results):
        due = retries.failed(job, tick, now)
        log.warning("%s poll failed for %s: tried again at %s", job, [r.account for r in results if r.failed], due)
    else:
        retries.succeeded(job)


def catch_up(
    poller: Poller,
    schedule: Schedule,
    now: datetime,
    stop: StopSignal,
    retries: PollRetries | None = None,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> None:
    """Run every job whose last success is older than its previous tick (per account), in schedule order;
    a failed one is retried with backoff (`retries`) rather than waiting for its next tick."""
    for job in schedule.crons:
        if stop.is_set():
            return
        tick = schedule.previous(job, now)
        results = poller.poll(job, tick=tick, missed_only=True)
        if retries is not None:
            _record(retries, job, tick, results, clock())
