"""Test helpers shared by integration and e2e tests (reading topics to their end, waiting)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import TypeVar

from confluent_kafka import Consumer, KafkaError, TopicPartition

from shared.kafka.records import Record
from shared.settings import Settings

T = TypeVar("T")


def read_all(settings: Settings, topic: str, *, timeout: float = 20.0, committed_only: bool = True) -> list[Record]:
    """Every record of `topic` from offset 0 to the end (detected with partition EOF, not latest offsets)."""
    c = Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap_servers,
            "group.id": f"reader-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "isolation.level": "read_committed" if committed_only else "read_uncommitted",
        }
    )
    try:
        md = c.list_topics(topic, timeout=10)
        parts = sorted(md.topics[topic].partitions)
        c.assign([TopicPartition(topic, p, 0) for p in parts])
        done: set[int] = set()
        out: list[Record] = []
        deadline = time.monotonic() + timeout
        while len(done) < len(parts):
            if time.monotonic() > deadline:
                raise TimeoutError(f"did not reach the end of {topic} in {timeout}s ({len(out)} read)")
            msg = c.poll(0.2)
            if msg is None:
                continue
            if msg.error():
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    done.add(msg.partition())
                continue
            done.discard(msg.partition())
            out.append(Record.from_message(msg))
        return out
    finally:
        c.close()


def wait_until(check: Callable[[], T], *, timeout: float = 30.0, interval: float = 0.2, what: str = "condition") -> T:
    """Poll `check` until it returns something truthy; its last value is returned."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise TimeoutError(f"{what} not reached in {timeout}s (last: {last!r})")


def settings_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment a child process needs to see the same Settings (secrets included)."""
    import os

    from pydantic import SecretStr

    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "DATABASE_", "DIGITALOCEAN_", "SKYAI_"))}
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        if value is None:
            continue
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        elif name == "digitalocean_accounts":
            value = ",".join(f"{a.name}={a.token.get_secret_value()}" for a in value)
        elif name == "skyai_finance_roles":
            value = ",".join(value)
        env[name.upper()] = str(value)
    env["LOG_FORMAT"] = "console"
    env.update(extra)
    return env


class ServiceProcess:
    """`cloudbill run <service>` as a real OS process, for kill/restart tests and e2e."""

    def __init__(self, service: str, settings: Settings, log_dir, **extra_env: str) -> None:
        self.service = service
        self.env = settings_env(settings, **extra_env)
        self.log_path = log_dir / f"{service}.log"
        self.proc = None

    def start(self) -> ServiceProcess:
        import subprocess
        import sys

        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cloudbill", "run", self.service], env=self.env, stdout=log, stderr=subprocess.STDOUT
        )
        return self

    def kill(self) -> None:
        """SIGKILL: no chance to commit, flush or close."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM and wait; SIGKILL after `timeout`."""
        import subprocess

        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
