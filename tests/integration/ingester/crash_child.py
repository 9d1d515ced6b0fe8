"""The real ingester (`services.ingester.main.run`) that SIGKILLs itself at a chosen point of one invoice.

Run as `python -m tests.integration.ingester.crash_child` with the service's environment plus
CRASH_POINT (`after-reserve` | `mid-transaction` | `before-mark`), CRASH_INVOICE (the invoice uuid) and,
for `mid-transaction`, CRASH_AFTER_RECORDS (records produced in the open transaction before dying; they
are flushed to the broker first, so the transaction really is half-written when the process dies).
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

from services.ingester import main as ingester_main
from services.ingester.ledger import Ledger
from shared import logging as cblog
from shared.kafka import TransactionalProcessor
from shared.settings import Settings

POINT = os.environ["CRASH_POINT"]
INVOICE = os.environ["CRASH_INVOICE"]
AFTER = int(os.environ.get("CRASH_AFTER_RECORDS", "10"))


def die(where: str) -> None:
    print(f"crash_child: SIGKILL at {where}", file=sys.stderr, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)


class KillingProducer:
    """Delegates to the transactional producer; dies after AFTER records of INVOICE are produced."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self._n = 0

    def produce(self, topic: str, key: Any = None, value: Any = None, headers: Any = None) -> None:
        self._inner.produce(topic, key=key, value=value, headers=headers)
        if key == INVOICE:
            self._n += 1
            if self._n == AFTER:
                self._inner.flush(10)
                die(f"record {AFTER} of an open transaction")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class CrashingProcessor(TransactionalProcessor):
    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        if POINT == "mid-transaction":
            self.producer = KillingProducer(self.producer)  # type: ignore[assignment]


def main() -> None:
    settings = Settings()
    cblog.setup("ingester-crash-child", "console", "INFO")
    reserve, mark = Ledger.reserve, Ledger.mark_committed

    def crashing_reserve(self: Ledger, invoice_uuid: str, *a: Any, **kw: Any) -> Any:
        out = reserve(self, invoice_uuid, *a, **kw)
        if POINT == "after-reserve" and invoice_uuid == INVOICE:
            die("after the ledger reservation, before the Kafka transaction")
        return out

    def crashing_mark(self: Ledger, invoice_uuid: str, revision: int) -> bool:
        if POINT == "before-mark" and invoice_uuid == INVOICE:
            die("after the Kafka commit, before the ledger mark")
        return mark(self, invoice_uuid, revision)

    Ledger.reserve = crashing_reserve  # type: ignore[method-assign]
    Ledger.mark_committed = crashing_mark  # type: ignore[method-assign]
    ingester_main.TransactionalProcessor = CrashingProcessor  # type: ignore[misc]
    ingester_main.run(settings)


if __name__ == "__main__":
    main()
