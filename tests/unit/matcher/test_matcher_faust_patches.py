"""faust's offset bookkeeping across transaction markers, with the patch applied."""

import asyncio
from collections import defaultdict
from types import SimpleNamespace
from typing import Any, ClassVar

import pytest
from faust.transport.consumer import Consumer
from faust.transport.producer import ProducerBuffer
from faust.types import TP
from intervaltree import IntervalTree

from services.matcher import faust_patches


def _consumer_state() -> SimpleNamespace:
    return SimpleNamespace(
        _committed_offset=defaultdict(lambda: None),
        _gap=defaultdict(IntervalTree),
        _acked=defaultdict(list),
        _acked_index=defaultdict(set),
    )


def _read(state: SimpleNamespace, tp: str, offsets: list[int]) -> None:
    """What faust's fetch loop does: a gap before each record that does not follow the last one, then an ack."""
    last = None
    for off in offsets:
        if last is not None and off - last > 1:
            asyncio.run(Consumer._add_gap(state, tp, last + 1, off))
        state._acked[tp].append(off)
        state._acked_index[tp].add(off)
        last = off


def test_one_commit_crosses_every_transaction_marker() -> None:
    faust_patches.apply()
    state = _consumer_state()
    # Three invoices of 3 lines + marker each, a transaction control record after each: offsets 4, 9, 14.
    offsets = [0, 1, 2, 3, 5, 6, 7, 8, 10, 11, 12, 13]
    _read(state, "tp", offsets)
    assert Consumer._new_offset(state, "tp") == 14  # everything read, in one commit


def test_patch_is_idempotent() -> None:
    faust_patches.apply()
    patched = Consumer._add_gap
    faust_patches.apply()
    assert Consumer._add_gap is patched


class _SlowSender(ProducerBuffer):
    """A producer buffer whose messages are 'delivered' after a delay longer than faust's 0.1 s flush wait."""

    delay = 0.3
    fail: frozenset[int] = frozenset()
    deliveries: ClassVar[set[asyncio.Task]] = set()

    async def _send_pending(self, fut: Any) -> None:
        async def deliver() -> None:
            await asyncio.sleep(self.delay)
            if fut.message in self.fail:
                fut.set_exception(OSError("broker gone"))
            else:
                fut.set_result(fut.message)

        task = asyncio.ensure_future(deliver())
        self.deliveries.add(task)
        task.add_done_callback(self.deliveries.discard)


def _buffer() -> _SlowSender:
    buf = _SlowSender()
    buf.app = SimpleNamespace(conf=SimpleNamespace(producer_threaded=False))  # type: ignore[assignment]
    return buf


def _future(n: int) -> Any:
    fut = asyncio.get_running_loop().create_future()
    fut.message = n
    return fut


def test_flush_waits_until_every_buffered_message_is_delivered() -> None:
    faust_patches.apply()

    async def scenario() -> list[bool]:
        buf = _buffer()
        await buf.start()
        try:
            futs = [_future(n) for n in range(5)]
            for f in futs:
                buf.put(f)
            await buf.flush()  # the commit's flush: nothing it returns before may be undelivered
            return [f.done() and not f.exception() for f in futs]
        finally:
            await buf.stop()

    assert asyncio.run(scenario()) == [True] * 5


def test_flush_fails_when_a_buffered_message_was_not_delivered() -> None:
    faust_patches.apply()

    async def scenario() -> tuple[str, None]:
        buf = _buffer()
        buf.fail = frozenset({1})
        await buf.start()
        try:
            for n in range(3):
                buf.put(_future(n))
            try:
                await buf.flush()
            except faust_patches.ChangelogNotDelivered as e:
                error = str(e)
            else:
                error = ""
            buf.put(_future(3))
            return error, await buf.flush()  # reported once: the next flush is clean
        finally:
            await buf.stop()

    error, second = asyncio.run(scenario())
    assert "1 buffered message(s) not delivered" in error and "broker gone" in error
    assert second is None


def test_flush_does_not_wait_while_stopping() -> None:
    faust_patches.apply()

    async def scenario() -> bool:
        buf = _buffer()
        buf.delay = 3600  # never delivered
        await buf.start()
        buf.put(_future(0))
        await asyncio.sleep(0.05)  # handed to the 'client'
        buf._stopped.set()  # what Service.stop sets before on_stop flushes
        await asyncio.wait_for(buf.flush(), timeout=2)
        return True

    assert asyncio.run(scenario())


def _fetch_and_ack(state: SimpleNamespace, tp: Any, fetched: list[int], acked: list[int], committed: int) -> None:
    state._committed_offset[tp] = committed
    faust_patches.fetched(state).setdefault(tp, set()).update(fetched)
    for off in acked:
        state._acked[tp].append(off)
        state._acked_index[tp].add(off)


def test_a_record_fetched_and_skipped_holds_the_commit_and_is_reported() -> None:
    faust_patches.apply()
    state, tp = _consumer_state(), TP("billing.cost-lines.v1", 0)
    # Traced on the embedded broker: 20-22 processed, 23 fetched and dropped, 24-40 processed.
    _fetch_and_ack(state, tp, list(range(20, 41)), [20, 21, 22, *range(24, 41)], committed=20)
    assert Consumer._new_offset(state, tp) == 23  # unpatched faust: 23, then 41 on the next commit
    reason = faust_patches.dropped_record(state)
    assert reason is not None and "billing.cost-lines.v1[0] offset 23" in reason and "17 later" in reason
    state._committed_offset[tp] = 23
    assert Consumer._new_offset(state, tp) is None  # held at 23 until the record is re-read


def test_a_transaction_marker_right_after_the_committed_offset_is_still_crossed() -> None:
    faust_patches.apply()
    state, tp = _consumer_state(), TP("billing.cost-lines.v1", 0)
    _fetch_and_ack(state, tp, [24, 25, 26], [24, 25, 26], committed=23)  # offset 23: a marker, never fetched
    assert Consumer._new_offset(state, tp) == 27
    assert faust_patches.dropped_record(state) is None


def test_a_record_still_in_flight_is_not_a_drop() -> None:
    faust_patches.apply()
    state, tp = _consumer_state(), TP("billing.cost-lines.v1", 0)
    _fetch_and_ack(state, tp, [5, 6, 7], [5, 6], committed=5)  # 7 is being processed
    assert Consumer._new_offset(state, tp) == 7
    assert faust_patches.dropped_record(state) is None
    assert faust_patches.fetched(state)[tp] >= {7}


def test_another_faust_version_is_refused_until_the_patches_are_rechecked() -> None:
    with pytest.raises(RuntimeError, match=r"written for 0\.15\.3: re-check every patch"):
        faust_patches.apply("0.16.0")


def test_the_matcher_consumer_reads_committed_records_only() -> None:
    from services.matcher.app import InventoryGate, MatcherOptions, create_app
    from shared.settings import Settings

    async def build() -> tuple[str, bool]:
        s = Settings(_env_file=None, kafka_bootstrap_servers="127.0.0.1:1", kafka_topic_prefix="t.")
        app = create_app(s, MatcherOptions(_env_file=None), InventoryGate({}, 0))
        client = app.consumer._thread._create_worker_consumer(app.transport)
        try:
            return client._isolation_level, app.consumer.in_transaction
        finally:
            await client.stop()

    assert asyncio.run(build()) == ("read_committed", False)  # and faust's transaction manager stays off


def test_table_recovery_reads_changelog_ends_from_the_fetch_side_when_given() -> None:
    """Fix 6: the embedded broker answers ListOffsets with the last batch's first offset + 1."""
    from collections import Counter

    from faust.tables.recovery import Recovery

    faust_patches.apply()
    tps = {TP("t-line-facts-changelog", 0), TP("t-line-facts-changelog", 1), TP("t-inventory-changelog", 0)}

    class _Consumer:
        async def highwaters(self, *tps: TP) -> dict[TP, int]:
            return {tp: 1 for tp in tps}  # what the embedded broker says after one 100-record batch

    class _Log:
        def info(self, *args: Any) -> None:
            pass

    asked: list[str] = []

    def end_offsets(topic: str) -> dict[int, int]:
        asked.append(topic)
        return {0: 100, 1: 0} if topic == "t-line-facts-changelog" else {0: 7}

    app = SimpleNamespace()
    recovery = SimpleNamespace(app=app, log=_Log(), _highwater_logtable=lambda *a, **k: "")
    destination: Counter = Counter()
    asyncio.run(Recovery._build_highwaters(recovery, _Consumer(), tps, destination, "active"))
    assert destination == {tp: 0 for tp in tps}, "without the fetch side: faust's answer (end - 1)"
    faust_patches.use_fetch_side_end_offsets(app, end_offsets)
    asyncio.run(Recovery._build_highwaters(recovery, _Consumer(), tps, destination, "active"))
    assert destination == {
        TP("t-line-facts-changelog", 0): 99,
        TP("t-line-facts-changelog", 1): 0,  # never below the broker's answer
        TP("t-inventory-changelog", 0): 6,
    }
    assert sorted(asked) == ["t-inventory-changelog", "t-line-facts-changelog"]


def test_no_table_reads_its_own_changelog_back_after_recovery() -> None:
    """recovery_buffer_size=1 makes faust 0.15.3 resume a table's own changelog partitions after recovery and
    apply the worker's writes back over newer values (the lost-lines defect): every table keeps the default."""
    from services.matcher.app import InventoryGate, MatcherOptions, create_app
    from shared.settings import Settings

    s = Settings(_env_file=None, kafka_bootstrap_servers="127.0.0.1:1", kafka_topic_prefix="t.")
    app = create_app(s, MatcherOptions(_env_file=None), InventoryGate({}, 0))
    tables = {t.name: t.recovery_buffer_size for t in app.tables.values()}
    assert set(tables) == {"inventory", "line-facts", "revisions-completed", "revisions-waiting"}
    assert all(size > 1 for size in tables.values()), tables
