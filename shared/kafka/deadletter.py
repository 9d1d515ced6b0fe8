"""Dead-lettering: the failed record, unchanged, to its topic's DLQ with headers saying where and why."""

from __future__ import annotations

import logging
import traceback
from datetime import UTC, datetime

from shared.kafka.records import Out, Record
from shared.topics import DLQ_SUFFIX

log = logging.getLogger(__name__)

H_TOPIC = "dlq.source.topic"
H_PARTITION = "dlq.source.partition"
H_OFFSET = "dlq.source.offset"
H_ERROR_CLASS = "dlq.error.class"
H_ERROR_MESSAGE = "dlq.error.message"
H_SERVICE = "dlq.service"
H_FAILED_AT = "dlq.failed_at"
MAX_MESSAGE = 4000


def dlq_topic(source_topic: str) -> str:
    return source_topic + DLQ_SUFFIX


def dead_letter(rec: Record, error: BaseException, service: str) -> Out:
    """Build the DLQ record for `rec`; the original key, value and headers are kept."""
    message = str(error) or repr(error)
    headers = {k: v.decode("utf-8", "replace") for k, v in rec.headers.items() if not k.startswith("dlq.")}
    headers |= {
        H_TOPIC: rec.topic,
        H_PARTITION: str(rec.partition),
        H_OFFSET: str(rec.offset),
        H_ERROR_CLASS: f"{type(error).__module__}.{type(error).__qualname__}",
        H_ERROR_MESSAGE: message[:MAX_MESSAGE],
        H_SERVICE: service,
        H_FAILED_AT: datetime.now(UTC).isoformat(),
    }
    log.warning(
        "dead-lettering %s[%d]@%d: %s: %s",
        rec.topic,
        rec.partition,
        rec.offset,
        type(error).__name__,
        message[:500],
        extra={"dlq": True, "error_class": type(error).__name__},
    )
    if not isinstance(error, ValueError):
        log.debug("dead-letter traceback:\n%s", "".join(traceback.format_exception(error)))
    return Out(dlq_topic(rec.topic), rec.key, rec.value, headers)
