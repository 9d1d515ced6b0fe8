"""The lines agent's liveness rule (pure): records waiting and no progress for too long."""

from services.matcher.app import ProgressWatch


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_no_stall_while_progressing_or_before_the_timeout() -> None:
    clock = Clock()
    w = ProgressWatch(10, clock)
    clock.now = 9
    assert not w.due() and w.stalled({0: 50}) is None
    w.processed()
    clock.now = 18
    assert w.stalled({0: 50}) is None


def test_stall_when_records_wait_and_nothing_moves() -> None:
    clock = Clock()
    w = ProgressWatch(10, clock)
    w.processed()
    clock.now = 11
    reason = w.stalled({0: 6, 1: 0})
    assert reason and "6 cost-line record(s)" in reason and "[0]" in reason


def test_idle_and_caught_up_never_stalls() -> None:
    clock = Clock()
    w = ProgressWatch(10, clock)
    clock.now = 1000
    assert w.due()
    assert w.stalled({0: 0, 1: 0}) is None
    assert w.stalled({}) is None


def test_disabled_with_zero() -> None:
    clock = Clock()
    w = ProgressWatch(0, clock)
    clock.now = 1e9
    assert not w.due() and w.stalled({0: 100}) is None
