"""A deadline for librdkafka calls that can block past their own timeout.

Measured on Apache Kafka 4.4 with librdkafka 2.x: the broker SIGKILLed and restarted while the ingester was
inside a transaction, `send_offsets_to_transaction(..., 60 s)` was still blocked 150 s later (its consumer,
not polled meanwhile, had lost its group session). Nothing in the process can unblock it, and a service stuck
there stops the whole pipeline silently. The only safe move is the one a crash makes: the process ends (exit
70, "restart me") and its supervisor starts it again. That is safe by construction: the new producer's
`init_transactions` with the same transactional id aborts the open transaction, and the consumer resumes from
the committed offsets, so the record is processed again and its outputs are committed once.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)

EXIT_RESTART = 70  # the supervisor's "restart me" code (also used by the matcher's stall watchdog)
GRACE_S = 15.0  # on top of the call's own timeout: librdkafka returns within it when it honours the timeout


def _exit_for_restart(what: str, seconds: float) -> None:
    log.critical("%s still blocked after %.0f s: exiting for the supervisor to restart this service", what, seconds)
    logging.shutdown()
    os._exit(EXIT_RESTART)


@contextmanager
def deadline(
    what: str, timeout_s: float, *, grace_s: float = GRACE_S, on_expiry: Callable[[str, float], None] | None = None
) -> Iterator[None]:
    """Run the body; if it is still running `timeout_s + grace_s` later, `on_expiry` (default: exit 70)."""
    limit = timeout_s + grace_s
    timer = threading.Timer(limit, on_expiry or _exit_for_restart, args=(what, limit))
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
