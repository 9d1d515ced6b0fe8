"""The matcher's names and knobs, importable without faust: its options, app id, tables and changelog topics,
and the waiting revisions as `cloudbill status` reads them (from a changelog, so the matcher may be down)."""

from __future__ import annotations

import json
from dataclasses import dataclass

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.matcher.domain import assembly
from shared.kafka.admin import latest_values
from shared.settings import Settings
from shared.topics import group_id

SERVICE = "matcher"
INVENTORY_TABLE = "inventory"
FACTS_TABLE = "line-fact-chunks"
COMPLETED_TABLE = "revisions-completed"
WAITING_TABLE = "revisions-waiting"
# Tables whose changelog is co-partitioned with cost-lines (keys of one invoice, written from its partition).
ASSEMBLY_TABLES = (FACTS_TABLE, COMPLETED_TABLE, WAITING_TABLE)


class MatcherOptions(BaseSettings):
    """faust-specific knobs (environment `MATCHER_*`); the broker and topics come from Settings."""

    model_config = SettingsConfigDict(env_prefix="MATCHER_", env_file=(".env",), extra="ignore")

    group_suffix: str = Field(
        "", description="Appended to the consumer group (= faust app id): a fresh group replays every topic."
    )
    store: str = Field("memory://", description="faust table store URL (memory:// or rocksdb://).")
    datadir: str = Field("", description="faust data dir (rocksdb files); default: a folder in the temp dir.")
    web_port: int = Field(0, ge=0, description="faust web server port; 0 disables the web server.")
    web_bind: str = Field("127.0.0.1", description="faust web server bind address (when enabled).")
    producer_max_batch_size: int = Field(
        0, ge=0, description="Producer batch size in bytes; 0: faust's default (16 KiB) on both brokers."
    )
    producer_linger_s: float = Field(
        0.01,
        ge=0,
        description="How long faust's producer (table changelogs; the outputs go through librdkafka) waits to "
        "fill a batch: fewer, fuller produce requests.",
    )
    batch_max: int = Field(
        1000, ge=1, description="Cost-lines records processed as one batch at most (one write per fact chunk)."
    )
    batch_wait_s: float = Field(
        0.05, gt=0, description="How long a batch waits to fill before it is processed with what it has."
    )
    commit_interval_s: float = Field(1.0, gt=0, description="faust offset commit interval.")
    fetch_max_wait_ms: int = Field(
        50,
        ge=0,
        description="How long the broker may hold a fetch that found no new records. faust's fixed 1,500 held "
        "back the busy partitions behind an idle one's fetch (faust_patches 9).",
    )
    stop_timeout_s: float = Field(15.0, gt=0, description="Kill timeout for a faust stop (it can wait forever).")
    inventory_catchup_timeout_s: float = Field(
        30.0,
        ge=0,
        description="At start, lines wait for the inventory backlog to be read; they stop waiting after it made no progress this long.",
    )
    stall_timeout_s: float = Field(
        60.0, ge=0, description="Records pending but none processed for this long: end the worker (0: never)."
    )


def app_id_of(settings: Settings, options: MatcherOptions) -> str:
    """The faust app id is the consumer group: `shared.topics.group_id` (prefix included) + optional suffix."""
    return group_id(settings, SERVICE) + options.group_suffix


def changelog_topic_name(app_id: str, table: str) -> str:
    return f"{app_id}-{table}-changelog"


def changelog_topic_names(app_id: str) -> list[str]:
    return [changelog_topic_name(app_id, t) for t in (INVENTORY_TABLE, *ASSEMBLY_TABLES)]


@dataclass(frozen=True)
class WaitingRevision:
    """A revision whose end marker was read while lines were missing (`cloudbill status`)."""

    invoice_uuid: str
    revision: int
    line_count: int
    missing: int
    since_ms: int | None

    def age_s(self, now_ms: int) -> float | None:
        return None if self.since_ms is None else max(0.0, (now_ms - self.since_ms) / 1000)


def waiting_revisions(settings: Settings, options: MatcherOptions | None = None) -> list[WaitingRevision]:
    """Every waiting revision, oldest first, read from the waiting table's changelog (the matcher may be down)."""
    topic = changelog_topic_name(app_id_of(settings, options or MatcherOptions()), WAITING_TABLE)
    out = []
    for key, value in latest_values(settings, topic).items():
        if value is None:
            continue
        invoice = json.loads(key)
        for w in assembly.waiting_from_json(json.loads(value)).values():
            out.append(WaitingRevision(invoice, w.revision, w.line_count, w.missing, w.since_ms))
    return sorted(out, key=lambda w: (w.since_ms or 0, w.invoice_uuid, w.revision))
