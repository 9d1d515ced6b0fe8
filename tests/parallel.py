"""`make test`'s pytest: the end-to-end folder and the rest as two pytest processes side by side.

Why: the e2e tests spend most of their time waiting on a pipeline of OS processes (convergence after kills, a
broker restart, the finance outage), the unit and integration tests mostly on their own CPU; run one after the
other they take over 25 minutes on 2 cores, side by side under 20. Each process has its own session fixtures
(broker, PostgreSQL) and its own `--basetemp`: two pytest runs of one user sharing the default temp root delete
each other's directories (pytest keeps the last three), which kills a running test's embedded PostgreSQL.

The unit/integration run prints as it goes; the e2e run's output follows when it ends. The exit status is the
first non-zero of the two. Temp directories are removed when both pass, kept (and named) when one fails.
Arguments are passed to both pytest processes.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
E2E = "tests/e2e"
REST = ["tests/unit", "tests/integration"]


def main(argv: list[str]) -> int:
    tmp = Path(tempfile.mkdtemp(prefix="cloudbill-tests-"))
    e2e_log = tmp / "e2e.log"
    started = time.monotonic()
    pytest = [sys.executable, "-m", "pytest"]
    with e2e_log.open("wb") as log:
        e2e = subprocess.Popen(
            [*pytest, E2E, f"--basetemp={tmp / 'e2e'}", "-p", "no:cacheprovider", *argv],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        try:
            rest_rc = subprocess.call([*pytest, *REST, f"--basetemp={tmp / 'rest'}", *argv], cwd=ROOT)
            print(f"\n---- {E2E} (started alongside, still running: {e2e.poll() is None}) ----", flush=True)
            e2e_rc = e2e.wait()
        except BaseException:
            e2e.terminate()
            e2e.wait(60)
            raise
    sys.stdout.write(e2e_log.read_text(errors="replace"))
    rc = rest_rc or e2e_rc
    print(
        f"\n==== unit+integration: exit {rest_rc}; e2e: exit {e2e_rc}; both in {time.monotonic() - started:.0f} s ====",
        flush=True,
    )
    if rc == 0:
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        print(f"temp directories and the e2e log kept in {tmp}", flush=True)
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
