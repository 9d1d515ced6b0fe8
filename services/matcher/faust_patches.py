"""Six fixes for faust-streaming 0.15.3's at-least-once processing, applied at import.

1. Offset gaps (transaction markers). The ingester writes cost lines in transactions, so the topic has a
   control record (invisible to consumers) after every invoice: offset gaps. faust fills gaps with
   `_add_gap(tp, last_read + 1, offset)` where `offset` is the record that *closes* the gap, and stores the
   interval inclusive of it, so that record's offset is acked twice. `_new_offset` commits only the first
   run of consecutive offsets and a duplicate ends a run: every commit crossed one gap only, i.e. one
   invoice per partition per commit interval (measured: ~14 offsets/s per partition), while processing was
   long done. The fix records the gap without the closing record: exactly the offsets never delivered.

2. Table changelog before the source offset. A table write goes to the producer buffer (`send_soon`); a
   commit first calls `producer.flush()`, but the buffer's flush gives up after 0.1 s without a sent
   message and never counts the message its sender task is handing to aiokafka. So a source offset could
   be committed while the changelog record of the state it produced was still unsent; a crash then lost
   that state for good (the record is not redelivered, the recovered table lacks it). Found by reading
   faust while tracing lost completions (not the cause of those: see 3 and 4). The fix tracks every buffered message until it is delivered and
   makes the flush wait for all of them; a failed delivery fails the commit (the records are processed
   again: at-least-once).

3. Never commit past a record that was fetched and not processed. At start and after a rebalance faust
   resumes the flow before it seeks to the committed offsets; a record fetched in that window can be
   dropped from the agent's queue without being acked, and the fetcher goes on after it (traced: offsets
   20-22 processed, 23 fetched and never yielded, 24-40 processed). `_new_offset` then commits past it,
   because it tolerates one missing offset right after the committed one (meant for a transaction marker).
   The lost line never completed its invoice. The fix remembers every offset handed to the agents, and a
   commit stops at the first one not acked. If later offsets of that partition are acked already, the
   record was dropped (one agent per topic, concurrency 1: acks come in offset order): the consumer
   reports it (`dropped_record`), and the supervisor restarts the worker, which re-reads from the
   record. A transaction marker is never fetched, so it is still crossed.

4. The cause of most such drops: when recovery ends, faust resumes the stream partitions, then seeks them
   to the committed offsets (the flow is already running). The fetcher is already running (it read the
   changelogs), so records fetched before the seek reach the agents, or are dropped when the flow
   resumes, and the seek is overtaken by the read offsets they leave behind (traced after every SIGKILL
   restart: records yielded before the seek, the rest of the fetch lost). The fix (in
   `on_recovery_completed`, the path every rebalance with tables takes) seeks first, while the stream
   partitions are still paused, then resumes them. aiokafka's `seek_to_committed` does not seek a partition
   whose committed offset is 0 or absent, so those are sought to the start explicitly: after `cloudbill
   replay matcher --from-beginning` (offsets 0, tables kept, so recovery reads changelogs) the records
   fetched during recovery were otherwise skipped and the worker sat idle with everything unprocessed
   (traced: position 3, read offset 0, nothing delivered; 3 replays in 5).

5. Read committed records only. faust reads `read_committed` only under its `exactly_once` guarantee,
   which we do not use (see app.py). The ingester writes an invoice's lines in one transaction; on Apache
   Kafka a read_uncommitted matcher would enrich the lines of an aborted transaction, and if the invoice
   then changed before the retry, it would publish enrichments of a revision that never existed. The
   embedded broker shows aborted records either way (docs/architecture.md, Brokers); there the ingester's
   identical re-sends make them harmless duplicates.

6. Table recovery reads changelogs to their true end (embedded broker). Recovery ends when it reaches the
   changelog's end offset as the broker's ListOffsets answers it; the embedded broker answers the last
   batch's first offset + 1 (measured: 1 for a 100-record batch), so a batched changelog was recovered up to
   its last batch only, and the state of lines already committed was gone. The fix takes the end read from the
   fetch side (`shared.kafka.admin.high_watermarks`) when the app provides it (`use_fetch_side_end_offsets`,
   on the embedded broker), so the producer batches there too; without it, one-record batches were needed.

Re-checked on Apache Kafka 4.4 (tests/unit/matcher/test_matcher_faust_patches.py and the matcher's
integration tests run on both brokers): transaction markers and aborted transactions leave offset gaps there
too (1), and 2, 3, 4 and 5 do not depend on the broker. 6 is not needed there (ListOffsets is exact) and not
applied.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import faust
from faust.tables.recovery import Recovery
from faust.transport.consumer import Consumer
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread
from faust.transport.producer import ProducerBuffer

T = TypeVar("T")
log = logging.getLogger(__name__)

PATCHED_FOR = "0.15.3"  # the patches replace private faust code: re-check each one before moving the pin
_PATCHED = "_cloudbill_patched"
_DELIVERIES = "_cloudbill_deliveries"
_FETCHED = "_cloudbill_fetched"
_DROPPED = "_cloudbill_dropped"
_END_OFFSETS = "_cloudbill_end_offsets"


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


def use_fetch_side_end_offsets(app: Any, end_offsets: Callable[[str], Mapping[int, int]]) -> None:
    """Table recovery of `app` reads each changelog to `end_offsets(topic)` ({partition: next offset}) at least."""
    app.__dict__[_END_OFFSETS] = end_offsets


def apply(version: str = faust.__version__) -> None:
    if version != PATCHED_FOR:
        raise RuntimeError(
            f"faust-streaming {version} is installed but services/matcher/faust_patches.py was written for "
            f"{PATCHED_FOR}: re-check every patch against the new version (pyproject.toml pins it)"
        )
    if getattr(Consumer, _PATCHED, False):
        return
    original_add_gap = Consumer._add_gap

    async def _add_gap(self: Any, tp: Any, offset_from: int, offset_to: int) -> None:
        await original_add_gap(self, tp, offset_from, offset_to - 1)

    original_put = ProducerBuffer.put
    original_flush = ProducerBuffer.flush

    def put(self: Any, fut: Any) -> None:
        deliveries(self).track(fut)
        original_put(self, fut)

    async def flush(self: Any) -> None:
        await original_flush(self)
        if not self.should_stop:  # stopping: the sender task is gone, unsent messages would never resolve
            await deliveries(self).wait()

    original_init = Consumer.__init__
    original_new_offset = Consumer._new_offset
    original_revoked = Consumer.on_partitions_revoked

    def __init__(self: Any, transport: Any, callback: Any, *args: Any, **kwargs: Any) -> None:
        original_init(self, transport, callback, *args, **kwargs)
        acking = self.app.topics.acks_enabled_for
        tracked = fetched(self)

        async def track_then_deliver(message: Any) -> Any:
            if acking(message.topic):
                tracked.setdefault(message.tp, set()).add(message.offset)
            return await callback(message)

        self.callback = track_then_deliver

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

    async def on_partitions_revoked(self: Any, revoked: Any) -> None:
        tracked = fetched(self)
        for tp in revoked:
            tracked.pop(tp, None)  # a new assignment starts again from the committed offset
        await original_revoked(self, revoked)

    async def on_recovery_completed(self: Any, generation_id: int = 0) -> None:
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
            self.log.warning(
                "Recovery rebalancing again: generation %s, not %s", app.consumer_generation_id, generation_id
            )
            return
        if assignment:
            self.log.info("Seek stream partitions to committed offsets.")
            await self._wait(consumer.perform_seek(), timeout=app.conf.broker_request_timeout)
            # aiokafka's seek_to_committed skips a committed offset of 0 (a group rewound to the start) and a
            # partition with none: seek those to the start, or records fetched during recovery stay skipped.
            read = consumer._read_offset
            start = {tp: 0 for tp in assignment if not self._is_changelog_tp(tp) and not read.get(tp)}
            if start:
                await self._wait(consumer.seek_wait(start), timeout=app.conf.broker_request_timeout)
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

    original_create_worker_consumer = AIOKafkaConsumerThread._create_worker_consumer

    def _create_worker_consumer(self: Any, transport: Any) -> Any:
        """faust picks read_committed when `consumer.in_transaction`: say so just while the client is built."""
        consumer = self.consumer
        in_transaction = consumer.in_transaction
        consumer.in_transaction = True
        try:
            return original_create_worker_consumer(self, transport)
        finally:
            consumer.in_transaction = in_transaction

    AIOKafkaConsumerThread._create_worker_consumer = _create_worker_consumer
    Recovery.on_recovery_completed = on_recovery_completed
    Recovery._build_highwaters = _build_highwaters
    Consumer.__init__ = __init__
    Consumer._new_offset = _new_offset
    Consumer.on_partitions_revoked = on_partitions_revoked
    Consumer._add_gap = _add_gap
    ProducerBuffer.put = put
    ProducerBuffer.flush = flush
    setattr(Consumer, _PATCHED, True)


apply()
