"""The held invoices' re-fetch clock: due holds → `InvoiceRefetchRequested` on the invoice-discovered topic.

A truncated or short CSV is often transient, so a held invoice's CSV is fetched again after a doubling
backoff (`HELD_REFETCH_*`). The request goes through the ingester's own input topic, keyed by the invoice,
so the re-fetch runs exactly like a discovery (same transaction, same ledger rules) and is ordered with
the invoice's other discoveries. Several replicas are safe: the ledger leases each due hold to one of them.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from services.ingester.domain import RefetchPolicy
from services.ingester.ledger import Ledger
from shared.events import InvoiceRefetchRequested, utcnow
from shared.kafka import EventProducer, StopSignal
from shared.settings import Settings
from shared.topics import INVOICE_DISCOVERED

log = logging.getLogger(__name__)

REQUESTED_BY = "ingester"


def requests_for(due: list[tuple[str, str, int]]) -> list[tuple[str, InvoiceRefetchRequested]]:
    """(account, request) per due hold."""
    now = utcnow()
    return [
        (
            account,
            InvoiceRefetchRequested(
                invoice_uuid=uuid,
                requested_by=REQUESTED_BY,
                reason=f"held: automatic re-fetch {attempt}",
                requested_at=now,
                attempt=attempt,
            ),
        )
        for uuid, account, attempt in due
    ]


class RefetchClock:
    """Runs `tick()` every `interval_s` until stopped (a thread beside the transactional processor)."""

    def __init__(
        self,
        settings: Settings,
        ledger: Ledger,
        policy: RefetchPolicy,
        stop: StopSignal,
        *,
        producer_factory: Callable[[], EventProducer] | None = None,
    ) -> None:
        self.ledger = ledger
        self.policy = policy
        self.stop = stop
        self.topic = INVOICE_DISCOVERED.name(settings.kafka_topic_prefix)
        self.interval_s = max(0.5, min(10.0, policy.initial_s / 2))
        self._factory = producer_factory or (lambda: EventProducer(settings, "ingester-refetch"))
        self._producer: EventProducer | None = None
        self.requested = 0

    def tick(self) -> int:
        """Ask for every due re-fetch now; returns how many were asked for."""
        if self.policy.max_attempts == 0:
            return 0
        due = self.ledger.claim_due_refetches(self.policy)
        if not due:
            return 0
        if self._producer is None:
            self._producer = self._factory()
        for account, req in requests_for(due):
            self._producer.publish(self.topic, req.invoice_uuid, req, account)
            log.info("invoice %s held: re-fetch %d requested", req.invoice_uuid, req.attempt)
        self._producer.flush()
        self.requested += len(due)
        return len(due)

    def run(self) -> None:
        while not self.stop.wait(self.interval_s):
            try:
                self.tick()
            except Exception as e:  # database or broker trouble: the lease expires and a later tick asks again
                log.warning("held invoices' re-fetch clock: %s: %s", type(e).__name__, e)
        if self._producer is not None:
            self._producer.close()

    def start(self) -> threading.Thread:
        t = threading.Thread(target=self.run, name="ingester-refetch-clock", daemon=True)
        t.start()
        return t
