"""PartitionWaits, the ownership and pause book-keeping both Kafka loops share (shared/kafka/retry.py)."""

from __future__ import annotations

from confluent_kafka import TopicPartition

from shared.kafka.retry import PartitionWaits, Retryable, decide
from shared.retry import RetryPolicy


class FakeConsumer:
    """Records pause/resume/seek as librdkafka would keep them: a pause survives a revoke and a new assignment."""

    def __init__(self) -> None:
        self.paused: set[tuple[str, int]] = set()
        self.seeks: list[tuple[str, int, int]] = []

    def pause(self, tps: list[TopicPartition]) -> None:
        self.paused |= {(t.topic, t.partition) for t in tps}

    def resume(self, tps: list[TopicPartition]) -> None:
        self.paused -= {(t.topic, t.partition) for t in tps}

    def seek(self, tp: TopicPartition) -> None:
        self.seeks.append((tp.topic, tp.partition, tp.offset))


def tps(*parts: int) -> list[TopicPartition]:
    return [TopicPartition("t", p) for p in parts]


def test_a_waiting_partition_is_paused_on_its_record_and_resumed_when_due() -> None:
    c = FakeConsumer()
    w = PartitionWaits(c)  # type: ignore[arg-type]
    w.assigned(tps(0, 1))
    w.release_due(0)
    w.wait(("t", 0), 7, due=10.0)
    assert c.paused == {("t", 0)} and c.seeks == [("t", 0, 7)] and w.blocked(("t", 0)) and not w.blocked(("t", 1))
    assert w.timeout(now=8.0, longest=5.0) == 2.0
    w.release_due(9.9)
    assert c.paused == {("t", 0)}
    w.release_due(10.0)
    assert c.paused == set() and not w.blocked(("t", 0))


def test_a_revoked_partition_is_never_waited_on_sought_or_resumed_again() -> None:
    c = FakeConsumer()
    w = PartitionWaits(c)  # type: ignore[arg-type]
    w.assigned(tps(0))
    w.revoked(tps(0))
    w.wait(("t", 0), 3, due=1.0)
    assert not w.owns(("t", 0)) and c.seeks == [] and c.paused == set()


def test_a_partition_assigned_again_starts_unpaused_even_if_the_pause_survived() -> None:
    """The session was lost while a record waited: librdkafka kept the pause, the revoke's resume came too late.
    Assigned again, the partition is resumed at the next loop turn (it used to stay paused for ever)."""
    c = FakeConsumer()
    w = PartitionWaits(c)  # type: ignore[arg-type]
    w.assigned(tps(0))
    w.release_due(0)
    w.wait(("t", 0), 1, due=100.0)
    c.resume = lambda _tps: (_ for _ in ()).throw(RuntimeError("not assigned"))  # type: ignore[method-assign]
    w.revoked(tps(0))
    del c.resume  # back to the class's resume
    assert c.paused == {("t", 0)}
    w.assigned(tps(0))
    w.release_due(0)
    assert c.paused == set() and not w.blocked(("t", 0))


def test_decide_waits_in_place_then_parks_then_dead_letters() -> None:
    w = PartitionWaits(FakeConsumer())  # type: ignore[arg-type]
    policy = RetryPolicy(min_s=0.5, max_backoff_s=30, max_attempts=3, max_s=600, park_delay_s=60, max_parks=2)
    e = Retryable("finance 503", delay_s=0)
    d1 = decide(policy, w, ("t", 0), 5, e, parks=0, can_park=True, now=0)
    d2 = decide(policy, w, ("t", 0), 5, e, parks=0, can_park=True, now=1)
    assert (d1.action, d2.action) == ("wait", "wait") and d1.delay_s >= 0.5 and d2.delay_s >= 0.5
    assert decide(policy, w, ("t", 0), 5, e, parks=0, can_park=True, now=2).action == "park"
    assert decide(policy, w, ("r", 0), 9, e, parks=1, can_park=True, now=3).action == "park"
    assert decide(policy, w, ("r", 0), 10, e, parks=2, can_park=True, now=4).action == "dead"
    shared = Retryable("database down", parkable=False)
    assert decide(policy, w, ("t", 1), 1, shared, parks=0, can_park=True, now=0).action == "wait"
    for i in range(10):
        assert decide(policy, w, ("t", 1), 1, shared, parks=0, can_park=True, now=i).action == "wait"
