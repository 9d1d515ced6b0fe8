"""shared.kafka.watchdog: a librdkafka call blocked past its own timeout ends the process (for a restart)."""

from __future__ import annotations

import threading
import time

from shared.kafka.watchdog import deadline


def test_a_call_still_blocked_after_its_deadline_triggers_the_expiry() -> None:
    fired = threading.Event()
    seen: list[tuple[str, float]] = []

    def on_expiry(what: str, seconds: float) -> None:
        seen.append((what, seconds))
        fired.set()

    with deadline("send_offsets_to_transaction", 0.05, grace_s=0.05, on_expiry=on_expiry):
        assert fired.wait(2.0), "a blocked call must not go unnoticed"
    assert seen == [("send_offsets_to_transaction", 0.1)]


def test_a_call_that_returns_in_time_never_triggers_it() -> None:
    fired = threading.Event()
    for _ in range(50):
        with deadline("commit_transaction", 0.05, grace_s=0.05, on_expiry=lambda *_: fired.set()):
            pass
    time.sleep(0.2)
    assert not fired.is_set()


def test_an_exception_inside_cancels_it() -> None:
    fired = threading.Event()
    try:
        with deadline("abort_transaction", 0.05, grace_s=0.05, on_expiry=lambda *_: fired.set()):
            raise RuntimeError("broker gone")
    except RuntimeError:
        pass
    time.sleep(0.2)
    assert not fired.is_set()
