"""Dead-lettering: the failed record, unchanged, to its topic's DLQ with headers saying where and why.

A dead letter can be read back (`DeadLetter.from_record`) and redriven to its source topic after a fix
(`DeadLetter.redrive`): the copy carries the original key, value and headers plus a redrive count and the
dead letter it came from. Those two headers survive a second failure (only `dlq.*` headers are replaced),
so a record that keeps failing shows how often it was redriven.
"""

from __future__ import annotations

import hashlib
import logging
import traceback
from dataclasses import dataclass, field
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
H_TRUNCATED = "dlq.truncated"  # the original value's size in bytes, when the copy had to be cut
H_ORIGINAL_SHA256 = "dlq.original.sha256"
H_REDRIVE_COUNT = "redrive.count"
H_REDRIVE_FROM = "redrive.from"  # the dead letter's id
MAX_MESSAGE = 4000
# Kafka refuses records over the broker's message.max.bytes (1 MiB by default): a copy that large would fail
# to produce and crash-loop the service on the same poison record. Keep well under it, headers included.
MAX_VALUE_BYTES = 900_000


def dlq_topic(source_topic: str) -> str:
    return source_topic + DLQ_SUFFIX


def dead_letter_headers(rec: Record, error: BaseException, service: str) -> dict[str, str]:
    """The record's own headers plus where it came from and why it failed (dead letters and parked copies)."""
    message = str(error) or repr(error)
    headers = {k: v.decode("utf-8", "replace") for k, v in rec.headers.items() if not k.startswith(("dlq.", "retry."))}
    return headers | {
        H_TOPIC: rec.topic,
        H_PARTITION: str(rec.partition),
        H_OFFSET: str(rec.offset),
        H_ERROR_CLASS: f"{type(error).__module__}.{type(error).__qualname__}",
        H_ERROR_MESSAGE: message[:MAX_MESSAGE],
        H_SERVICE: service,
        H_FAILED_AT: datetime.now(UTC).isoformat(),
    }


def dead_letter(rec: Record, error: BaseException, service: str) -> Out:
    """Build the DLQ record for `rec`; the original key, value and headers are kept."""
    message = str(error) or repr(error)
    headers = dead_letter_headers(rec, error, service)
    value = rec.value
    if value is not None and len(value) > MAX_VALUE_BYTES:
        headers[H_TRUNCATED] = str(len(value))
        headers[H_ORIGINAL_SHA256] = hashlib.sha256(value).hexdigest()
        value = value[:MAX_VALUE_BYTES]
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
    return Out(dlq_topic(rec.topic), rec.key, value, headers)


class RedriveError(ValueError):
    """A dead letter that cannot be sent back (no source topic, or a truncated copy)."""


def dead_letter_id(topic: str, partition: int, offset: int) -> str:
    """`<dlq topic>:<partition>:<offset>`: where the dead letter is, which names it for ever."""
    return f"{topic}:{partition}:{offset}"


def parse_dead_letter_id(text: str) -> tuple[str, int, int]:
    topic, _, rest = text.rpartition(":")
    topic, _, partition = topic.rpartition(":")
    try:
        p, o = int(partition), int(rest)
    except ValueError:
        raise ValueError(f"not a dead-letter id (<dlq topic>:<partition>:<offset>): {text!r}") from None
    if not topic.endswith(DLQ_SUFFIX) or p < 0 or o < 0:
        raise ValueError(f"not a dead-letter id (<dlq topic>:<partition>:<offset>): {text!r}")
    return topic, p, o


def _int(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


@dataclass(frozen=True)
class DeadLetter:
    """A record of a dead-letter topic, read leniently (headers may be missing on a hand-written one)."""

    dlq_topic: str
    dlq_partition: int
    dlq_offset: int
    key: str | None
    value: bytes | None
    source_topic: str | None
    source_partition: int | None
    source_offset: int | None
    error_class: str
    error_message: str
    service: str
    failed_at: datetime | None
    redrive_count: int
    truncated_from: int | None  # original size when the copy was cut
    headers: dict[str, str] = field(default_factory=dict)  # the original record's own headers

    @property
    def id(self) -> str:
        return dead_letter_id(self.dlq_topic, self.dlq_partition, self.dlq_offset)

    @classmethod
    def from_record(cls, rec: Record) -> DeadLetter:
        h = {k: v.decode("utf-8", "replace") for k, v in rec.headers.items()}
        failed_at: datetime | None
        try:
            failed_at = datetime.fromisoformat(h[H_FAILED_AT]) if h.get(H_FAILED_AT) else None
        except ValueError:
            failed_at = None
        source = h.get(H_TOPIC) or (rec.topic[: -len(DLQ_SUFFIX)] if rec.topic.endswith(DLQ_SUFFIX) else None)
        return cls(
            dlq_topic=rec.topic,
            dlq_partition=rec.partition,
            dlq_offset=rec.offset,
            key=rec.key,
            value=rec.value,
            source_topic=source,
            source_partition=_int(h.get(H_PARTITION)),
            source_offset=_int(h.get(H_OFFSET)),
            error_class=h.get(H_ERROR_CLASS, ""),
            error_message=h.get(H_ERROR_MESSAGE, ""),
            service=h.get(H_SERVICE, ""),
            failed_at=failed_at,
            redrive_count=_int(h.get(H_REDRIVE_COUNT)) or 0,
            truncated_from=_int(h.get(H_TRUNCATED)),
            headers={k: v for k, v in h.items() if not k.startswith(("dlq.", "retry."))},
        )

    def redrive(self) -> Out:
        """The record as it was, back to its source topic, counted and traced to this dead letter."""
        if not self.source_topic:
            raise RedriveError(f"{self.id}: no source topic in its headers")
        if self.truncated_from is not None:
            raise RedriveError(
                f"{self.id}: the dead-letter copy was truncated ({self.truncated_from} bytes originally); "
                "only the first bytes are kept, so it cannot be sent back"
            )
        headers = self.headers | {H_REDRIVE_COUNT: str(self.redrive_count + 1), H_REDRIVE_FROM: self.id}
        return Out(self.source_topic, self.key, self.value, headers)
