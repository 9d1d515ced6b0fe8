"""Runs one job for every (or one) account: lock, poll, produce, flush, then record the outcome.

Accounts are independent: one failing (bad token, DigitalOcean down, broker refusing) is logged and
recorded in `poller.poll_status`, and the others are still polled.

Two or more poller replicas (see services/poller/store.py for the mechanism): a scheduled tick of a
(job, account) is polled by exactly one replica — the one that takes the Postgres advisory lock and
claims the tick; the others skip it. Should a poll be repeated anyway (one-off `cloudbill poll` runs,
a replica dying after producing but before recording), the events carry deterministic ids built from
DigitalOcean's data only, so the duplicates are recognisable and harmless downstream.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from shared.digitalocean import DigitalOceanClient, DigitalOceanError, interruptible_sleep
from shared.kafka import EventProducer, StopSignal
from shared.kafka.config import instance_id
from shared.logging import scrub
from shared.metrics import EVENTS_PRODUCED, LAST_SUCCESS
from shared.settings import DigitalOceanAccount, Settings

from . import handler
from .domain import JOBS
from .store import PollStore

log = logging.getLogger(__name__)

SERVICE = "poller"

ClientFactory = Callable[[DigitalOceanAccount], DigitalOceanClient]


@dataclass
class PollResult:
    job: str
    account: str
    status: str  # ok | partial | failed | skipped
    events: int = 0
    error: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        return self.status == "failed"


def default_client_factory(settings: Settings, stop: StopSignal | None = None) -> ClientFactory:
    sleep = interruptible_sleep(stop)

    def make(account: DigitalOceanAccount) -> DigitalOceanClient:
        return DigitalOceanClient(
            account.api_url or settings.digitalocean_api_url,
            account.token,
            per_page=settings.digitalocean_per_page,
            max_retries=settings.digitalocean_max_retries,
            timeout_s=settings.digitalocean_timeout_s,
            retry_budget_s=settings.digitalocean_retry_budget_s,
            sleep=sleep,
            service=SERVICE,
        )

    return make


class UnknownAccount(ValueError):
    pass


class Poller:
    def __init__(
        self,
        settings: Settings,
        producer: EventProducer,
        store: PollStore,
        client_factory: ClientFactory | None = None,
        *,
        replica: str | None = None,
        stop: StopSignal | None = None,
    ) -> None:
        self.settings = settings
        self.producer = producer
        self.store = store
        self.client_factory = client_factory or default_client_factory(settings, stop)
        self.replica = replica or instance_id()

    def accounts(self, only: str | None = None) -> list[DigitalOceanAccount]:
        accs = self.settings.accounts()
        if only is None:
            return accs
        chosen = [a for a in accs if a.name == only]
        if not chosen:
            known = ", ".join(a.name for a in accs) or "none"
            raise UnknownAccount(f"no DigitalOcean account named {only!r} (configured: {known})")
        return chosen

    def poll(
        self,
        job: str,
        *,
        account: str | None = None,
        tick: datetime | None = None,
        wait_lock_s: float | None = None,
        missed_only: bool = False,
    ) -> list[PollResult]:
        """Run `job` ("balance", "history", "resources" or "all") for each account, one after the other.

        `tick`: the cron time of a scheduled run (replicas poll each tick once). `wait_lock_s`: wait that
        long for another replica's running poll instead of skipping (one-off runs). `missed_only` (the
        catch-up at start, with the schedule's previous tick): poll only an account whose last success is
        older than `tick`."""
        jobs = list(JOBS) if job == "all" else [job]
        for j in jobs:
            if j not in JOBS:
                raise ValueError(f"unknown poll job {j!r}; known: {', '.join(JOBS)}, all")
        results = []
        for acc in self.accounts(account):
            for j in jobs:
                results.append(self._poll_one(j, acc, tick, wait_lock_s, missed_only))
        return results

    def _poll_one(
        self,
        job: str,
        account: DigitalOceanAccount,
        tick: datetime | None,
        wait_lock_s: float | None,
        missed_only: bool = False,
    ) -> PollResult:
        name = account.name
        try:
            with self.store.lock(job, name, wait_s=wait_lock_s) as got:
                if not got:
                    log.info("%s poll of account %s: another replica is polling it, skipped", job, name)
                    return PollResult(job, name, "skipped", detail={"reason": "locked by another replica"})
                if missed_only and tick is not None:
                    missed = self.store.claim_missed(job, name, tick, self.replica)
                    if missed is None:
                        log.info("%s poll of account %s: succeeded since the %s tick, no catch-up", job, name, tick)
                        return PollResult(job, name, "skipped", detail={"reason": "nothing missed"})
                    log.info("%s poll of account %s: catching up (%s before the %s tick)", job, name, missed, tick)
                elif not self.store.claim(job, name, tick, self.replica):
                    log.info("%s poll of account %s for %s: already done by another replica", job, name, tick)
                    return PollResult(job, name, "skipped", detail={"reason": "tick already polled"})
                return self._run_claimed(job, account)
        except Exception as e:  # the store itself failed: the account's poll fails, the others go on
            msg = _error_text(e)
            log.error("%s poll of account %s failed: %s", job, name, msg, exc_info=not isinstance(e, DigitalOceanError))
            return PollResult(job, name, "failed", error=msg)

    def _run_claimed(self, job: str, account: DigitalOceanAccount) -> PollResult:
        name, prefix, currency = account.name, self.settings.kafka_topic_prefix, self.settings.currency
        try:
            with self.client_factory(account) as client:
                if job == "balance":
                    output = handler.poll_balance(client, name, prefix, currency)
                elif job == "history":
                    output = handler.poll_history(client, name, prefix, currency)
                else:
                    output = handler.poll_resources(client, name, prefix, self.store.known_inventory(name))
            self.producer.produce_many(output.outs)
            self.producer.flush()
            if job == "resources":
                self.store.save_inventory(name, output.inventory, output.listed_kinds)
        except Exception as e:
            msg = _error_text(e)
            log.error("%s poll of account %s failed: %s", job, name, msg, exc_info=not isinstance(e, DigitalOceanError))
            self.store.finish(job, name, "failed", events=0, detail={"error_class": type(e).__name__}, error=msg)
            return PollResult(job, name, "failed", error=msg)
        status = "partial" if output.partial else "ok"
        self.store.finish(job, name, status, events=len(output.outs), detail=output.detail)
        EVENTS_PRODUCED.labels(SERVICE, job).inc(len(output.outs))
        LAST_SUCCESS.labels(SERVICE, f"{job}:{name}").set_to_current_time()
        log.info("%s poll of account %s: %s, %d records %s", job, name, status, len(output.outs), output.detail)
        return PollResult(job, name, status, events=len(output.outs), detail=output.detail)


def _error_text(e: BaseException) -> str:
    """Errors are token-free by construction (DigitalOceanError); scrub anything else as a last defence."""
    text = str(e) if isinstance(e, DigitalOceanError) else f"{type(e).__name__}: {e}"
    return scrub(text)[:1000]
