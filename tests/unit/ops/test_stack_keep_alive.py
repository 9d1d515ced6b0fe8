"""`cloudbill dev up` / demo restart a service that exits (as compose's restart policy would), within a budget."""

from __future__ import annotations

import sys
from pathlib import Path

from cloudbill.stack import RESTART_WINDOW_S, RESTARTS_PER_WINDOW, Child, Stack, StackConfig


def _stack(tmp_path: Path, name: str, code: int) -> tuple[Stack, Child]:
    stack = Stack(StackConfig(workdir=tmp_path))
    stack.logdir.mkdir(parents=True)
    child = Child(name, [sys.executable, "-c", f"import sys; sys.exit({code})"], stack.logdir / f"{name}.log", env={})
    stack._popen(child)
    stack.children[name] = child
    assert child.proc is not None
    child.proc.wait(30)
    return stack, child


def _wait(child: Child) -> None:
    assert child.proc is not None
    child.proc.wait(30)


def test_a_service_that_exits_is_restarted_until_its_budget_is_spent(tmp_path: Path) -> None:
    stack, child = _stack(tmp_path, "matcher", 70)
    for n in range(1, RESTARTS_PER_WINDOW + 1):
        events = stack.keep_alive(now=1000.0 + n)
        assert events == [f"matcher exited (70); restarted ({n}/{RESTARTS_PER_WINDOW} in {RESTART_WINDOW_S:.0f}s)"]
        _wait(child)
    assert stack.keep_alive(now=1000.0 + RESTARTS_PER_WINDOW + 1) == []  # over budget: left down
    assert [c.name for c in stack.dead()] == ["matcher"]
    assert child.log_path.read_text().count("restarting ---") == RESTARTS_PER_WINDOW
    # The window slides: once the old restarts are older than it, the service gets restarted again.
    assert len(stack.keep_alive(now=1000.0 + RESTART_WINDOW_S + 2)) == 1


def test_simulators_and_running_services_are_left_alone(tmp_path: Path) -> None:
    stack, sim = _stack(tmp_path, "sim-do", 1)
    assert stack.keep_alive() == []
    assert stack.dead() == [sim]
    live = Child("api", [sys.executable, "-c", "import time; time.sleep(30)"], stack.logdir / "api.log", env={})
    stack._popen(live)
    stack.children["api"] = live
    try:
        assert stack.keep_alive() == []
    finally:
        assert live.proc is not None
        live.proc.kill()
        live.proc.wait(10)
