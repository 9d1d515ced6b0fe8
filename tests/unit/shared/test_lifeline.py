"""The lifeline: whatever ends a supervisor (SIGKILL included), the process groups it registered are stopped,
services before infrastructure, each with its signal and then SIGKILL after its grace period."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.helpers import wait_until

CHILD = textwrap.dedent(
    """
    import signal, sys, time
    out, mode = sys.argv[1], sys.argv[2]
    def on_term(*_):
        open(out, "a").write(f"{time.monotonic()}\\n")
        if mode == "graceful":
            sys.exit(0)
    signal.signal(signal.SIGTERM, on_term)
    open(out + ".ready", "w").close()
    while True:
        time.sleep(0.1)
    """
)

SUPERVISOR = textwrap.dedent(
    """
    import signal, subprocess, sys, time
    from shared import lifeline
    child, tmp = sys.argv[1], sys.argv[2]
    def start(name, mode, tier, grace):
        p = subprocess.Popen([sys.executable, "-c", child, f"{tmp}/{name}", mode], start_new_session=True)
        lifeline.watch(p.pid, tier=tier, grace_s=grace)
        return p
    service = start("service", "graceful", lifeline.TIER_SERVICE, 10)
    stubborn = start("stubborn", "ignore", lifeline.TIER_SERVICE, 1)
    infra = start("infra", "graceful", lifeline.TIER_INFRA, 10)
    forgotten = start("forgotten", "graceful", lifeline.TIER_SERVICE, 10)
    lifeline.forget(forgotten.pid)
    print(service.pid, stubborn.pid, infra.pid, forgotten.pid, flush=True)
    time.sleep(600)
    """
)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie waiting for init is gone for our purpose
        return f.read().split()[2] != "Z"


def test_sigkill_of_the_supervisor_stops_what_it_registered_in_tier_order(tmp_path: Path) -> None:
    sup = subprocess.Popen(
        [sys.executable, "-c", SUPERVISOR, CHILD, str(tmp_path)], stdout=subprocess.PIPE, text=True, cwd=tmp_path
    )
    assert sup.stdout is not None
    service, stubborn, infra, forgotten = (int(x) for x in sup.stdout.readline().split())
    try:
        for name in ("service", "stubborn", "infra", "forgotten"):
            wait_until(lambda n=name: (tmp_path / f"{n}.ready").exists(), timeout=30, what=f"{name} started")
        sup.kill()  # no chance to clean up
        sup.wait(10)
        wait_until(lambda: not any(_alive(p) for p in (service, stubborn, infra)), timeout=30, what="all stopped")
        service_at = float((tmp_path / "service").read_text().split()[0])
        infra_at = float((tmp_path / "infra").read_text().split()[0])
        assert service_at <= infra_at  # services first: they still had their broker and database
        assert (tmp_path / "stubborn").exists()  # it was asked, ignored it, and was killed after its grace
        assert _alive(forgotten) and not (tmp_path / "forgotten").exists()  # forgotten: never signalled
    finally:
        for pid in (service, stubborn, infra, forgotten):
            if _alive(pid):
                os.killpg(pid, signal.SIGKILL)


def test_the_watchdog_is_out_of_reach_of_the_supervisors_terminal() -> None:
    """A session of its own: the terminal's Ctrl-C (sent to the foreground process group) or a kill of the
    supervisor's group cannot take it down with the supervisor; one per process, reused."""
    from shared.lifeline import lifeline

    watchdog = lifeline().watchdog
    assert os.getsid(watchdog.pid) == watchdog.pid != os.getsid(0)
    assert os.getpgid(watchdog.pid) != os.getpgid(0)
    assert lifeline().watchdog is watchdog and watchdog.poll() is None


def test_a_reused_pid_is_never_signalled(tmp_path: Path) -> None:
    """A registered group whose leader is gone and whose id now names another process is left alone."""
    from shared.lifeline import start_time, stop_groups

    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    try:
        real = start_time(other.pid)
        assert real is not None
        # As if `other.pid` had been registered for a process that started at another time.
        stop_groups({other.pid: (0, signal.SIGKILL, 1.0, str(int(real) - 1))})
        assert other.poll() is None
        stop_groups({other.pid: (0, signal.SIGTERM, 0.5, real)})  # the same process: stopped (a zombie until waited)
        assert other.wait(10) == -signal.SIGTERM
    finally:
        if other.poll() is None:
            other.kill()
