"""A supervisor built on `Stack` stops its children gracefully on SIGTERM, as on Ctrl-C (what the bench and
`dev up` get from `with Stack(...)`)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.helpers import wait_until

SUPERVISOR = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from cloudbill.stack import Child, Stack, StackConfig, Terminated
    work = Path(sys.argv[1])
    child_code = (
        "import signal, sys, time\\n"
        "def bye(*_):\\n"
        f"    open({str(work / 'graceful')!r}, 'w').write('stopped on SIGTERM')\\n"
        "    sys.exit(0)\\n"
        "signal.signal(signal.SIGTERM, bye)\\n"
        f"open({str(work / 'ready')!r}, 'w').close()\\n"
        "while True: time.sleep(0.1)\\n"
    )
    stack = Stack(StackConfig(workdir=work))
    stack.logdir.mkdir(parents=True)
    try:
        with stack:
            child = Child("svc", [sys.executable, "-c", child_code], stack.logdir / "svc.log", env={})
            stack._popen(child)
            stack.children["svc"] = child
            print(child.proc.pid, flush=True)
            while True:
                time.sleep(0.1)
    except Terminated as e:
        print(f"terminated by {e.args[0]}", flush=True)
        sys.exit(143)
    """
)


def test_sigterm_stops_the_children_gracefully_then_the_supervisor(tmp_path: Path) -> None:
    sup = subprocess.Popen([sys.executable, "-c", SUPERVISOR, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    assert sup.stdout is not None
    child = int(sup.stdout.readline())
    try:
        wait_until(lambda: (tmp_path / "ready").exists(), timeout=10, what="child ready")
        sup.send_signal(signal.SIGTERM)
        assert sup.wait(30) == 143
        assert sup.stdout.read().strip() == "terminated by SIGTERM"
        assert (tmp_path / "graceful").read_text() == "stopped on SIGTERM"  # its own handler ran: a clean stop
        wait_until(lambda: not os.path.exists(f"/proc/{child}"), timeout=10, what="child reaped")
    finally:
        if sup.poll() is None:
            sup.kill()
        if os.path.exists(f"/proc/{child}"):
            os.kill(child, signal.SIGKILL)
