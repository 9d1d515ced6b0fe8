"""Processes that end with the process that started them, whatever ends it: a return, an exception, SIGTERM,
or a SIGKILL that leaves no chance to clean up.

`watch(pid)` hands a child's process group to this process's *lifeline*: a small watchdog process, started on
first use, that reads registrations from a pipe whose write end only this process holds. However this
process ends, the kernel closes that end; the watchdog reads end-of-file and stops every group still
registered, tier by tier (services first, then brokers and databases): each group gets its stop signal
(SIGTERM: the graceful stop Ctrl-C would give), then SIGKILL once its grace period is over.

Why not PR_SET_PDEATHSIG: it is Linux-only (the demo runs on laptops), it fires when the *thread* that
started the child exits, and it does not reach processes that leave their parent on purpose: `pg_ctl
start` runs the PostgreSQL server in a session of its own, re-parented away from us, and the server's
own children in sessions of theirs (they exit when the server does). A watchdog that stops whole process
groups covers all of these on Linux and macOS alike.

Children must be started in their own session (`start_new_session=True`): their pid is then their process
group, a terminal's Ctrl-C reaches only the supervisor (which stops them in order), and the watchdog stops
a child together with anything it started in its group.

Pids get reused, so the watchdog never signals a group that is no longer the one registered: with the
group's leader gone the id stays reserved as long as any member lives (the kernel does not hand out a pid
still used as a process group id), and a leader that exists must have the start time recorded at
registration (Linux `/proc`; elsewhere the check falls back to the group being alive).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time

TIER_SERVICE = 0  # services and simulators: stopped first
TIER_INFRA = 1  # brokers and databases: stopped once the services are gone


class Lifeline:
    """This process's watchdog (see the module docstring). One per process: use `lifeline()`."""

    def __init__(self) -> None:
        self.owner = os.getpid()
        self._lock = threading.Lock()
        self.watchdog = subprocess.Popen(
            [sys.executable, "-m", "shared.lifeline", str(self.owner)],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # a Ctrl-C or a kill of our process group leaves it to do its job
            close_fds=True,
            text=True,
        )

    def _send(self, line: str) -> None:
        stdin = self.watchdog.stdin
        if stdin is None or self.watchdog.poll() is not None:
            return
        with self._lock, contextlib.suppress(BrokenPipeError, ValueError):
            stdin.write(line + "\n")
            stdin.flush()

    def watch(self, pgid: int, *, tier: int = TIER_SERVICE, sig: int = signal.SIGTERM, grace_s: float = 20.0) -> None:
        """Stop process group `pgid` (with `sig`, then SIGKILL after `grace_s`) when this process ends."""
        self._send(f"watch {pgid} {tier} {int(sig)} {grace_s:g} {start_time(pgid) or '-'}")

    def forget(self, pgid: int) -> None:
        """`pgid` was stopped by its owner: never signal that id (it may be reused)."""
        self._send(f"forget {pgid}")


_instance: Lifeline | None = None
_instance_lock = threading.Lock()


def lifeline() -> Lifeline:
    """This process's lifeline, started on first use (and again in a forked child, which needs its own)."""
    global _instance
    with _instance_lock:
        if _instance is None or _instance.owner != os.getpid() or _instance.watchdog.poll() is not None:
            _instance = Lifeline()
        return _instance


def watch(pgid: int, *, tier: int = TIER_SERVICE, sig: int = signal.SIGTERM, grace_s: float = 20.0) -> None:
    lifeline().watch(pgid, tier=tier, sig=sig, grace_s=grace_s)


def forget(pgid: int) -> None:
    if _instance is not None and _instance.owner == os.getpid():
        _instance.forget(pgid)


# ----------------------------------------------------------------------------------------------- watchdog
def start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), or None (gone, or no /proc)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[19]
    except (OSError, IndexError):
        return None


def _ours(pgid: int, started: str) -> bool:
    """Is `pgid` still the group that was registered (see the module docstring on pid reuse)?"""
    now = start_time(pgid)
    if now is None or started == "-":
        return _group_alive(pgid)
    return now == started


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _signal(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def stop_groups(groups: dict[int, tuple[int, int, float, str]], poll_s: float = 0.1) -> None:
    """Stop `{pgid: (tier, signal, grace_s, leader start time)}`, lowest tier first: signal, wait up to the
    grace, SIGKILL. A group whose id now names another process is left alone."""
    for tier in sorted({g[0] for g in groups.values()}):
        members = {pgid: (sig, grace, st) for pgid, (t, sig, grace, st) in groups.items() if t == tier}
        members = {pgid: m for pgid, m in members.items() if _ours(pgid, m[2])}
        for pgid, (sig, _, _) in members.items():
            _signal(pgid, sig)
        began = time.monotonic()
        pending = dict(members)
        while pending:
            elapsed = time.monotonic() - began
            for pgid, (_, grace, st) in list(pending.items()):
                if not _group_alive(pgid) or not _ours(pgid, st):
                    del pending[pgid]
                elif elapsed >= grace:
                    _signal(pgid, signal.SIGKILL)
                    del pending[pgid]
            if pending:
                time.sleep(poll_s)


def _watchdog_main() -> None:
    """Read registrations until end-of-file (the supervisor is gone), then stop what is left."""
    for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGPIPE):
        signal.signal(sig, signal.SIG_IGN)
    groups: dict[int, tuple[int, int, float, str]] = {}
    for line in sys.stdin:
        parts = line.split()
        if len(parts) == 6 and parts[0] == "watch":
            groups[int(parts[1])] = (int(parts[2]), int(parts[3]), float(parts[4]), parts[5])
        elif len(parts) == 2 and parts[0] == "forget":
            groups.pop(int(parts[1]), None)
    stop_groups(groups)


if __name__ == "__main__":
    _watchdog_main()
