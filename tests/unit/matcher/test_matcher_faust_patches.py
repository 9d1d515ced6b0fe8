"""faust's offset bookkeeping across transaction markers, with the patch applied."""

import ast
import asyncio
import hashlib
import inspect
import subprocess
import sys
import textwrap
import time
from collections import defaultdict
from types import SimpleNamespace
from typing import Any, ClassVar

import faust
import pytest
from faust.transport.consumer import Consumer
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread
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
    faust_patches.apply_all()
    state = _consumer_state()
    # Three invoices of 3 lines + marker each, a transaction control record after each: offsets 4, 9, 14.
    offsets = [0, 1, 2, 3, 5, 6, 7, 8, 10, 11, 12, 13]
    _read(state, "tp", offsets)
    assert Consumer._new_offset(state, "tp") == 14  # everything read, in one commit


def test_patch_is_idempotent() -> None:
    faust_patches.apply_all()
    patched = Consumer._add_gap
    faust_patches.apply_all()
    assert Consumer._add_gap is patched
    replaced = {(owner, name): owner.__dict__[name] for owner, name in faust_patches.REPLACED}
    faust_patches.fix_commit_stops_at_unprocessed_record()  # one fix again, on its own
    faust_patches.apply_all()
    assert {(owner, name): owner.__dict__[name] for owner, name in faust_patches.REPLACED} == replaced
    assert faust_patches.applied()


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
    faust_patches.apply_all()

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
    faust_patches.apply_all()

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


def test_flush_waits_for_records_produced_outside_faust_even_while_stopping() -> None:
    """The matcher's outputs (librdkafka, services/matcher/outputs.py) gate the commit like table writes; their
    futures resolve on their own thread, so the flush waits for them also while faust stops."""
    faust_patches.apply_all()

    async def scenario() -> tuple[float, str]:
        buf = _buffer()
        app = SimpleNamespace(producer=SimpleNamespace(buffer=buf))
        await buf.start()
        loop = asyncio.get_running_loop()
        ok, bad = loop.create_future(), loop.create_future()
        faust_patches.track_delivery(app, ok)
        faust_patches.track_delivery(app, bad)
        loop.call_later(0.2, ok.set_result, None)
        loop.call_later(0.3, bad.set_exception, OSError("not delivered"))
        buf._stopped.set()  # stopping: faust's own sends are not waited for, these are
        started = time.monotonic()
        try:
            await asyncio.wait_for(buf.flush(), timeout=5)
        except faust_patches.ChangelogNotDelivered as e:
            return time.monotonic() - started, str(e)
        return time.monotonic() - started, ""

    waited, error = asyncio.run(scenario())
    assert waited >= 0.25 and "1 buffered message(s) not delivered" in error and "not delivered" in error


def test_flush_does_not_wait_while_stopping() -> None:
    faust_patches.apply_all()

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
    faust_patches.apply_all()
    state, tp = _consumer_state(), TP("billing.cost-lines.v1", 0)
    # Traced on the embedded broker: 20-22 processed, 23 fetched and dropped, 24-40 processed.
    _fetch_and_ack(state, tp, list(range(20, 41)), [20, 21, 22, *range(24, 41)], committed=20)
    assert Consumer._new_offset(state, tp) == 23  # unpatched faust: 23, then 41 on the next commit
    reason = faust_patches.dropped_record(state)
    assert reason is not None and "billing.cost-lines.v1[0] offset 23" in reason and "17 later" in reason
    state._committed_offset[tp] = 23
    assert Consumer._new_offset(state, tp) is None  # held at 23 until the record is re-read


def test_a_transaction_marker_right_after_the_committed_offset_is_still_crossed() -> None:
    faust_patches.apply_all()
    state, tp = _consumer_state(), TP("billing.cost-lines.v1", 0)
    _fetch_and_ack(state, tp, [24, 25, 26], [24, 25, 26], committed=23)  # offset 23: a marker, never fetched
    assert Consumer._new_offset(state, tp) == 27
    assert faust_patches.dropped_record(state) is None


def test_a_record_still_in_flight_is_not_a_drop() -> None:
    faust_patches.apply_all()
    state, tp = _consumer_state(), TP("billing.cost-lines.v1", 0)
    _fetch_and_ack(state, tp, [5, 6, 7], [5, 6], committed=5)  # 7 is being processed
    assert Consumer._new_offset(state, tp) == 7
    assert faust_patches.dropped_record(state) is None
    assert faust_patches.fetched(state)[tp] >= {7}


def test_another_faust_version_is_refused_until_the_patches_are_rechecked() -> None:
    with pytest.raises(RuntimeError, match=r"written for 0\.15\.3: re-check every patch"):
        faust_patches.apply_all("0.16.0")


def test_the_matcher_consumer_reads_committed_records_only() -> None:
    from services.matcher.app import InventoryGate, MatcherOptions, create_app
    from shared.settings import Settings

    faust_patches.apply_all()

    async def build() -> tuple[str, bool]:
        s = Settings(_env_file=None, kafka_bootstrap_servers="127.0.0.1:1", kafka_topic_prefix="t.")
        app = create_app(s, MatcherOptions(_env_file=None), InventoryGate({}, 0))
        client = app.consumer._thread._create_worker_consumer(app.transport)
        try:
            return client._isolation_level, app.consumer.in_transaction
        finally:
            await client.stop()

    assert asyncio.run(build()) == ("read_committed", False)  # and faust's transaction manager stays off


def test_the_matcher_consumer_waits_for_a_fetch_what_its_options_say() -> None:
    """Fix 9: not faust's fixed 1.5 s, which held the busy partitions behind an idle one's long poll."""
    from services.matcher.app import InventoryGate, MatcherOptions, create_app
    from shared.settings import Settings

    faust_patches.apply_all()

    async def build(**options: int) -> int:
        s = Settings(_env_file=None, kafka_bootstrap_servers="127.0.0.1:1", kafka_topic_prefix="t.")
        app = create_app(s, MatcherOptions(_env_file=None, **options), InventoryGate({}, 0))
        client = app.consumer._thread._create_consumer(asyncio.get_running_loop())
        try:
            wait: int = client._fetch_max_wait_ms
            return wait
        finally:
            await client.stop()

    assert asyncio.run(build()) == 50
    assert asyncio.run(build(fetch_max_wait_ms=250)) == 250


def test_table_recovery_reads_changelog_ends_from_the_fetch_side_when_given() -> None:
    """Fix 6: the embedded broker answers ListOffsets with the last batch's first offset + 1."""
    from collections import Counter

    from faust.tables.recovery import Recovery

    faust_patches.apply_all()
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

    faust_patches.apply_all()
    s = Settings(_env_file=None, kafka_bootstrap_servers="127.0.0.1:1", kafka_topic_prefix="t.")
    app = create_app(s, MatcherOptions(_env_file=None), InventoryGate({}, 0))
    tables = {t.name: t.recovery_buffer_size for t in app.tables.values()}
    assert set(tables) == {"inventory", "line-fact-chunks", "revisions-completed", "revisions-waiting"}
    assert all(size > 1 for size in tables.values()), tables


# -- Shape of faust's internals: what each fix was written against (faust-streaming 0.15.3) -----------------
#
# A failure here means faust changed under a fix: re-read the fix against the new code (faust_patches.py
# names the reason for each), then update the expectation. The fingerprint is of the code (its AST without
# the docstring), so comments and formatting do not count.

_CONSUMER_INIT = [
    "self",
    "transport",
    "callback",
    "on_partitions_revoked",
    "on_partitions_assigned",
    "commit_interval",
    "commit_livelock_soft_timeout",
    "loop",
    "kwargs",
]
_REPLACED_SHAPES: dict[tuple[str, str], tuple[list[str], str]] = {
    ("Consumer", "_add_gap"): (["self", "tp", "offset_from", "offset_to"], "3ef34d9891835018"),
    ("ProducerBuffer", "put"): (["self", "fut"], "cedb6faf15fe8fc4"),
    ("ProducerBuffer", "flush"): (["self"], "e31ccb11bdb11a48"),
    ("Consumer", "__init__"): (_CONSUMER_INIT, "7928eab35569173f"),
    ("Consumer", "_new_offset"): (["self", "tp"], "3ffdfa3b0925c3bf"),
    ("Consumer", "on_partitions_revoked"): (["self", "revoked"], "35674308776b5fb9"),
    ("Consumer", "_wait_next_records"): (["self", "timeout"], "f92c67ab6a54b794"),
    ("Recovery", "on_recovery_completed"): (["self", "generation_id"], "0c47cb10849cc7a7"),
    ("AIOKafkaConsumerThread", "_create_worker_consumer"): (["self", "transport"], "89f40d75d68d7c98"),
    ("Recovery", "_build_highwaters"): (["self", "consumer", "tps", "destination", "title"], "166fc77ffec10349"),
    ("ThreadDelegateConsumer", "_getmany"): (["self", "active_partitions", "timeout"], "d71940c36e02d5ae"),
    ("App", "_on_rebalance_when_stopped"): (["self"], "d4b6829c0a95c433"),
    ("AIOKafkaConsumerThread", "_create_consumer"): (["self", "loop"], "cd58564f09106554"),
}


def _fingerprint(fn: Any) -> str:
    """Of a function's code: its AST without the docstring (comments and layout do not count)."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(fn)))
    func = tree.body[0]
    assert isinstance(func, ast.FunctionDef | ast.AsyncFunctionDef)
    body = func.body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        func.body = body[1:]
    return hashlib.sha256(ast.dump(func).encode()).hexdigest()[:16]


def _params(fn: Any) -> list[str]:
    return list(inspect.signature(fn).parameters)


def test_every_replaced_faust_member_has_the_shape_its_fix_was_written_against() -> None:
    faust_patches.apply_all()
    seen = {(owner.__name__, name) for owner, name in faust_patches.REPLACED}
    assert seen == set(_REPLACED_SHAPES), "a fix replaces a member this test does not pin (or no longer does)"
    for owner, name in faust_patches.REPLACED:
        theirs = faust_patches.original(owner, name)
        ours = owner.__dict__[name]
        assert theirs is not ours and inspect.getmodule(theirs).__name__.startswith("faust."), (owner, name)
        params, fingerprint = _REPLACED_SHAPES[(owner.__name__, name)]
        assert _params(theirs) == params, f"{owner.__name__}.{name}: faust changed its signature"
        assert inspect.iscoroutinefunction(theirs) == inspect.iscoroutinefunction(ours), (owner, name)
        assert _fingerprint(theirs) == fingerprint, f"{owner.__name__}.{name}: faust changed its code: re-check the fix"


def test_faust_code_the_fixes_rely_on_is_still_there() -> None:
    """The lines of faust each wrapper's reasoning depends on (see the fix's docstring)."""
    faust_patches.apply_all()
    src = {(o.__name__, n): inspect.getsource(faust_patches.original(o, n)) for o, n in faust_patches.REPLACED}
    # 1: the interval stored is inclusive of `offset_to` (the record that closes the gap).
    assert "gap_for_tp.addi(offset_from, offset_to + 1)" in src[("Consumer", "_add_gap")]
    # 3: the callback the fix wraps is read from the consumer once, when the fetch loop starts.
    assert "callback = self.callback" in inspect.getsource(Consumer._drain_messages)
    assert "self.callback = callback" in src[("Consumer", "__init__")]
    # 3: what the client returned, before getmany filters it (generation change, flow stop, queue pressure).
    waited = src[("Consumer", "_wait_next_records")]
    assert "return records, active_partitions" in waited
    getmany = inspect.getsource(Consumer.getmany)
    assert "records, active_partitions = await self._wait_next_records(timeout)" in getmany
    assert "tp in active_partitions" in getmany and "if not self.flow_active:" in getmany
    # 4: faust resumes the stream partitions before it seeks (the order the fix reverses).
    recovered = src[("Recovery", "on_recovery_completed")]
    assert recovered.index("consumer.resume_partitions(") < recovered.index("consumer.perform_seek()")
    # 5: the isolation level follows `consumer.in_transaction`, read while the client is built.
    created = src[("AIOKafkaConsumerThread", "_create_worker_consumer")]
    assert "if self.consumer.in_transaction:" in created and 'isolation_level = "read_committed"' in created
    # 6: faust keeps the highwater minus one, and replaces `destination` wholesale before the fix raises it.
    built = src[("Recovery", "_build_highwaters")]
    assert "value - 1" in built and "destination.clear()" in built
    # 7: the fetch is handed faust's live set of active partitions (which pausing empties in place), and
    # aiokafka treats an empty partition list as every assigned partition.
    assert "active_partitions = self._get_active_partitions()" in waited
    assert "return tps" in inspect.getsource(Consumer._get_active_partitions)
    assert "self._active_partitions.clear()" in inspect.getsource(Consumer._set_active_tps)
    assert "self._thread.getmany(active_partitions, timeout)" in src[("ThreadDelegateConsumer", "_getmany")]
    from aiokafka.consumer.fetcher import Fetcher

    assert "if partitions and tp not in partitions:" in inspect.getsource(Fetcher.fetched_records)
    # 8: a stopping app's rebalance callback closes the consumer, whose close runs aiokafka's client and
    # coordinator close on the app's (main) loop; the consumer thread's shutdown stops the consumer on its own.
    assert "self.consumer.close()" in src[("App", "_on_rebalance_when_stopped")]
    closing = inspect.getsource(AIOKafkaConsumerThread.close)
    assert "self._consumer._client.close(), self.app.loop" in closing
    assert "await self._consumer.stop()" in inspect.getsource(AIOKafkaConsumerThread.on_thread_stop)
    # 9: faust's worker consumer waits 1.5 s; aiokafka reads the wait from the consumer when it builds its
    # fetcher (at start), and sends no fetch to a broker that has one in flight.
    assert "fetch_max_wait_ms=1500" in created
    from aiokafka.consumer.consumer import AIOKafkaConsumer

    assert "fetch_max_wait_ms=self._fetch_max_wait_ms" in inspect.getsource(AIOKafkaConsumer.start)
    assert "elif node_id in self._in_flight:" in inspect.getsource(Fetcher._get_actions_per_node)


def test_a_stopping_apps_rebalance_callback_closes_nothing() -> None:
    """Fix 8: faust closed the Kafka client from the wrong loop there (the stop then hung in the group join)."""
    faust_patches.apply_all()

    class NeverClosed:
        def close(self) -> None:
            raise AssertionError("the consumer was closed from a rebalance callback")

    faust.App._on_rebalance_when_stopped(SimpleNamespace(consumer=NeverClosed()))  # type: ignore[arg-type]


def test_faust_members_the_fixes_call_keep_their_signatures() -> None:
    from faust.tables.recovery import Recovery
    from faust.transport.drivers.aiokafka import Consumer as AIOKafkaConsumer

    expected: dict[tuple[type, str], list[str]] = {
        (Recovery, "_wait"): ["self", "coro", "timeout"],
        (Recovery, "_is_changelog_tp"): ["self", "tp"],
        (Recovery, "_set_recovery_ended"): ["self"],
        (AIOKafkaConsumer, "perform_seek"): ["self"],
        (AIOKafkaConsumer, "seek_wait"): ["self", "partitions"],
        (AIOKafkaConsumer, "resume_partitions"): ["self", "tps"],
        (AIOKafkaConsumer, "resume_flow"): ["self"],
        (AIOKafkaConsumer, "assignment"): ["self"],
        (Consumer, "_drain_messages"): ["self", "fetcher"],
    }
    for (owner, name), params in expected.items():
        assert _params(getattr(owner, name)) == params, f"{owner.__name__}.{name}: faust changed its signature"


def test_the_agent_error_hook_has_the_shape_the_crash_recording_app_overrides() -> None:
    import faust

    hook = faust.App.__dict__["_on_agent_error"]
    assert _params(hook) == ["self", "agent", "exc"] and inspect.iscoroutinefunction(hook)
    assert "on_error=self._on_agent_error" in inspect.getsource(faust.App.agent)  # every agent reports there
    assert _params(faust_patches.AgentCrashRecordingApp._on_agent_error) == _params(hook)

    async def crash() -> BaseException | None:
        app = faust_patches.AgentCrashRecordingApp("t-crash", broker="kafka://127.0.0.1:1")
        await app._on_agent_error(SimpleNamespace(name="lines"), RuntimeError("first"))
        await app._on_agent_error(SimpleNamespace(name="lines"), RuntimeError("second"))
        return app.agent_crash

    assert repr(asyncio.run(crash())) == "RuntimeError('first')"


def test_private_members_the_fixes_read_exist_on_a_real_matcher_app() -> None:
    """Instance state faust sets up in its constructors: read on the app create_app builds (no broker needed)."""
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    from services.matcher.app import InventoryGate, MatcherOptions, create_app
    from shared.settings import Settings

    faust_patches.apply_all()

    async def inspect_app() -> None:
        s = Settings(_env_file=None, kafka_bootstrap_servers="127.0.0.1:1", kafka_topic_prefix="t.")
        app = create_app(s, MatcherOptions(_env_file=None), InventoryGate({}, 0))
        assert app._consumer is None  # faust creates the consumer on first use of the public property
        assert faust_patches.record_dropped_by(app) is None and app._consumer is None
        consumer = app.consumer
        assert app._consumer is consumer
        for name in ("_committed_offset", "_acked", "_acked_index", "_read_offset", "_gap"):
            assert isinstance(getattr(consumer, name), defaultdict), name
        assert callable(consumer.callback) and consumer.in_transaction is False
        assert callable(app.topics.acks_enabled_for)
        assert isinstance(consumer._thread, AIOKafkaConsumerThread) and consumer._thread.consumer is consumer
        assert isinstance(app.producer.buffer, ProducerBuffer) and app.producer.buffer.should_stop is False
        assert callable(app._fetcher.maybe_start)
        recovery = app.tables.recovery
        assert isinstance(recovery.actives_for_table, dict) and isinstance(recovery.standbys_for_table, dict)
        assert callable(recovery.completed.set) and callable(recovery._set_recovery_ended)
        assert recovery.tables is app.tables and recovery.app is app
        assert callable(app.tables.on_actives_ready) and callable(app.tables.on_standbys_ready)
        assert isinstance(app.consumer_generation_id, int)
        assert callable(app.flow_control.resume) and callable(app.assignor.assigned_standbys)
        assert callable(app.on_rebalance_end) and callable(app.on_rebalance_complete.send)
        # flow_state's reads
        assert isinstance(consumer._paused_partitions, set) and isinstance(consumer._buffered_partitions, set)
        assert consumer._active_partitions is None or isinstance(consumer._active_partitions, set)
        assert isinstance(consumer.flow_active, bool) and isinstance(app.topics._topic_name_index, defaultdict)
        assert callable(app.flow_control.is_active)
        # consumer_thread_tasks' read: the consumer thread's own loop
        assert isinstance(consumer._thread.thread_loop, asyncio.AbstractEventLoop)
        assert consumer._thread.thread_loop is not asyncio.get_running_loop()
        assert faust_patches.consumer_thread_tasks(app) == []  # the thread is not started

    asyncio.run(inspect_app())


def test_a_record_the_client_returned_and_faust_never_yielded_holds_the_commit() -> None:
    """Seen on the batched matcher branch: a partition's records returned by the client and filtered out by faust's
    getmany; the next yielded record looked like the end of a gap and the commit crossed 5 whole invoices."""
    faust_patches.apply_all()
    tp, changelog = TP("billing.cost-lines.v1", 2), TP("m-line-facts-changelog", 2)
    state = _consumer_state()
    state.app = SimpleNamespace(topics=SimpleNamespace(acks_enabled_for=lambda topic: topic == tp.topic))

    async def client(_self: Any, _timeout: float) -> Any:
        rec = [SimpleNamespace(offset=o) for o in range(604, 609)]
        return {tp: rec, changelog: [SimpleNamespace(offset=1)]}, {tp}

    wait = faust_patches._track_records_the_client_returned(client)
    records, active = asyncio.run(wait(state, 1.0))
    assert active == {tp} and [r.offset for r in records[tp]] == [604, 605, 606, 607, 608]
    assert faust_patches.fetched(state) == {tp: {604, 605, 606, 607, 608}}  # changelogs are not acked: not held
    # faust yielded none of them; the next fetch's record, 2114, is acked after a "gap" 604-2113.
    state._committed_offset[tp] = 604
    asyncio.run(Consumer._add_gap(state, tp, 604, 2114))
    state._acked[tp].append(2114)
    state._acked_index[tp].add(2114)
    assert Consumer._new_offset(state, tp) is None  # not 2115: nothing past 604 is committed
    reason = faust_patches.dropped_record(state)
    assert reason is not None and "offset 604 was fetched but never processed" in reason


def test_record_dropped_by_reads_the_apps_consumer() -> None:
    faust_patches.apply_all()
    state, tp = _consumer_state(), TP("billing.cost-lines.v1", 0)
    app = SimpleNamespace(_consumer=None)
    assert faust_patches.record_dropped_by(app) is None  # type: ignore[arg-type]
    _fetch_and_ack(state, tp, [3, 4, 5], [3, 5], committed=3)
    Consumer._new_offset(state, tp)
    app._consumer = state
    reason = faust_patches.record_dropped_by(app)  # type: ignore[arg-type]
    assert reason is not None and "offset 4 was fetched but never processed" in reason


def test_flow_state_names_a_partition_faust_stopped_fetching_and_its_queue_under_pressure() -> None:
    """The stall report: a partition taken out of the fetched set by queue pressure is visible as such."""
    from mode.utils.queues import FlowControlEvent, FlowControlQueue

    faust_patches.apply_all()

    async def report() -> list[str]:
        t0, t1 = TP("billing.cost-lines.v1", 0), TP("billing.cost-lines.v1", 1)
        consumer = _consumer_state()
        consumer.assignment = lambda: {t0, t1}
        consumer._active_partitions, consumer._paused_partitions, consumer._buffered_partitions = {t1}, set(), {t0}
        consumer._read_offset = defaultdict(lambda: None, {t0: 724, t1: 10})
        consumer._committed_offset.update({t0: 700, t1: 10})
        consumer.flow_active = True
        _fetch_and_ack(consumer, t0, list(range(700, 724)), [], committed=700)
        queue: FlowControlQueue[int] = FlowControlQueue(maxsize=10, flow_control=FlowControlEvent())
        for i in range(9):
            queue.put_nowait_enhanced(i, on_pressure_high=lambda: None, on_pressure_drop=lambda: None)
        topics = SimpleNamespace(_topic_name_index=defaultdict(list, {t0.topic: [SimpleNamespace(queue=queue)]}))
        app = SimpleNamespace(_consumer=consumer, topics=topics, flow_control=FlowControlEvent())
        return faust_patches.flow_state(app)  # type: ignore[arg-type]

    lines = asyncio.run(report())
    assert lines[0] == "billing.cost-lines.v1[0] not-fetched buffered read=724 committed=700 unacked-floor=700"
    assert lines[1] == "billing.cost-lines.v1[1] active read=10 committed=10 unacked-floor=None"
    assert lines[2] == "channel billing.cost-lines.v1: queued=9/10 pressure-drop-callbacks=1"
    assert lines[3] == "consumer flow active=True, app flow control active=False"
    assert faust_patches.flow_state(SimpleNamespace(_consumer=None)) == ["no consumer"]  # type: ignore[arg-type]
    broken = SimpleNamespace(_consumer=SimpleNamespace(assignment=lambda: 1 / 0), topics=None)
    assert faust_patches.flow_state(broken)[0].startswith("? (ZeroDivisionError")  # type: ignore[arg-type]


def test_importing_the_matcher_patches_nothing_and_a_worker_refuses_to_run_unpatched() -> None:
    """In a fresh interpreter: the fixes are applied by apply_all() only (services/matcher/main.py calls it)."""
    code = textwrap.dedent(
        """
        from services.matcher import app, faust_patches, main, runtime
        from faust.transport.consumer import Consumer
        assert not faust_patches.applied()
        assert faust_patches.original(Consumer, "_add_gap") is Consumer.__dict__["_add_gap"]
        try:
            runtime.run_worker(runtime.SupervisedApp("t-unpatched"), runtime.StopSignal())
        except RuntimeError as e:
            assert "apply_all" in str(e), e
        else:
            raise AssertionError("run_worker ran without the faust fixes")
        faust_patches.apply_all()
        assert faust_patches.applied()
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_a_waiting_fetch_never_reads_an_emptied_active_set_as_every_partition() -> None:
    """Recovery pauses the changelogs while a fetch waits in the consumer thread: the emptied set must select
    nothing (aiokafka reads an empty partition list as every partition, paused stream partitions included),
    and membership must stay live (a partition taken out while the fetch waits is left out at once)."""
    faust_patches.apply_all()
    from aiokafka.consumer.fetcher import Fetcher
    from faust.transport.consumer import ThreadDelegateConsumer

    changelog, stream, other = TP("m-line-facts-changelog", 0), TP("billing.cost-lines.v1", 0), TP("x", 1)
    live = {changelog, other}
    seen: list[Any] = []

    class Thread:
        async def getmany(self, partitions: Any, timeout: float) -> dict[Any, list[Any]]:
            seen.append(partitions)
            if partitions is None:
                return {}
            assert changelog in partitions and stream not in partitions
            live.discard(other)  # queue pressure takes a partition out while the fetch waits
            assert other not in partitions, "membership follows faust's set"
            live.clear()  # recovery pauses the changelogs while the fetch waits
            # aiokafka's own test, as `fetched_records` makes it for every buffered partition:
            assert bool(partitions) and changelog not in partitions and stream not in partitions
            return {}

    consumer = SimpleNamespace(_thread=Thread())
    getmany = ThreadDelegateConsumer._getmany
    assert asyncio.run(getmany(consumer, live, 1.0)) == {}  # type: ignore[arg-type]
    assert len(seen) == 1 and list(seen[0]) == [] and len(seen[0]) == 0
    assert asyncio.run(getmany(consumer, set(), 1.0)) == {}, "an empty set never reaches the client"  # type: ignore[arg-type]
    assert len(seen) == 1
    asyncio.run(getmany(consumer, None, 1.0))  # type: ignore[arg-type]
    assert seen[-1] is None, "a client-only app still asks for everything"
    assert "if partitions and tp not in partitions:" in inspect.getsource(Fetcher.fetched_records)


def test_table_writes_go_to_the_changelog_partition_of_the_given_event() -> None:
    """A batch may hold several partitions: the app names an event per partition group (app._by_partition)."""
    import contextvars

    import faust.streams
    from faust.tables.base import Collection

    class Event:
        def __init__(self, partition: int) -> None:
            self.message = SimpleNamespace(topic="t", partition=partition)

    assert isinstance(faust.streams._current_event, contextvars.ContextVar)
    source = inspect.getsource(Collection.partition_for_key)
    assert "event = current_event()" in source and "return event.message.partition" in source
    event = Event(2)
    assert faust.streams.current_event() is None
    with faust_patches.table_writes_to_partition_of(event):
        assert faust.streams.current_event() is event
        with faust_patches.table_writes_to_partition_of(Event(0)):
            assert faust.streams.current_event().message.partition == 0
        assert faust.streams.current_event() is event
    assert faust.streams.current_event() is None
