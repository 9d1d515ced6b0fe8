"""The inventory gate (pure): lines wait until the inventory backlog as of start is read, and give up only on
an inventory that stopped making progress, never on a slow worker start."""

import logging

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.matcher.app import InventoryGate


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_no_backlog_at_start_is_open_at_once() -> None:
    gate = InventoryGate({}, 30, Clock())
    assert gate.open and gate.check([0, 1, 2])


def test_opens_once_every_assigned_partition_reached_its_end() -> None:
    clock = Clock()
    gate = InventoryGate({0: 3, 2: 1}, 30, clock)
    assert not gate.check([0, 1, 2])
    gate.seen(0, 0)
    gate.seen(0, 1)
    gate.seen(2, 0)
    assert not gate.check([0, 1, 2]), "partition 0 is read up to offset 2 of 3"
    gate.seen(0, 2)
    assert gate.check([0, 1, 2])
    assert gate.open


def test_a_partition_assigned_elsewhere_is_not_waited_for() -> None:
    gate = InventoryGate({0: 5, 1: 4}, 30, Clock())
    gate.seen(1, 3)
    assert gate.check([1])


def test_a_trailing_transaction_marker_is_tolerated_only_once_idle() -> None:
    clock = Clock()
    gate = InventoryGate({0: 4}, 30, clock)  # records at 0 and 2, markers at 1 and 3: end 4
    gate.seen(0, 2)
    assert not gate.check([0]), "just read: the next record may still come"
    clock.now += 0.6
    assert gate.check([0])


def test_a_slow_worker_start_does_not_use_up_the_budget() -> None:
    """The budget runs from the first wait: faust's start and recovery took longer than the timeout here."""
    clock = Clock()
    gate = InventoryGate({0: 2}, 30, clock)
    clock.now += 120  # constructed, then faust started, rebalanced and recovered its tables
    assert not gate.check([0])
    clock.now += 29
    assert not gate.check([0])
    gate.seen(0, 1)
    assert gate.check([0])


def test_an_inventory_still_being_read_keeps_the_gate_closed_past_the_timeout() -> None:
    clock = Clock()
    gate = InventoryGate({0: 100_000}, 30, clock)
    assert not gate.check([0])
    for offset in range(0, 9_000, 1_000):  # a record every 20 s: 180 s in all, progress all along
        clock.now += 20
        gate.seen(0, offset)
        assert not gate.check([0])
    assert not gate.open


def test_no_progress_for_the_timeout_opens_with_a_warning_naming_the_partition(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    gate = InventoryGate({0: 10, 1: 7}, 30, clock)
    assert not gate.check([0, 1])
    gate.seen(0, 9)
    clock.now += 30
    assert not gate.check([0, 1]), "exactly the timeout: still waiting"
    clock.now += 1
    with caplog.at_level(logging.WARNING, logger="services.matcher.app"):
        assert gate.check([0, 1])
    [warning] = [r.getMessage() for r in caplog.records]
    assert "no progress for 30s" in warning and "[1] 0/7" in warning and "[0]" not in warning


def test_a_zero_timeout_still_waits_while_records_arrive() -> None:
    clock = Clock()
    gate = InventoryGate({0: 3}, 0, clock)
    assert not gate.check([0]), "the first look is not a timeout"
    clock.now += 0.01
    assert gate.check([0]), "nothing read since: open"


@given(
    ends=st.dictionaries(st.integers(0, 5), st.integers(1, 50), max_size=6),
    reads=st.lists(st.tuples(st.integers(0, 5), st.integers(0, 60)), max_size=80),
)
def test_open_exactly_when_every_target_is_read_to_its_end(ends: dict[int, int], reads: list[tuple[int, int]]) -> None:
    """Without a timeout or marker tolerance in play: open iff each assigned partition with a target is read
    to the target (a record at target-1 seen), whatever the order and duplicates of the reads."""
    clock = Clock()
    gate = InventoryGate(ends, 10**9, clock)
    assigned = range(6)
    for p, offset in reads:
        gate.seen(p, offset)
    read_to = {p: max([o + 1 for q, o in reads if q == p], default=0) for p in ends}
    assert gate.check(assigned) == all(read_to[p] >= end for p, end in ends.items())
