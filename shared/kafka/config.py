"""librdkafka configuration built from Settings, in one place."""

from __future__ import annotations

import os
import socket
from typing import Any

from shared.settings import Settings

TRANSACTION_TIMEOUT_S = 30.0  # the broker aborts a transaction left open this long


def base_config(settings: Settings, client_id: str) -> dict[str, Any]:
    return {"bootstrap.servers": settings.kafka_bootstrap_servers, "client.id": client_id}


def producer_config(settings: Settings, client_id: str, transactional_id: str | None = None) -> dict[str, Any]:
    cfg = base_config(settings, client_id) | {
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 5,
        "compression.type": "none",
    }
    if transactional_id:
        cfg |= {"transactional.id": transactional_id, "transaction.timeout.ms": int(TRANSACTION_TIMEOUT_S * 1000)}
    return cfg


def consumer_config(settings: Settings, group: str, client_id: str, *, read_committed: bool = True) -> dict[str, Any]:
    return base_config(settings, client_id) | {
        "group.id": group,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "isolation.level": "read_committed" if read_committed else "read_uncommitted",
        "session.timeout.ms": settings.kafka_session_timeout_ms,
        "heartbeat.interval.ms": settings.kafka_heartbeat_interval_ms,
        "max.poll.interval.ms": settings.kafka_max_poll_interval_ms,
        "partition.assignment.strategy": "cooperative-sticky",
    }


def instance_id() -> str:
    """Stable per replica: a restarted replica reuses its transactional id, which aborts its open transaction.

    Several replicas on one host must set CLOUDBILL_INSTANCE_ID to distinct values.
    """
    return os.environ.get("CLOUDBILL_INSTANCE_ID") or socket.gethostname()
