"""Supervision of a faust worker: crashes end the run, stops are bounded. Generic (no matching logic here).

faust-streaming 0.15.3 marks an agent that raised as crashed while the worker keeps running, and on a
stop it then waits forever for that agent's in-flight message. So we do not use faust's CLI or its
signal handling: the worker runs on its own event loop, a watchdog ends it when (a) the caller's
StopSignal is set (SIGTERM/SIGINT in a process), (b) an agent raised, (c) the worker stopped or
crashed by itself, (d) faust dropped a fetched record (faust_patches), or (e) the liveness probe saw a
stall (logged with faust's view of its partitions and where each task waits), and faust's stop is given
`stop_timeout_s` before the loop is torn down regardless.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import faust

from services.matcher import faust_patches  # faust's internals are touched there only
from shared.kafka import StopSignal

log = logging.getLogger(__name__)


class WorkerCrashed(RuntimeError):
    """An agent raised or the worker crashed: the process must end with a non-zero exit code."""


class WorkerStopTimeout(RuntimeError):
    """faust did not stop within the kill timeout; the loop was torn down anyway."""


class WorkerStalled(RuntimeError):
    """The liveness probe saw work waiting and no progress: the worker must be restarted."""


class RecordDropped(RuntimeError):
    """faust skipped a fetched record: a restart re-reads it from the offset commits were held at."""


class _Liveness:
    """Calls a blocking liveness check at most every `every_s`, in a thread, never two at once."""

    def __init__(self, check: Callable[[], str | None], every_s: float) -> None:
        self._check = check
        self.every_s = every_s
        self._next = time.monotonic() + every_s

    async def check(self, loop: asyncio.AbstractEventLoop) -> str | None:
        if time.monotonic() < self._next:
            return None
        try:
            return await loop.run_in_executor(None, self._check)
        except Exception as e:
            log.warning("liveness probe failed: %s: %s", type(e).__name__, e)
            return None
        finally:
            self._next = time.monotonic() + self.every_s


class SupervisedApp(faust_patches.AgentCrashRecordingApp):
    """The faust App `run_worker` supervises: the first exception an agent raised (`agent_crash`) ends the run.

    `on_worker_stopped`: what the agents use outside faust (the output producer), closed once faust stopped.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.on_worker_stopped: list[Callable[[], None]] = []


class _Worker(faust.Worker):
    """faust's Worker without its own signal handlers (the StopSignal is the only way to stop) or spinner."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.spinner = None

    def install_signal_handlers(self) -> None:
        return None


@dataclass
class Outcome:
    crashed: BaseException | None = None
    stop_timed_out: bool = False


def run_worker(
    app: SupervisedApp,
    stop: StopSignal,
    *,
    stop_timeout_s: float = 15.0,
    poll_s: float = 0.2,
    liveness: Callable[[], str | None] | None = None,
    liveness_every_s: float = 5.0,
) -> None:
    """Run `app` until `stop` is set; raise WorkerCrashed / WorkerStopTimeout when it did not end cleanly.

    `liveness`, when given, is called every `liveness_every_s` off the event loop; a reason it returns
    ends the worker as a crash (WorkerStalled), so the process exits non-zero and is restarted. The faust
    fixes must have been applied (`faust_patches.apply_all()`): unpatched, faust can commit past lost records.
    """
    if not faust_patches.applied():
        raise RuntimeError("faust_patches.apply_all() must run before a worker (at-least-once depends on it)")
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    outcome = Outcome()
    probe = _Liveness(liveness, liveness_every_s) if liveness else None
    try:
        loop.run_until_complete(_supervise(app, loop, stop, outcome, stop_timeout_s, poll_s, probe))
    finally:
        for close in app.on_worker_stopped:
            try:
                close()
            except Exception:
                log.exception("closing %r after the worker stopped", close)
        _teardown(loop)
    if outcome.crashed is not None:
        raise WorkerCrashed(f"{type(outcome.crashed).__name__}: {outcome.crashed}") from outcome.crashed
    if outcome.stop_timed_out:
        raise WorkerStopTimeout(f"faust did not stop within {stop_timeout_s}s")


async def _supervise(
    app: SupervisedApp,
    loop: asyncio.AbstractEventLoop,
    stop: StopSignal,
    outcome: Outcome,
    stop_timeout_s: float,
    poll_s: float,
    probe: _Liveness | None = None,
) -> None:
    worker = _Worker(app, loop=loop, quiet=True, override_logging=False, redirect_stdouts=False, daemon=True)
    started = asyncio.ensure_future(worker.start())
    while True:
        if stop.is_set():
            log.info("stop requested")
            break
        if app.agent_crash is not None:
            outcome.crashed = app.agent_crash
            break
        crashed = worker.crash_reason or app.crash_reason
        if crashed is not None:
            outcome.crashed = crashed
            log.error("faust worker crashed: %s: %s", type(crashed).__name__, crashed)
            break
        if reason := faust_patches.record_dropped_by(app):
            outcome.crashed = RecordDropped(reason)
            log.error("faust dropped a record: %s", reason)
            break
        if probe is not None and (reason := await probe.check(loop)):
            outcome.crashed = WorkerStalled(reason)
            log.error("faust worker stalled: %s", reason)
            _log_stall_state(app, "stall")
            break
        if started.done():
            exc = None if started.cancelled() else started.exception()
            outcome.crashed = exc or RuntimeError("the faust worker stopped by itself")
            log.error("faust worker ended unexpectedly: %s", outcome.crashed)
            break
        await asyncio.sleep(poll_s)
    # Not asyncio.wait_for: on timeout it cancels the stop and then waits for that cancellation, which a
    # stuck faust stop never completes. asyncio.wait just stops waiting.
    stopping = asyncio.ensure_future(worker.stop())
    done, _ = await asyncio.wait({stopping}, timeout=stop_timeout_s)
    if not done:
        outcome.stop_timed_out = True
        log.error("faust did not stop within %.1fs: tearing the event loop down", stop_timeout_s)
        _log_stall_state(app, "stop")
    elif not stopping.cancelled() and stopping.exception() is not None:
        log.warning("error while stopping faust: %r", stopping.exception())
    if not started.done():
        started.cancel()
        await asyncio.wait({started}, timeout=1.0)


def _log_stall_state(app: SupervisedApp, what: str) -> None:
    """Before a stalled worker ends, or when its stop times out (`what`: the lines' prefix): faust's view of
    its partitions, where each task is waiting (on the main loop and on faust's consumer thread, whose
    shutdown a stop waits for), and every thread's stack.

    Both are rare and gone after the restart; this is what is left to explain them. Never raises: the
    worker must end whatever the report finds.
    """
    try:
        for line in faust_patches.flow_state(app):
            log.error("%s: %s", what, line)
        for name, agent in sorted(app.agents.items()):
            for tb in agent.actor_tracebacks():
                log.error("%s: agent %s waits in %s", what, name, _innermost(tb))
        for task in asyncio.all_tasks():
            log.error("%s: task %s waits in %s", what, task.get_name(), _await_chain(task.get_coro()))
        for task in faust_patches.consumer_thread_tasks(app):
            log.error("%s: consumer thread task %s waits in %s", what, task.get_name(), _await_chain(task.get_coro()))
        frames = sys._current_frames()
        for thread in threading.enumerate():
            if (frame := frames.get(thread.ident or -1)) is not None:
                log.error("%s: thread %s is in %s", what, thread.name, _stack(frame))
    except Exception as e:
        log.error("%s: state not readable: %s: %s", what, type(e).__name__, e)


def _innermost(formatted: str) -> str:
    """mode's formatted coroutine stack (`File "f", line n, in name` lines) → `outer > ... > inner (f:n)`."""
    frames = re.findall(r'File "([^"]+)", line (\d+), in (\S+)', formatted)
    if not frames:
        return formatted.strip() or "?"
    file, line, _ = frames[-1]
    return f"{' > '.join(name for _, _, name in frames)} ({file}:{line})"


def _stack(frame: Any, depth: int = 8) -> str:
    """`outer > ... > innermost file:line` of a thread's current stack, its `depth` innermost frames."""
    summary = traceback.extract_stack(frame)[-depth:]
    names = " > ".join(f.name for f in summary)
    return f"{names} ({summary[-1].filename}:{summary[-1].lineno})" if summary else "?"


def _await_chain(coro: Any) -> str:
    """`outer > ... > innermost file:line`: what a suspended coroutine awaits, down to where it is parked."""
    names, where = [], "?"
    while coro is not None and (frame := getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)):
        names.append(frame.f_code.co_name)
        where = f"{frame.f_code.co_filename}:{frame.f_lineno}"
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
    return f"{' > '.join(names) or '?'} ({where})"


def _teardown(loop: asyncio.AbstractEventLoop) -> None:
    """Cancel whatever faust left running and close the loop (bounded: cancelled tasks get 2 s)."""
    try:
        pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
        for t in pending:
            t.cancel()
        if pending:
            with contextlib.suppress(BaseException):
                loop.run_until_complete(asyncio.wait(pending, timeout=2.0))
        with contextlib.suppress(BaseException):
            gens = loop.create_task(loop.shutdown_asyncgens())
            loop.run_until_complete(asyncio.wait({gens}, timeout=2.0))
    finally:
        loop.close()
        asyncio.set_event_loop(None)
