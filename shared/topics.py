"""The topic registry: every topic's name, key, cleanup policy and dead-letter topic, in one place."""

from __future__ import annotations

from dataclasses import dataclass

from shared.settings import Settings

DLQ_SUFFIX = ".dlq"


@dataclass(frozen=True)
class Topic:
    base: str
    key: str
    description: str
    compacted: bool = False
    has_dlq: bool = True

    def name(self, prefix: str = "") -> str:
        return f"{prefix}{self.base}"

    def dlq(self, prefix: str = "") -> str:
        return f"{prefix}{self.base}{DLQ_SUFFIX}"


BALANCE = Topic("billing.balance.v1", "account", "One balance snapshot per poll.")
HISTORY = Topic("billing.history.v1", "account", "Every billing-history entry (payments, credits, invoices).")
INVOICE_DISCOVERED = Topic("billing.invoice-discovered.v1", "invoice uuid", "One event per Invoice entry.")
RESOURCES = Topic(
    "cloud.resources.v1", "account:kind:id", "Resource inventory; a tombstone when a resource is gone.", compacted=True
)
COST_LINES = Topic("billing.cost-lines.v1", "invoice uuid", "Cost lines of an invoice revision, then its end marker.")
COST_LINES_MATCHED = Topic("billing.cost-lines-matched.v1", "invoice uuid", "Cost lines enriched with resource ids.")
INVOICE_COMPLETED = Topic("billing.invoice-completed.v1", "invoice uuid", "Normalized, matched invoice revisions.")
INVOICE_PUSHED = Topic("billing.invoice-pushed.v1", "invoice uuid", "Finance accepted an invoice revision.")
ALERTS = Topic(
    "billing.alerts.v1", "account", "Budget and anomaly alerts, once per (account, kind, subject, threshold, period)."
)

ALL: tuple[Topic, ...] = (
    BALANCE,
    HISTORY,
    INVOICE_DISCOVERED,
    RESOURCES,
    COST_LINES,
    COST_LINES_MATCHED,
    INVOICE_COMPLETED,
    INVOICE_PUSHED,
    ALERTS,
)


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    config: dict[str, str]


def specs(settings: Settings) -> list[TopicSpec]:
    """Every topic to create, dead-letter and retry topics included (those are plain, never compacted)."""
    p = settings.kafka_topic_prefix
    out: list[TopicSpec] = []
    plain = {"cleanup.policy": "delete", "retention.ms": "-1"}
    for t in ALL:
        cfg = {"cleanup.policy": "compact"} if t.compacted else plain
        out.append(TopicSpec(t.name(p), settings.kafka_partitions, cfg))
        if t.has_dlq:
            out.append(TopicSpec(t.dlq(p), 1, plain))
    for st in STAGES.values():
        if st.parks:
            out.append(TopicSpec(st.retry_topic(settings), 1, plain))
    return out


def group_id(settings: Settings, service: str) -> str:
    """Each service is its own consumer group (prefixed like the topics)."""
    return f"{settings.kafka_topic_prefix}cloudbill.{service}"


def retry_topic(settings: Settings, service: str) -> str:
    """A stage's retry topic: its records parked after failing transiently too long (shared/kafka/retry.py).
    One per stage, not per source topic: a parked record is the parking stage's to retry, nobody else's."""
    return f"{settings.kafka_topic_prefix}cloudbill.{service}.retry"


@dataclass(frozen=True)
class Stage:
    """A consuming service: its consumer group and the topics it reads (what `replay` rewinds)."""

    name: str
    inputs: tuple[Topic, ...]
    reads_dlqs: bool = False
    parks: bool = False  # parks records that keep failing transiently in its retry topic (and consumes it)

    def group(self, settings: Settings) -> str:
        return group_id(settings, self.name)

    def retry_topic(self, settings: Settings) -> str:
        return retry_topic(settings, self.name)

    def topics(self, settings: Settings) -> list[str]:
        p = settings.kafka_topic_prefix
        names = [t.name(p) for t in self.inputs]
        if self.reads_dlqs:
            names += [t.dlq(p) for t in ALL if t.has_dlq]
        return names


STAGES: dict[str, Stage] = {
    s.name: s
    for s in (
        Stage("ingester", (INVOICE_DISCOVERED,), parks=True),
        Stage("matcher", (COST_LINES,)),
        Stage("finance-pusher", (INVOICE_COMPLETED,), parks=True),
        Stage("alerter", (BALANCE, INVOICE_COMPLETED)),
        Stage("projector", ALL, reads_dlqs=True),
    )
}
