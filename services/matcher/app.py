"""The matcher's faust app: inventory GlobalTable, three assembly tables, two agents. Adapters only.

- `inventory` agent: cloud.resources → GlobalTable `inventory` (key = resource key; a history record, exists=False, stays; a tombstone deletes).
  Every worker reads every partition of its changelog (lines are keyed by invoice, resources by resource:
  they are not co-partitioned), and keeps a local (account, kind, name) index fed from the table's
  changelog events and from its own writes.
- `lines` agent: billing.cost-lines, in batches → one CostLineMatched per line, and
  InvoiceCompleted once a revision's marker and all its lines are in. The state is line facts in chunks, a
  completed record per revision and a waiting record per invoice (tables `line-fact-chunks`,
  `revisions-completed`, `revisions-waiting`); why that is correct is in services/matcher/domain/assembly.py
  and docs/architecture.md.
- Poison records go to the source topic's DLQ with shared.kafka.deadletter's headers; they never crash
  an agent. Anything else an agent raises (the broker failing) ends the process (see runtime.py).

faust guards (docs/architecture.md, Matcher): concurrency 1 per agent, at-least-once with deterministic event
ids (not `exactly_once`), raw key/value serializers on every Kafka topic we share with the other services,
topics never declared by faust (we create them, changelogs with the source's partition count), no web
server unless a port is configured, in-memory store by default. The producer batches on both brokers: on the
embedded broker, whose latest-offset answer is too low for batched changelogs, table recovery reads the
changelogs' ends from the fetch side (faust_patches 6) instead of needing one-record batches.

Tables keep faust's default `recovery_buffer_size`. With 1, faust 0.15.3 *resumes the active changelog
partitions after recovery* (`Recovery._restart_recovery`, "the specific scenario where recovery_buffer=1")
and applies the worker's own changelog records back to its live tables, behind its writes: an older value
replaced a newer one. That was the lost-lines defect of the per-invoice read-modify-write assembly (traced:
the value with 405 lines written, changelog offsets 32..35 re-applied, the next line wrote 37 lines).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from confluent_kafka.cimpl import NewTopic  # confluent_kafka.admin re-exports it, but not explicitly
from prometheus_client import Gauge

from services.matcher import faust_patches, handler
from services.matcher.domain import Completed, InventoryEntry, InventoryIndex, Waiting, assembly
from services.matcher.options import (
    COMPLETED_TABLE,
    FACTS_TABLE,
    INVENTORY_TABLE,
    SERVICE,
    WAITING_TABLE,
    MatcherOptions,
    app_id_of,
    changelog_topic_names,
)
from services.matcher.outputs import Outputs
from services.matcher.runtime import SupervisedApp
from shared.kafka.admin import admin, ensure_topics, group_lag, high_watermarks
from shared.kafka.deadletter import dead_letter
from shared.kafka.records import Out, Record
from shared.settings import Settings
from shared.topics import COST_LINES, COST_LINES_MATCHED, INVOICE_COMPLETED, RESOURCES

log = logging.getLogger(__name__)

WAITING = Gauge(
    "cloudbill_matcher_revisions_waiting", "Invoice revisions whose end marker was read while lines were missing"
)
WAITING_AGE = Gauge(
    "cloudbill_matcher_oldest_waiting_revision_age_seconds",
    "Age of the oldest waiting revision's end marker (0: none waits)",
)


def broker_url(bootstrap: str) -> str:
    """`host1:9092,host2:9092` → faust's `kafka://host1:9092;kafka://host2:9092`."""
    return ";".join(f"kafka://{h.strip()}" for h in bootstrap.split(",") if h.strip())


def create_changelog_topics(settings: Settings, app_id: str, timeout: float = 30.0) -> None:
    """Create the tables' changelogs with the source topics' partition count; refuse a mismatch.

    faust must not create them (the embedded broker would auto-create 4 partitions, and faust refuses a
    table whose changelog and source differ in partitions).
    """
    names = changelog_topic_names(app_id)
    cfg = {"cleanup.policy": "compact"}
    created = ensure_topics(
        settings,
        [NewTopic(n, settings.kafka_partitions, settings.kafka_replication_factor, config=cfg) for n in names],
        timeout,
    )
    for name in (n for n, state in created.items() if state == "created"):
        log.info("created changelog topic %s", name)
    md = admin(settings).list_topics(timeout=timeout)
    p = settings.kafka_topic_prefix
    sources = [(RESOURCES.name(p), names[0])] + [(COST_LINES.name(p), n) for n in names[1:]]
    for source, changelog in sources:
        ns, nc = len(md.topics[source].partitions), len(md.topics[changelog].partitions)
        if ns != nc:
            raise RuntimeError(f"changelog {changelog} has {nc} partitions but its source {source} has {ns}")


class InventoryGate:
    """At start, cost lines wait until the inventory backlog (as of start) has been read.

    Without it a fresh consumer group (a replay) would match lines against a half-loaded inventory.
    `targets` are the end offsets of cloud.resources partitions that had unread records at start.

    The gate gives up (and matching starts anyway, with a warning naming the partitions behind) only when the
    inventory made no progress for `timeout_s`, counted from the first wait: the worker's own start (faust,
    rebalance, table recovery) is not the inventory's fault and may take long on a busy machine, and a large
    inventory still being read keeps the gate closed (a CI replay matched against a half-read inventory when
    the budget ran from the worker's construction).
    """

    def __init__(self, targets: dict[int, int], timeout_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.targets = dict(targets)
        self.timeout_s = timeout_s
        self.clock = clock
        self.progress: dict[int, int] = {}
        self.last_record: float | None = None
        self.waiting_since: float | None = None
        self._open = not self.targets

    @property
    def open(self) -> bool:
        return self._open

    def seen(self, partition: int, offset: int) -> None:
        self.progress[partition] = max(self.progress.get(partition, 0), offset + 1)
        self.last_record = self.clock()

    def behind(self, assigned: Iterable[int]) -> dict[int, tuple[int, int]]:
        """Assigned partitions not read to their target yet → (read up to, target)."""
        now = self.clock()
        idle = self.last_record is None or now - self.last_record >= 0.5
        out: dict[int, tuple[int, int]] = {}
        for p in assigned:
            target = self.targets.get(p)
            if target is None:
                continue
            done = self.progress.get(p, -1)
            # A trailing transaction marker takes an offset no record carries: tolerate it once idle.
            if done < target and not (idle and done >= target - 1):
                out[p] = (max(done, 0), target)
        return out

    def check(self, assigned: Iterable[int]) -> bool:
        """Open the gate if the backlog is read, or if it made no progress for the timeout; is it open?"""
        if self._open:
            return True
        now = self.clock()
        if self.waiting_since is None:
            self.waiting_since = now
        behind = self.behind(assigned)
        if not behind:
            self._open = True
            log.info("inventory backlog read: matching starts")
        elif now - max(self.waiting_since, self.last_record or 0.0) > self.timeout_s:  # since the latest of the two
            self._open = True
            log.warning(
                "inventory backlog made no progress for %.0fs: matching starts anyway (cloud.resources "
                "partitions behind, read up to / end at start: %s)",
                self.timeout_s,
                ", ".join(f"[{p}] {done}/{target}" for p, (done, target) in sorted(behind.items())),
            )
        return self._open

    async def wait(self, assigned: Callable[[], Iterable[int]]) -> None:
        while not self.check(assigned()):
            await asyncio.sleep(0.05)


class ProgressWatch:
    """Liveness of the lines agent: records waiting (the group's lag) and no progress for too long.

    Seen on the embedded broker after a SIGKILL and restart: the worker stopped receiving records, with an
    invoice left incomplete. Ending the worker (non-zero exit) lets its supervisor restart it; at-least-once
    delivery and deterministic event ids make the restart safe. The lag comes from the broker (committed
    offsets vs the fetch-side end, counted in records), not from faust, whose view is what went stale.
    """

    def __init__(self, timeout_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.timeout_s = timeout_s
        self.clock = clock
        self.last_progress = clock()

    def processed(self) -> None:
        self.last_progress = self.clock()

    def due(self) -> bool:
        """Worth asking the broker: nothing processed for the timeout."""
        return bool(self.timeout_s) and self.clock() - self.last_progress >= self.timeout_s

    def stalled(self, pending: Mapping[int, int]) -> str | None:
        if not self.due():
            return None
        waiting = {p: n for p, n in sorted(pending.items()) if n > 0}
        if not waiting:
            return None
        return (
            f"{sum(waiting.values())} cost-line record(s) waiting on partition(s) {sorted(waiting)}, "
            f"none processed for {self.clock() - self.last_progress:.0f}s"
        )


def liveness_probe(settings: Settings, app: SupervisedApp, watch: ProgressWatch) -> Callable[[], str | None]:
    """The supervisor's liveness check (run off the event loop): a stall reason, or None when healthy.

    It runs outside faust on purpose: a worker stuck before it is ready never starts faust's own timers.
    """
    name = COST_LINES.name(settings.kafka_topic_prefix)

    def probe() -> str | None:
        if not watch.due():
            return None
        lags = group_lag(settings, app.conf.id, [name])
        return watch.stalled({pl.partition: pl.lag for pl in lags})

    return probe


def inventory_read(settings: Settings, options: MatcherOptions | None = None) -> bool:
    """Has the matcher read (and committed) the whole inventory topic as it stands now?

    A line is matched against the inventory the matcher holds when it processes the line. Starting from
    empty with everything at once (the demo, end-to-end tests), sync the inventory and wait for this
    before polling the billing history; on schedules the inventory is loaded long before.
    """
    app_id = app_id_of(settings, options or MatcherOptions())
    lags = group_lag(settings, app_id, [RESOURCES.name(settings.kafka_topic_prefix)])
    return bool(lags) and all(pl.lag == 0 for pl in lags)


def inventory_targets(settings: Settings, app_id: str) -> dict[int, int]:
    """cloud.resources partitions with records this group has not committed yet → their end offsets."""
    lags = group_lag(settings, app_id, [RESOURCES.name(settings.kafka_topic_prefix)])
    return {pl.partition: pl.high for pl in lags if pl.lag > 0}


def _record(event: Any) -> Record:
    msg = event.message
    key = msg.key
    raw_headers = msg.headers or []
    items = raw_headers.items() if isinstance(raw_headers, dict) else raw_headers
    return Record(
        topic=msg.topic,
        partition=msg.partition,
        offset=msg.offset,
        key=key.decode("utf-8", "replace") if isinstance(key, bytes) else key,
        value=msg.value,
        headers={k: (v if isinstance(v, bytes) else str(v or "").encode()) for k, v in items},
        timestamp_ms=int(msg.timestamp * 1000) if msg.timestamp else None,
    )


class _Topics:
    """Every topic shared with other services, declared once: raw bytes both ways (we decode/encode the envelope).

    Records are sent through `Outputs` (librdkafka), created on first use so that an app built and never
    run (tests) opens no connection; their delivery gates the next offset commit (faust_patches 2)."""

    def __init__(self, app: SupervisedApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        self.declared: dict[str, Any] = {}
        self._outputs: Outputs | None = None

    def __call__(self, name: str) -> Any:
        if name not in self.declared:
            self.declared[name] = self.app.topic(
                name, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw"
            )
        return self.declared[name]

    def send(self, outs: Sequence[Out]) -> None:
        """No await per record: a failed delivery fails the next offset commit, so the records that produced
        it are processed again."""
        if not outs:
            return
        if self._outputs is None:
            self._outputs = Outputs(self.settings, f"{self.app.conf.id}-outputs")
            self.app.on_worker_stopped.append(self._outputs.close)
        fut = self._outputs.send(outs)
        if fut is not None:
            faust_patches.track_delivery(self.app, fut)

    def dead_letter(self, rec: Record, error: Exception) -> None:
        self.send([dead_letter(rec, error, SERVICE)])


class _Tables:
    """The matcher's faust tables; the assembly state as the handler reads it (handler.AssemblyTables)."""

    def __init__(self, app: SupervisedApp, partitions: int, index: InventoryIndex) -> None:
        async def on_inventory_changelog(event: Any) -> None:
            key = event.key.decode() if isinstance(event.key, bytes) else event.key
            if event.value is None:
                index.remove(key)
            else:
                index.upsert(InventoryEntry.from_dict(event.value))

        # keys and values: JSON (tables)
        kw: dict[str, Any] = {"partitions": partitions, "key_type": str}
        # Not recovery_buffer_size=1: faust would then read our own changelogs back over live values (docstring).
        # GlobalTable applies standby changes one by one already (faust sets standby_buffer_size=1).
        self.inventory = app.GlobalTable(INVENTORY_TABLE, on_changelog_event=on_inventory_changelog, **kw)
        self.facts = app.Table(FACTS_TABLE, **kw)
        self.completed_by_revision = app.Table(COMPLETED_TABLE, **kw)
        self.waiting_by_invoice = app.Table(WAITING_TABLE, **kw)

    def completed(self, revision_key: str) -> Completed | None:
        return Completed.from_json(self.completed_by_revision.get(revision_key))

    def fact_chunk(self, chunk_key: str) -> Mapping[str, list[int]] | None:
        v: Mapping[str, list[int]] | None = self.facts.get(chunk_key)
        return v

    def waiting(self, invoice_uuid: str) -> Mapping[int, Waiting]:
        return assembly.waiting_from_json(self.waiting_by_invoice.get(invoice_uuid))


# Records one poll hands faust, at most. faust takes a partition out of the fetch once its stream's queue holds
# stream_buffer_maxsize / 1.25 events (3,277 of 4,096), and delivers what the poll already returned: a poll
# larger than the rest of the queue (819) fills it, and faust's conductor then waits for room, with every
# partition behind it. While the lines agent waited for the inventory gate, that blocked the inventory's own
# records: the gate gave up after its timeout and lines were matched against an empty inventory (the scale
# test's 45,000 lines on the embedded broker failed 3 of 3 runs; with this bound, 2 of 2 passed).
MAX_POLL_RECORDS = 500


def _faust_app(settings: Settings, options: MatcherOptions) -> SupervisedApp:
    """The faust App with the guards of the module docstring (no agents, tables or topics yet)."""
    app_id = app_id_of(settings, options)
    datadir = Path(options.datadir or Path(tempfile.gettempdir()) / "cloudbill-matcher" / app_id)
    datadir.mkdir(parents=True, exist_ok=True)
    app = SupervisedApp(
        app_id,
        broker=broker_url(settings.kafka_bootstrap_servers),
        store=options.store,
        datadir=str(datadir),
        autodiscover=False,
        processing_guarantee="at_least_once",
        key_serializer="raw",
        value_serializer="raw",
        topic_partitions=settings.kafka_partitions,
        topic_allow_declare=False,
        topic_disable_leader=True,
        consumer_auto_offset_reset="earliest",
        broker_max_poll_records=MAX_POLL_RECORDS,
        producer_max_batch_size=options.producer_max_batch_size or None,
        producer_linger=options.producer_linger_s,
        producer_acks=-1,
        broker_session_timeout=settings.kafka_session_timeout_ms / 1000,
        broker_heartbeat_interval=settings.kafka_heartbeat_interval_ms / 1000,
        broker_commit_interval=options.commit_interval_s,
        web_enabled=options.web_port > 0,
        web_port=options.web_port or 6066,
        web_bind=options.web_bind,
        web_host=options.web_bind,
    )
    faust_patches.use_fetch_max_wait(app, options.fetch_max_wait_ms)
    if settings.kafka_broker_flavor == "embedded":
        # Its ListOffsets answer is too low for batched changelogs: recovery reads to the fetch-side end.
        faust_patches.use_fetch_side_end_offsets(app, lambda topic: high_watermarks(settings, topic))
    return app


def create_app(
    settings: Settings, options: MatcherOptions, gate: InventoryGate, watch: ProgressWatch | None = None
) -> SupervisedApp:
    """Build the faust app (one per run: faust apps hold state and cannot be restarted).

    Run `faust_patches.apply_all()` first (services/matcher/main.py does): the app relies on those fixes.
    """
    p = settings.kafka_topic_prefix
    app = _faust_app(settings, options)
    topics = _Topics(app, settings)
    resources_topic = topics(RESOURCES.name(p))
    index = InventoryIndex()
    tables = _Tables(app, settings.kafka_partitions, index)
    progress = watch or ProgressWatch(0)
    inventory_agent = _inventory_agent(app, resources_topic, topics, tables, index, gate, progress)
    lines_gate = _LinesGate(app, resources_topic, gate)
    lines_agent = _lines_agent(app, settings, options, topics, tables, index, lines_gate, progress)
    timer = _waiting_metrics(app, tables)
    _restart_stall_clock_on_rebalance(app, progress)
    log.debug("agents: %s, %s; timer %s", inventory_agent.name, lines_agent.name, timer)  # registered
    return app


def _inventory_agent(
    app: SupervisedApp,
    source: Any,
    topics: _Topics,
    tables: _Tables,
    index: InventoryIndex,
    gate: InventoryGate,
    progress: ProgressWatch,
) -> Any:
    """cloud.resources → the inventory table and the local index; poison records to the DLQ.

    While lines wait for the inventory backlog (the gate), reading it is the worker's progress: a large
    inventory is not a stall.
    """
    inventory = tables.inventory

    @app.agent(source, name="inventory", concurrency=1)
    async def inventory_agent(stream: Any) -> None:
        async for event in stream.events():
            rec = _record(event)
            try:
                change = handler.resource_change(rec)
            except Exception as e:  # poison: never blocks the partition
                topics.dead_letter(rec, e)
            else:
                if change.entry is None:
                    if change.resource_key in inventory:
                        del inventory[change.resource_key]
                    index.remove(change.resource_key)
                else:
                    inventory[change.resource_key] = change.entry.to_dict()
                    index.upsert(change.entry)
            gate.seen(rec.partition, rec.offset)
            if not gate.open:
                progress.processed()

    return inventory_agent


class _LinesGate:
    """The InventoryGate as the lines agent waits on it: for the cloud.resources partitions assigned here."""

    def __init__(self, app: SupervisedApp, resources_topic: Any, gate: InventoryGate) -> None:
        self.app = app
        self.resources_topic = resources_topic
        self.gate = gate

    def assigned_resource_partitions(self) -> set[int]:
        name = self.resources_topic.get_topic_name()
        return {tp.partition for tp in self.app.consumer.assignment() if tp.topic == name}

    async def wait(self) -> None:
        await self.gate.wait(self.assigned_resource_partitions)


def _lines_agent(
    app: SupervisedApp,
    settings: Settings,
    options: MatcherOptions,
    topics: _Topics,
    tables: _Tables,
    index: InventoryIndex,
    gate: _LinesGate,
    progress: ProgressWatch,
) -> Any:
    """billing.cost-lines → matched lines and completed invoices (handler.py); poison records to the DLQ."""
    p = settings.kafka_topic_prefix
    lines_topic = topics(COST_LINES.name(p))
    matched_topic, completed_topic = topics(COST_LINES_MATCHED.name(p)), topics(INVOICE_COMPLETED.name(p))

    @app.agent(lines_topic, name="lines", concurrency=1)
    async def lines_agent(stream: Any) -> None:
        # A batch: the records collected within batch_wait_s of its first one, or batch_max of them. Acks are
        # ours: an event is acked once its batch is applied, so no offset is committed before its batch's
        # writes are buffered (faust_patches 2 waits for them), and a batch cancelled half-way (a stop) is not
        # acked at all. Not faust's `take_events`: its `finally` acks every event of the batch it yielded when
        # the body is cancelled, later partitions of the batch unprocessed; a stop then lost whole invoices
        # (tests/e2e/test_broker_faults.py, rebalance). The stream is read by a collector task, never by this
        # loop: see Collected.
        stream.enable_acks = False
        collected = Collected(options.batch_max, options.batch_wait_s)
        collector = asyncio.ensure_future(collected.collect(stream.events()))
        try:
            while (batch := await collected.take()) is not None:
                await gate.wait()
                for partition_events in _by_partition(batch):
                    effects = handler.cost_lines(
                        [_record(e) for e in partition_events],
                        index,
                        tables,
                        matched_topic=matched_topic.get_topic_name(),
                        completed_topic=completed_topic.get_topic_name(),
                    )
                    with faust_patches.table_writes_to_partition_of(partition_events[-1]):
                        await _apply_effects(app, topics, tables, effects)
                for e in batch:
                    await stream.ack(e)
                progress.processed()
        finally:
            collector.cancel()

    return lines_agent


class Collected:
    """The events a collector task read from the stream and the agent has not taken yet.

    Why a separate task: faust, when it stops or gives partitions away, clears the stream's queue and then
    waits until every event it handed out is acked (`stream_wait_empty`). A loop that collects a batch and
    reads the stream itself can be parked reading the cleared queue with a partial batch in hand: never
    applied, never acked, and the stop waited until its timeout (seen in CI,
    tests/integration/matcher/test_matcher_kill_restart.py, stops while lines arrive). Here only the
    collector waits on the stream; the agent takes what was collected by the batch's deadline, whatever the
    stream does, applies it and acks it.
    """

    def __init__(self, max_events: int, wait_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_events = max_events
        self.wait_s = wait_s
        self.clock = clock
        self.events: list[Any] = []
        self._first_at = 0.0
        self._added = asyncio.Event()  # an event was added, or the collector ended
        self._room = asyncio.Event()  # the batch is below max_events
        self._room.set()
        self._ended: BaseException | None = None  # the collector's end: StopAsyncIteration or its error

    async def collect(self, events: AsyncIterator[Any]) -> None:
        """The collector task: every event of `events` into the batch, waiting while the batch is full."""
        try:
            async for event in events:
                while len(self.events) >= self.max_events:
                    self._room.clear()
                    await self._room.wait()
                if not self.events:
                    self._first_at = self.clock()
                self.events.append(event)
                self._added.set()
            self._ended = StopAsyncIteration("the stream ended")
        except asyncio.CancelledError:
            raise
        except BaseException as e:  # the agent raises it: a stream that fails crashes the agent, as before
            self._ended = e
            raise
        finally:
            self._added.set()

    async def take(self) -> list[Any] | None:
        """The next batch: at least one event, returned when full or `wait_s` after its first event was
        collected. None once the stream ended and everything was taken; the collector's error is raised."""
        while not self.events or (len(self.events) < self.max_events and self._ended is None):
            if self.events and (left := self._first_at + self.wait_s - self.clock()) <= 0:
                break
            if not self.events and self._ended is not None:
                if isinstance(self._ended, StopAsyncIteration):
                    return None
                raise self._ended
            self._added.clear()
            if not self.events:
                await self._added.wait()
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._added.wait(), left)
        batch, self.events = self.events, []
        self._room.set()
        return batch


def _by_partition(events: list[Any]) -> list[list[Any]]:
    """A batch's events per source partition, each in offset order: a partition's table writes go to its
    changelog partition (the invoice's records and state live in one partition)."""
    groups: dict[int, list[Any]] = {}
    for e in events:
        groups.setdefault(e.message.partition, []).append(e)
    return list(groups.values())


async def _apply_effects(app: SupervisedApp, topics: _Topics, tables: _Tables, fx: handler.Effects) -> None:
    """A batch's effects, in handler.Effects's order. One await: the completed records' delivery."""
    topics.send(fx.outs)
    for rec, error in fx.dead:  # poison: never blocks the partition
        topics.dead_letter(rec, error)
    for key, chunk in fx.fact_chunks.items():
        tables.facts[key] = chunk
    if fx.completed:
        for key, value in fx.completed.items():
            tables.completed_by_revision[key] = value
        # Durable before any fact is deleted: a crash must never leave facts gone and no completion.
        await app.producer.buffer.flush()
    for key in fx.delete_chunks:
        if key in tables.facts:
            del tables.facts[key]
    for invoice, waiting in fx.waiting.items():
        if waiting is not None:
            tables.waiting_by_invoice[invoice] = waiting
            log.warning("invoice %s: end marker read, revision(s) waiting for lines: %s", invoice, waiting)
        elif invoice in tables.waiting_by_invoice:
            del tables.waiting_by_invoice[invoice]


def _waiting_metrics(app: SupervisedApp, tables: _Tables) -> Any:
    """A 5 s timer: waiting revisions as Prometheus gauges (the table holds only this worker's partitions)."""

    @app.timer(5.0)  # type: ignore[untyped-decorator]  # faust's timer decorator is unannotated
    async def waiting_metrics() -> None:
        now_ms = int(time.time() * 1000)
        since = [
            w.since_ms or now_ms
            for v in list(tables.waiting_by_invoice.values())
            for w in assembly.waiting_from_json(v).values()
        ]
        WAITING.set(len(since))
        WAITING_AGE.set(max(0, now_ms - min(since)) / 1000 if since else 0)

    return waiting_metrics


def _restart_stall_clock_on_rebalance(app: SupervisedApp, progress: ProgressWatch) -> None:
    """A worker that (re)joined and recovered has progressed: the stall clock restarts."""

    # mode's handler type (positional sender, keyword-only `signal`) rejects a handler taking them as **kwargs.
    @app.on_rebalance_complete.connect  # type: ignore[arg-type]
    async def ready(app: Any, **kwargs: Any) -> None:
        progress.processed()
