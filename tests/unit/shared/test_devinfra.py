"""The Apache Kafka launcher's pure parts: configuration, cluster ids, Java detection, jar cache."""

from __future__ import annotations

import base64
import subprocess
from pathlib import Path

import pytest

from shared import devinfra
from shared.devinfra import KAFKA_VERSION, kraft_cluster_id, server_properties


def _props(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#"))


def test_server_properties_single_kraft_node(tmp_path: Path) -> None:
    props = _props(server_properties(host="127.0.0.1", port=19092, controller_port=19093, data_dir=tmp_path))
    assert props["process.roles"] == "broker,controller"
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:19092,CONTROLLER://127.0.0.1:19093"
    assert props["advertised.listeners"] == "PLAINTEXT://127.0.0.1:19092"
    assert props["controller.quorum.bootstrap.servers"] == "127.0.0.1:19093"
    assert props["log.dirs"] == str(tmp_path)
    # One node: internal topics at replication 1 / min ISR 1, no rebalance delay, no auto-created topics.
    for key in ("offsets.topic.replication.factor", "transaction.state.log.replication.factor"):
        assert props[key] == "1"
    assert props["transaction.state.log.min.isr"] == "1"
    assert props["group.initial.rebalance.delay.ms"] == "0"
    assert props["auto.create.topics.enable"] == "false"


def test_cluster_id_is_kafka_shaped() -> None:
    ids = {kraft_cluster_id() for _ in range(50)}
    assert len(ids) == 50
    for cid in ids:
        assert len(cid) == 22 and "=" not in cid
        assert len(base64.urlsafe_b64decode(cid + "==")) == 16


@pytest.mark.parametrize(
    ("banner", "major"),
    [
        ('openjdk version "17.0.15" 2025-04-15', 17),
        ('openjdk version "25" 2025-09-16', 25),
        ('java version "1.8.0_392"', 8),
        ("garbage", None),
    ],
)
def test_java_major_version(monkeypatch: pytest.MonkeyPatch, banner: str, major: int | None) -> None:
    monkeypatch.setattr(
        subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(a, 0, stdout="", stderr=banner + "\n")
    )
    assert devinfra.java_major_version("java") == major


def test_old_java_is_refused_with_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(devinfra, "_java", lambda: "/usr/bin/java")
    monkeypatch.setattr(devinfra, "java_major_version", lambda java: 11)
    assert "Java 17 or newer" in (devinfra.apache_kafka_available() or "")


def test_jar_cache_is_per_version_and_needs_no_maven_once_complete(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLOUDBILL_CACHE_DIR", str(tmp_path))
    home = devinfra.kafka_home(KAFKA_VERSION)
    assert home == tmp_path / f"kafka-{KAFKA_VERSION}"
    assert not devinfra.kafka_jars_cached()
    (home / "libs").mkdir(parents=True)
    (home / ".complete").write_text(KAFKA_VERSION)
    monkeypatch.setattr(devinfra.shutil, "which", lambda name: None)  # no Maven: the cache must suffice
    assert devinfra.ensure_kafka_jars() == home / "libs"


def test_pom_and_compose_use_the_same_kafka_version() -> None:
    pom = devinfra.POM.read_text()
    assert f"<kafka.version>{KAFKA_VERSION}</kafka.version>" in pom
    compose = (Path(__file__).parents[3] / "docker-compose.yml").read_text()
    assert f"apache/kafka:{KAFKA_VERSION}" in compose
