"""Every touch of faust-streaming 0.15.3's internals: nine fixes for at-least-once processing and clean stops, and named reads.

faust's private code is replaced or read here and nowhere else, so a faust upgrade is re-checked in one place
(tests/unit/matcher/test_matcher_faust_patches.py pins the shape of everything used). Importing this module
changes nothing: `apply_all()` applies the fixes, and services/matcher/main.py calls it before building the
app. The fixes, numbered as the rest of the repo cites them (each function's docstring gives the reason):

1. `fix_commit_across_transaction_markers`: an offset commit crosses every transaction marker, not one.
2. `fix_changelog_delivered_before_commit`: a source offset is committed only after its changelog records.
3. `fix_commit_stops_at_unprocessed_record`: never commit past a record fetched and not processed.
4. `fix_seek_before_resume_after_recovery`: after recovery, seek the stream partitions before they resume.
5. `fix_read_committed_without_transactions`: read committed records only.
6. `fix_recovery_reads_fetch_side_end_offsets`: table recovery reads changelogs to their true end.
7. `fix_fetch_never_asks_for_every_partition`: a waiting fetch never reads an emptied set as every partition.
8. `fix_rebalance_while_stopping_leaves_the_client_alone`: a stop that lands in a group join can end.
9. `fix_fetch_wait_set_by_the_app`: an idle partition's long poll no longer holds back the busy ones.

Re-checked on Apache Kafka 4.4 (the unit tests and the matcher's integration tests run on both brokers):
transaction markers and aborted transactions leave offset gaps there too (1), and 2, 3, 4 and 5 do not depend
on the broker. 6 is not needed there (ListOffsets is exact) and not enabled (`use_fetch_side_end_offsets`).
7 and 8 are between faust and aiokafka only; 9 was measured on Apache Kafka (the embedded broker's fetches are
short either way).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar

import faust
import faust.streams
from faust.tables.recovery import Recovery
from faust.transport.consumer import Consumer, ThreadDelegateConsumer
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread
from faust.transport.producer import ProducerBuffer

T = TypeVar("T")
log = logging.getLogger(__name__)

PATCHED_FOR = "0.15.3"  # the patches replace private faust code: re-check each one before moving the pin
_PATCHED = "_cloudbill_patched"  # on a replacement: it is ours
_ORIGINAL = "_cloudbill_original"  # on a replacement: the faust member it replaced
_DELIVERIES = "_cloudbill_deliveries"
_EXTERNAL = "_cloudbill_external_deliveries"
_FETCHED = "_cloudbill_fetched"
_DROPPED = "_cloudbill_dropped"
_END_OFFSETS = "_cloudbill_end_offsets"
_FETCH_MAX_WAIT_MS = "_cloudbill_fetch_max_wait_ms"

# Every faust member a fix replaces (`applied`, and the shape tests).
REPLACED: tuple[tuple[type, str], ...] = (
    (Consumer, "_add_gap"),
    (ProducerBuffer, "put"),
    (ProducerBuffer, "flush"),
    (Consumer, "__init__"),
    (Consumer, "_new_offset"),
    (Consumer, "on_partitions_revoked"),
    (Consumer, "_wait_next_records"),
    (Recovery, "on_recovery_completed"),
    (AIOKafkaConsumerThread, "_create_worker_consumer"),
    (Recovery, "_build_highwaters"),
    (ThreadDelegateConsumer, "_getmany"),
    (faust.App, "_on_rebalance_when_stopped"),
    (AIOKafkaConsumerThread, "_create_consumer"),
)


class ChangelogNotDelivered(RuntimeError):
    """A buffered (table changelog) message failed: the offsets that produced it must not be committed."""


class Deliveries:
    """Messages put into one producer buffer and not yet delivered, and failures not yet reported."""

    def __init__(self) -> None:
        self.pending: set[asyncio.Future[Any]] = set()
        self.failed: list[BaseException] = []

    def track(self, fut: asyncio.Future[Any]) -> None:
        self.pending.add(fut)
        fut.add_done_callback(self._done)

    def _done(self, fut: asyncio.Future[Any]) -> None:
        self.pending.discard(fut)
        if not fut.cancelled() and (exc := fut.exception()) is not None:
            self.failed.append(exc)  # reported by the next flush (and so retrieved)

    async def wait(self) -> None:
        """Until everything tracked so far is delivered; raises if anything failed since the last wait."""
        waiting = [f for f in self.pending if not f.done()]
        if waiting:
            await asyncio.wait(waiting)
        failed, self.failed = self.failed, []
        if failed:
            raise ChangelogNotDelivered(f"{len(failed)} buffered message(s) not delivered: {failed[0]!r}")


def _attached(obj: Any, key: str, make: Callable[[], T]) -> T:
    """State this module keeps on a faust object, created on first use."""
    if key not in obj.__dict__:
        obj.__dict__[key] = make()
    value: T = obj.__dict__[key]
    return value


def deliveries(buffer: Any) -> Deliveries:
    return _attached(buffer, _DELIVERIES, Deliveries)


def external_deliveries(buffer: Any) -> Deliveries:
    """Records produced outside faust (services/matcher/outputs.py) that the buffer's flush waits for."""
    return _attached(buffer, _EXTERNAL, Deliveries)


def track_delivery(app: Any, fut: asyncio.Future[Any]) -> None:
    """`app`'s next offset commit waits until `fut` (records produced outside faust) is resolved; its failure
    fails that commit (fix 2), so the records that produced them are processed again."""
    external_deliveries(app.producer.buffer).track(fut)


def fetched(consumer: Any) -> dict[Any, set[int]]:
    """Per partition: offsets handed to the agents and not yet known to be committed."""
    return _attached(consumer, _FETCHED, dict)


def dropped_record(consumer: Any) -> str | None:
    """Why the worker must re-read a partition (a record was fetched, skipped, and later ones processed)."""
    return consumer.__dict__.get(_DROPPED) if consumer is not None else None


def unprocessed_floor(consumer: Any, tp: Any) -> int | None:
    """The lowest offset handed to the agents and not acked yet (pruned below the committed offset)."""
    offsets = fetched(consumer).get(tp)
    if not offsets:
        return None
    committed = consumer._committed_offset[tp]
    if committed is not None:
        offsets.difference_update([o for o in offsets if o < committed])
    acked = consumer._acked_index[tp]
    pending = [o for o in offsets if o not in acked]
    return min(pending) if pending else None


# -- Named reads of faust's private members (for runtime.py and app.py) ------------------------------------


def record_dropped_by(app: faust.App) -> str | None:
    """`dropped_record` of the app's consumer, if it has one: the private `_consumer`, because the public
    `consumer` property would create a consumer on a worker that never started one."""
    return dropped_record(app._consumer)


def flow_state(app: faust.App) -> list[str]:
    """faust's view of each assigned partition, one line each, for a stall report (runtime.py logs it).

    Why a partition with records waiting gets nothing: not assigned, paused (recovery), out of the fetched
    set (`active`; faust drops a partition whose channel queue is under pressure and re-adds it from the
    queue's pressure-drop callbacks), or fetched and not acked (`unacked-floor`). Changes nothing faust
    reads; never raises (a member missing after an upgrade reads as `?`).
    """
    consumer: Any = app._consumer  # faust's Consumer: its private members are read below
    if consumer is None:
        return ["no consumer"]
    try:
        conductor: Any = app.topics
        assigned = sorted(consumer.assignment())
        active = consumer._active_partitions
        lines = []
        for tp in assigned:
            flags = [
                "active" if active is None or tp in active else "not-fetched",
                *(["paused"] if tp in consumer._paused_partitions else []),
                *(["buffered"] if tp in consumer._buffered_partitions else []),
            ]
            lines.append(
                f"{tp.topic}[{tp.partition}] {' '.join(flags)} read={consumer._read_offset.get(tp)} "
                f"committed={consumer._committed_offset.get(tp)} unacked-floor={unprocessed_floor(consumer, tp)}"
            )
        for name, channels in sorted(conductor._topic_name_index.items()):
            for ch in channels:
                q = ch.queue
                lines.append(
                    f"channel {name}: queued={q.qsize()}/{q.maxsize} "
                    f"pressure-drop-callbacks={len(q._pending_pressure_drop_callbacks)}"
                )
        lines.append(
            f"consumer flow active={consumer.flow_active}, app flow control active={app.flow_control.is_active()}"
        )
        return lines
    except Exception as e:  # diagnostics must never hide the stall they describe
        return [f"? ({type(e).__name__}: {e})"]


def consumer_thread_tasks(app: faust.App) -> list[asyncio.Task[Any]]:
    """The pending tasks of faust's consumer thread (its own event loop), for a stop or stall report.

    faust's stop waits for that thread to shut down (mode's `ServiceThread.stop > wait_for`); what the thread
    still waits on is only visible here. Read from another thread, so a best effort; never raises.
    """
    try:
        thread_loop = app._consumer._thread.thread_loop  # type: ignore[union-attr]
        return [t for t in asyncio.all_tasks(thread_loop) if not t.done()]
    except Exception:  # diagnostics only: no consumer yet, a member renamed, the set changed while read
        return []


@contextlib.contextmanager
def table_writes_to_partition_of(event: Any) -> Iterator[None]:
    """Table writes in the block go to the changelog partition of `event`'s record.

    faust takes a write's partition from the current event (`Table.partition_for_key` reads the context
    variable `faust.streams._current_event`): the last event the stream yielded, while the app writes a batch
    that may hold several partitions. The app groups a batch by partition and writes each group under one of
    its events. Only this task's context variable is set (and restored): the stream's own `current_event`
    is left alone.
    """
    token = faust.streams._current_event.set(weakref.ref(event))
    try:
        yield
    finally:
        faust.streams._current_event.reset(token)


def use_fetch_side_end_offsets(app: Any, end_offsets: Callable[[str], Mapping[int, int]]) -> None:
    """Table recovery of `app` reads each changelog to `end_offsets(topic)` ({partition: next offset}) at least."""
    app.__dict__[_END_OFFSETS] = end_offsets


def use_fetch_max_wait(app: Any, ms: int) -> None:
    """The worker consumer of `app` waits at most `ms` for a fetch to fill (fix 9), not faust's fixed 1,500."""
    app.__dict__[_FETCH_MAX_WAIT_MS] = ms


class AgentCrashRecordingApp(faust.App):
    """A faust App that remembers the first exception an agent raised: faust only logs it, in its private
    `_on_agent_error` hook, marks the agent crashed and keeps the worker running."""

    agent_crash: BaseException | None = None

    async def _on_agent_error(self, agent: Any, exc: BaseException) -> None:
        if self.agent_crash is None:
            self.agent_crash = exc
            log.error("agent %s crashed: %s: %s", getattr(agent, "name", agent), type(exc).__name__, exc)
        await super()._on_agent_error(agent, exc)


# -- Replacing faust members --------------------------------------------------------------------------------


def _is_patched(owner: type, name: str) -> bool:
    return bool(getattr(owner.__dict__.get(name), _PATCHED, False))


def original(owner: type, name: str) -> Any:
    """faust's own `owner.name`, whether or not a fix replaced it (the shape tests read it)."""
    member = owner.__dict__[name]
    return getattr(member, _ORIGINAL, member)


def _replace(owner: type, name: str, replacement: Callable[..., Any]) -> None:
    setattr(replacement, _ORIGINAL, owner.__dict__[name])
    setattr(replacement, _PATCHED, True)
    setattr(owner, name, replacement)


def applied() -> bool:
    """Have all the fixes been applied (`apply_all`) in this process?"""
    return all(_is_patched(owner, name) for owner, name in REPLACED)


def apply_all(version: str = faust.__version__) -> None:
    """Apply every fix (idempotent). Refuses another faust version: each fix must be re-checked against it."""
    if version != PATCHED_FOR:
        raise RuntimeError(
            f"faust-streaming {version} is installed but services/matcher/faust_patches.py was written for "
            f"{PATCHED_FOR}: re-check every patch against the new version (pyproject.toml pins it)"
        )
    fix_commit_across_transaction_markers()
    fix_changelog_delivered_before_commit()
    fix_commit_stops_at_unprocessed_record()
    fix_seek_before_resume_after_recovery()
    fix_read_committed_without_transactions()
    fix_recovery_reads_fetch_side_end_offsets()
    fix_fetch_never_asks_for_every_partition()
    fix_rebalance_while_stopping_leaves_the_client_alone()
    fix_fetch_wait_set_by_the_app()


# -- 1 -------------------------------------------------------------------------------------------------------


def fix_commit_across_transaction_markers() -> None:
    """Fix 1: offset gaps (transaction markers) are recorded without the record that closes them.

    The ingester writes cost lines in transactions, so the topic has a control record (invisible to consumers)
    after every invoice: offset gaps. faust fills gaps with `_add_gap(tp, last_read + 1, offset)` where
    `offset` is the record that *closes* the gap, and stores the interval inclusive of it, so that record's
    offset is acked twice. `_new_offset` commits only the first run of consecutive offsets and a duplicate
    ends a run: every commit crossed one gap only, i.e. one invoice per partition per commit interval
    (measured: ~14 offsets/s per partition), while processing was long done. The fix records the gap without
    the closing record: exactly the offsets never delivered.

    Upstream: https://github.com/faust-streaming/faust/issues/606 (wrong offset commit in case of gaps).
    """
    if _is_patched(Consumer, "_add_gap"):
        return
    original_add_gap = Consumer._add_gap

    async def _add_gap(self: Any, tp: Any, offset_from: int, offset_to: int) -> None:
        await original_add_gap(self, tp, offset_from, offset_to - 1)

    _replace(Consumer, "_add_gap", _add_gap)


# -- 2 -------------------------------------------------------------------------------------------------------


def fix_changelog_delivered_before_commit() -> None:
    """Fix 2: a commit's producer flush waits until every buffered message is delivered.

    The matcher's output records, produced outside faust (services/matcher/outputs.py), are tracked the same
    way (`track_delivery`). A table write goes to the producer buffer (`send_soon`); a commit first calls
    `producer.flush()`, but the
    buffer's flush gives up after 0.1 s without a sent message and never counts the message its sender task is
    handing to aiokafka. So a source offset could be committed while the changelog record of the state it
    produced was still unsent; a crash then lost that state for good (the record is not redelivered, the
    recovered table lacks it). Found by reading faust while tracing lost completions (not the cause of those:
    see 3 and 4). The fix tracks every buffered message until it is delivered and makes the flush wait for
    all of them; a failed delivery fails the commit (the records are processed again: at-least-once).

    Upstream: no upstream issue found (searched 2026-12-02); the flush before a commit that this completes
    came with https://github.com/faust-streaming/faust/pull/273.
    """
    if _is_patched(ProducerBuffer, "flush"):
        return
    original_put = ProducerBuffer.put
    original_flush = ProducerBuffer.flush

    def put(self: Any, fut: Any) -> None:
        deliveries(self).track(fut)
        original_put(self, fut)

    async def flush(self: Any) -> None:
        await original_flush(self)
        if not self.should_stop:  # stopping: the sender task is gone, unsent messages would never resolve
            await deliveries(self).wait()
        # Records produced outside faust resolve on their own thread, also while faust stops.
        await external_deliveries(self).wait()

    _replace(ProducerBuffer, "put", put)
    _replace(ProducerBuffer, "flush", flush)


# -- 3 -------------------------------------------------------------------------------------------------------


def fix_commit_stops_at_unprocessed_record() -> None:
    """Fix 3: never commit past a record that was fetched and not processed; report the drop.

    At start and after a rebalance faust resumes the flow before it seeks to the committed offsets; a record
    fetched in that window can be dropped from the agent's queue without being acked, and the fetcher goes on
    after it (traced: offsets 20-22 processed, 23 fetched and never yielded, 24-40 processed). `_new_offset`
    then commits past it, because it tolerates one missing offset right after the committed one (meant for a
    transaction marker). The lost line never completed its invoice. The fix remembers every offset handed to
    the agents, and a commit stops at the first one not acked. If later offsets of that partition are acked
    already, the record was dropped (one agent per topic, concurrency 1: acks come in offset order): the
    consumer reports it (`dropped_record`), and the supervisor restarts the worker, which re-reads from the
    record. A transaction marker is never fetched, so it is still crossed.

    Upstream: https://github.com/faust-streaming/faust/issues/221 (prefetched events delivered after a
    rebalance).
    """
    if _is_patched(Consumer, "_new_offset"):
        return
    _replace(Consumer, "__init__", _track_fetched_offsets(Consumer.__init__))
    _replace(Consumer, "_wait_next_records", _track_records_the_client_returned(Consumer._wait_next_records))
    _replace(Consumer, "_new_offset", _hold_commit_at_unprocessed(Consumer._new_offset))
    original_revoked = Consumer.on_partitions_revoked

    async def on_partitions_revoked(self: Any, revoked: Any) -> None:
        tracked = fetched(self)
        for tp in revoked:
            tracked.pop(tp, None)  # a new assignment starts again from the committed offset
        await original_revoked(self, revoked)

    _replace(Consumer, "on_partitions_revoked", on_partitions_revoked)


def _track_fetched_offsets(original_init: Callable[..., None]) -> Callable[..., None]:
    """Consumer.__init__ whose callback (what the fetcher hands every record to) records the offset first."""

    def __init__(self: Any, transport: Any, callback: Any, *args: Any, **kwargs: Any) -> None:
        original_init(self, transport, callback, *args, **kwargs)
        acking = self.app.topics.acks_enabled_for
        tracked = fetched(self)

        async def track_then_deliver(message: Any) -> Any:
            if acking(message.topic):
                tracked.setdefault(message.tp, set()).add(message.offset)
            return await callback(message)

        self.callback = track_then_deliver

    return __init__


def _track_records_the_client_returned(original_wait: Callable[..., Any]) -> Callable[..., Any]:
    """Consumer._wait_next_records that records the offset of every record the Kafka client returned.

    The client's position is past them from then on, but faust's `getmany` does not yield them all: it drops
    the rest of a fetch when the generation changes or the flow stops, and any record of a partition that
    queue pressure took out of the fetched set. Such a record never reaches the callback; the next record of
    its partition that does is taken for the end of a gap (transaction markers) and the commit went past the
    dropped ones. Seen on the batched matcher branch: 5 whole invoices of one partition (offsets 604-2112)
    committed, never processed. Tracked here, an unyielded record holds the commit and is reported as
    dropped (the worker restarts and re-reads it); a revocation forgets them, as the new owner re-reads.
    """

    async def _wait_next_records(self: Any, timeout: float) -> Any:
        records, active = await original_wait(self, timeout)
        if records:
            acking = self.app.topics.acks_enabled_for
            tracked = fetched(self)
            for tp, batch in records.items():
                if batch and acking(tp.topic):
                    tracked.setdefault(tp, set()).update(r.offset for r in batch)
        return records, active

    return _wait_next_records


def _hold_commit_at_unprocessed(original_new_offset: Callable[[Any, Any], int | None]) -> Callable[..., int | None]:
    """Consumer._new_offset that commits up to the first fetched, unacked offset, and flags a drop."""

    def _new_offset(self: Any, tp: Any) -> int | None:
        floor = unprocessed_floor(self, tp)
        acked = self._acked[tp]
        beyond = [] if floor is None else [o for o in acked if o >= floor]
        if floor is None or not beyond:
            return original_new_offset(self, tp)
        if _DROPPED not in self.__dict__:
            self.__dict__[_DROPPED] = (
                f"{tp.topic}[{tp.partition}] offset {floor} was fetched but never processed while "
                f"{len(beyond)} later record(s) were: re-read from it"
            )
        acked[:] = [o for o in acked if o < floor]  # commit up to the unprocessed record, no further
        try:
            return original_new_offset(self, tp)
        finally:
            acked.extend(beyond)
            acked.sort()

    return _new_offset


# -- 4 -------------------------------------------------------------------------------------------------------


def fix_seek_before_resume_after_recovery() -> None:
    """Fix 4: when recovery ends, seek the stream partitions to the committed offsets, then resume them.

    The cause of most of fix 3's drops: when recovery ends, faust resumes the stream partitions, then seeks
    them to the committed offsets (the flow is already running). The fetcher is already running (it read the
    changelogs), so records fetched before the seek reach the agents, or are dropped when the flow resumes,
    and the seek is overtaken by the read offsets they leave behind (traced after every SIGKILL restart:
    records yielded before the seek, the rest of the fetch lost). The fix (in `on_recovery_completed`, the
    path every rebalance with tables takes) seeks first, while the stream partitions are still paused, then
    resumes them. aiokafka's `seek_to_committed` does not seek a partition whose committed offset is 0 or
    absent, so those are sought to the start explicitly: after `cloudbill replay matcher --from-beginning`
    (offsets 0, tables kept, so recovery reads changelogs) the records fetched during recovery were otherwise
    skipped and the worker sat idle with everything unprocessed (traced: position 3, read offset 0, nothing
    delivered; 3 replays in 5).

    Upstream: https://github.com/faust-streaming/faust/issues/216 (resume before the seek; its fix, PR 217,
    reordered the path without tables only).
    """
    if _is_patched(Recovery, "on_recovery_completed"):
        return
    _replace(Recovery, "on_recovery_completed", _on_recovery_completed)


async def _on_recovery_completed(self: Any, generation_id: int = 0) -> None:
    """faust's Recovery.on_recovery_completed with the seek before the stream partitions resume."""
    app = self.app
    consumer = app.consumer
    self.log.info("Restore complete!")
    await app.on_rebalance_complete.send()
    self._set_recovery_ended()
    callbacks = [
        asyncio.ensure_future(
            table.on_recovery_completed(self.actives_for_table[table], self.standbys_for_table[table])
        )
        for table in self.tables.values()
    ]
    if callbacks:
        await asyncio.wait(callbacks)
    assignment = consumer.assignment()
    if app.consumer_generation_id != generation_id:
        self.log.warning("Recovery rebalancing again: generation %s, not %s", app.consumer_generation_id, generation_id)
        return
    if assignment:
        await _seek_stream_partitions(self, consumer, assignment)
    consumer.resume_partitions({tp for tp in assignment if not self._is_changelog_tp(tp)})
    self.completed.set()
    app.flow_control.resume()
    consumer.resume_flow()
    await app._fetcher.maybe_start()
    self.tables.on_actives_ready()
    if not app.assignor.assigned_standbys():
        self.tables.on_standbys_ready()
    app.on_rebalance_end()
    self.log.info("Worker ready")
    log.info("worker ready: %d partition(s) assigned", len(assignment))  # faust's own logs are WARNING+


async def _seek_stream_partitions(recovery: Any, consumer: Any, assignment: Any) -> None:
    """To the committed offsets, and to the start where aiokafka's seek_to_committed skips a partition."""
    timeout = recovery.app.conf.broker_request_timeout
    recovery.log.info("Seek stream partitions to committed offsets.")
    await recovery._wait(consumer.perform_seek(), timeout=timeout)
    # aiokafka's seek_to_committed skips a committed offset of 0 (a group rewound to the start) and a
    # partition with none: seek those to the start, or records fetched during recovery stay skipped.
    read = consumer._read_offset
    start = {tp: 0 for tp in assignment if not recovery._is_changelog_tp(tp) and not read.get(tp)}
    if start:
        await recovery._wait(consumer.seek_wait(start), timeout=timeout)


# -- 5 -------------------------------------------------------------------------------------------------------


def fix_read_committed_without_transactions() -> None:
    """Fix 5: the worker's Kafka consumer reads committed records only.

    faust reads `read_committed` only under its `exactly_once` guarantee, which we do not use (see app.py).
    The ingester writes an invoice's lines in one transaction; on Apache Kafka a read_uncommitted matcher
    would enrich the lines of an aborted transaction, and if the invoice then changed before the retry, it
    would publish enrichments of a revision that never existed. The embedded broker shows aborted records
    either way (docs/architecture.md, Brokers); there the ingester's identical re-sends make them harmless
    duplicates. faust picks read_committed when `consumer.in_transaction`: the fix says so just while the
    client is built, so faust's transaction manager stays off.

    Upstream: no upstream issue found (searched 2026-12-02).
    """
    if _is_patched(AIOKafkaConsumerThread, "_create_worker_consumer"):
        return
    original_create_worker_consumer = AIOKafkaConsumerThread._create_worker_consumer

    def _create_worker_consumer(self: Any, transport: Any) -> Any:
        consumer = self.consumer
        in_transaction = consumer.in_transaction
        consumer.in_transaction = True
        try:
            return original_create_worker_consumer(self, transport)
        finally:
            consumer.in_transaction = in_transaction

    _replace(AIOKafkaConsumerThread, "_create_worker_consumer", _create_worker_consumer)


# -- 6 -------------------------------------------------------------------------------------------------------


def fix_recovery_reads_fetch_side_end_offsets() -> None:
    """Fix 6: table recovery reads changelogs to their true end when the app gives the fetch-side end.

    Recovery ends when it reaches the changelog's end offset as the broker's ListOffsets answers it; the
    embedded broker answers the last batch's first offset + 1 (measured: 1 for a 100-record batch), so a
    batched changelog was recovered up to its last batch only, and the state of lines already committed was
    gone. The fix takes the end read from the fetch side (`shared.kafka.admin.high_watermarks`) when the app
    provides it (`use_fetch_side_end_offsets`, on the embedded broker), so the producer batches there too;
    without it, one-record batches were needed. Without `use_fetch_side_end_offsets` faust's answer stands.

    Upstream: no upstream issue found (searched 2026-12-02): the low answer is the embedded broker's.
    """
    if _is_patched(Recovery, "_build_highwaters"):
        return
    original_build_highwaters = Recovery._build_highwaters

    async def _build_highwaters(self: Any, consumer: Any, tps: Any, destination: Any, title: str) -> None:
        await original_build_highwaters(self, consumer, tps, destination, title)
        end_offsets = self.app.__dict__.get(_END_OFFSETS)
        if end_offsets is None:
            return
        loop = asyncio.get_running_loop()
        topics = sorted({tp.topic for tp in tps})
        # A blocking client: off the event loop, the topics at once (each read costs a probe consumer).
        ends = await asyncio.gather(*(loop.run_in_executor(None, end_offsets, t) for t in topics))
        for topic, end in zip(topics, ends, strict=True):
            for tp in tps:
                if tp.topic == topic and tp.partition in end:
                    # faust keeps the last offset (end - 1); the broker's answer is never above the truth.
                    destination[tp] = max(destination[tp], end[tp.partition] - 1)
        self.log.info("%s changelog ends read from the fetch side: %s", title, dict(destination))

    _replace(Recovery, "_build_highwaters", _build_highwaters)


# -- 7 -------------------------------------------------------------------------------------------------------


def fix_fetch_never_asks_for_every_partition() -> None:
    """Fix 7: a fetch in flight never reads "no active partition" as "every partition".

    faust hands its own `_active_partitions` set to the consumer thread, where aiokafka's `fetched_records`
    waits for data and re-reads it on every wake-up (`if partitions and tp not in partitions`). When recovery
    ends, faust pauses the changelog partitions it was reading: the set empties while that fetch waits, and
    aiokafka reads an empty set as *every assigned partition*. It returned the stream partitions' records
    (paused, so faust dropped them) and moved its position past them, after fix 4 had sought them to the
    committed offset: the worker sat idle with the records unprocessed until the stall watchdog ended it
    (traced after `cloudbill replay matcher --from-beginning` on a loaded machine, 4 runs in 10: positions 3, 2
    and 1 right after the seek to 0; "client returned cost-lines[1] [0, 1, 2]" for a paused partition).

    The fix passes a live view of the same set that is never falsy: a partition faust takes out while the fetch
    waits (a pause, queue pressure) is left out at once, as before, and an emptied set returns nothing.

    Upstream: no upstream issue found (searched 2026-12-03); faust's own comment in `_wait_next_records`
    ("fetch records only if active partitions to avoid the risk of fetching all partitions") is the intent
    this keeps for a fetch already waiting.
    """
    if _is_patched(ThreadDelegateConsumer, "_getmany"):
        return

    async def _getmany(self: Any, active_partitions: Any, timeout: float) -> Any:
        if active_partitions is None:  # a client-only app: every partition, as faust means it
            return await self._thread.getmany(None, timeout)
        if not active_partitions:  # faust checks this before the call already
            return {}
        return await self._thread.getmany(ActivePartitions(active_partitions), timeout)

    _replace(ThreadDelegateConsumer, "_getmany", _getmany)


# -- 8 -------------------------------------------------------------------------------------------------------


def fix_rebalance_while_stopping_leaves_the_client_alone() -> None:
    """Fix 8: a rebalance callback during a stop no longer closes the Kafka client from the wrong event loop.

    When a rebalance callback finds the app stopping, faust calls `consumer.close()`, which schedules aiokafka's
    `client.close()` and `coordinator.close()` on the app's main loop; the client's tasks live on the consumer
    thread's loop. `close()` cancelled the client's metadata task there and then failed (a task of another
    loop cannot be awaited). The group join that called back went on: as group leader it waited for a
    metadata update that the cancelled task would never make, the consumer thread's own shutdown waited for
    the join, and faust's stop never ended (traced with a SIGTERM right after a start, the first join's
    revocation: `_perform_assignment > _maybe_wait_metadata` on the consumer thread, no metadata task left;
    CI's stop test failed so, about 1 run in 10; the worker is killed after `stop_timeout_s` in production).

    The fix does nothing there: a stopping app's consumer thread closes the consumer itself, on its own loop
    and in aiokafka's order (coordinator, fetcher, client), once the join has returned.

    Upstream: no upstream issue found (searched 2026-12-03).
    """
    if _is_patched(faust.App, "_on_rebalance_when_stopped"):
        return

    def _on_rebalance_when_stopped(self: Any) -> None:
        log.info("rebalance while stopping: the consumer thread's shutdown closes the consumer")

    _replace(faust.App, "_on_rebalance_when_stopped", _on_rebalance_when_stopped)


# -- 9 -------------------------------------------------------------------------------------------------------


def fix_fetch_wait_set_by_the_app() -> None:
    """Fix 9: the worker consumer's fetch waits what the app says (`use_fetch_max_wait`), not a fixed 1.5 s.

    faust builds its worker consumer with `fetch_max_wait_ms=1500` and no setting to change it. aiokafka keeps
    one fetch in flight per broker, and asks only for the partitions it holds no unread records of: while the
    others' records were being processed, the fetch went out for the idle ones alone (the inventory, a
    drained partition), and the broker held it for 1.5 s waiting for data. Every busy partition that ran dry
    meanwhile waited for that answer. The matcher alone on 100,000 lines of a filled topic (Apache Kafka,
    bench `matcher_replay`): 2,497 lines/s with the agent waiting for records 28 of 40 s; 6,312 lines/s with
    50 ms, CPU-bound (250 ms: 6,957, the same). What it costs: an idle worker's empty fetch every 50 ms, measured
    over 30 s idle as 1.8% of a core for the matcher (0.5% at 1.5 s) and ~2.5 points more for the broker.

    Upstream: faust hard-codes it (faust/transport/drivers/aiokafka.py, `_create_worker_consumer`); no upstream
    issue found (searched 2026-12-04).
    """
    if _is_patched(AIOKafkaConsumerThread, "_create_consumer"):
        return
    original_create_consumer = AIOKafkaConsumerThread._create_consumer

    def _create_consumer(self: Any, loop: Any) -> Any:
        consumer = original_create_consumer(self, loop)
        ms = self.app.__dict__.get(_FETCH_MAX_WAIT_MS)
        if ms is not None and not self.app.client_only:
            consumer._fetch_max_wait_ms = ms  # read when aiokafka builds its fetcher, at the consumer's start
        return consumer

    _replace(AIOKafkaConsumerThread, "_create_consumer", _create_consumer)


class ActivePartitions:
    """faust's live set of active partitions as a waiting fetch reads it: membership follows the set, and it is
    never falsy (an empty partition list means every partition to aiokafka)."""

    __slots__ = ("live",)

    def __init__(self, live: Any) -> None:
        self.live = live

    def __contains__(self, tp: object) -> bool:
        return tp in self.live

    def __iter__(self) -> Any:
        return iter(tuple(self.live))

    def __len__(self) -> int:
        return len(self.live)

    def __bool__(self) -> bool:
        return True
