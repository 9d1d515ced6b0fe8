"""`<workdir>/dev.env`: the running dev stack's connection settings, for every `cloudbill` command beside it.

`dev up` and `demo` write the effective settings (broker, database URL with its password, simulator URLs,
secrets) to `.cloudbill/dev.env` (mode 0600) and hold an exclusive lock on it while they run. Any other
`cloudbill` command started in the same working directory finds the file, sees the lock held (so the stack
is running: a file left by a killed stack has no holder) and reads it after `.env`; variables set in the
environment still win. `CLOUDBILL_DEV_ENV` names another file, or `off`.

A lock rather than a pid in the file: the kernel releases it when the holder dies, however it dies, and a
pid can be reused by an unrelated process.
"""

from __future__ import annotations

import fcntl
import os
from dataclasses import dataclass
from pathlib import Path

from dotenv import dotenv_values

from shared.settings import ConfigError

VARIABLE = "CLOUDBILL_DEV_ENV"
DEFAULT = Path(".cloudbill") / "dev.env"
PID_KEY = "CLOUDBILL_DEV_PID"


def location(env: dict[str, str] | None = None) -> Path | None:
    """Where commands look for a running stack's file (None: `CLOUDBILL_DEV_ENV=off`)."""
    value = (os.environ if env is None else env).get(VARIABLE, "").strip()
    if value.lower() in ("off", "0", "false", "no"):
        return None
    return Path(value) if value else DEFAULT


@dataclass(frozen=True)
class RunningStack:
    path: Path
    pid: int | None
    values: dict[str, str]

    def overridden(self, env: dict[str, str] | None = None) -> list[str]:
        """Variables of the file that the environment sets to something else (the environment wins)."""
        env = dict(os.environ if env is None else env)
        return sorted(k for k, v in self.values.items() if k in env and env[k] != v and k != PID_KEY)

    def notice(self) -> str:
        """The one line a command prints when it uses the file."""
        text = f"using the running dev stack's settings from {self.path}"
        if self.pid:
            text += f" (dev stack pid {self.pid})"
        if over := self.overridden():
            text += f"; from the environment instead: {', '.join(over)}"
        return text


def running(path: Path | None) -> RunningStack | None:
    """The stack's settings when `path` exists and its writer still holds it; else None."""
    if path is None:
        return None
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            values = {k: v for k, v in dotenv_values(path).items() if v is not None}
            pid = values.get(PID_KEY, "")
            return RunningStack(path, int(pid) if pid.isdigit() else None, values)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None  # nobody holds it: a file left behind by a stack that was killed
    finally:
        os.close(fd)


def _quote(value: str) -> str:
    """Single quotes: literal for python-dotenv and for a shell's `set -a; . dev.env`."""
    if "'" in value or "\n" in value:
        raise ValueError("dev.env values cannot contain quotes or newlines")
    return f"'{value}'"


class DevEnvFile:
    """The supervisor's side: the file written (0600) and locked for as long as the stack runs."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        # No O_TRUNC before the lock: a stack already running keeps its file intact when we are refused.
        self._fd: int | None = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            self._fd = None
            other = running(path)
            pid = f" (pid {other.pid})" if other and other.pid else ""
            raise ConfigError(
                f"a dev stack is already running with {path}{pid}: stop it, or use another --workdir"
            ) from None
        os.fchmod(self._fd, 0o600)  # also when the file existed with looser permissions

    def write(self, values: dict[str, str]) -> None:
        assert self._fd is not None
        lines = [
            "# Written by `cloudbill dev up` / `cloudbill demo` for the other cloudbill commands of this directory",
            "# while it runs (secrets included: keep it private). Shell: set -a; . ./.cloudbill/dev.env; set +a",
            f"{PID_KEY}={_quote(str(os.getpid()))}",
            *(f"{k}={_quote(v)}" for k, v in sorted(values.items())),
        ]
        data = ("\n".join(lines) + "\n").encode()
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, data, 0)

    def close(self) -> None:
        """The stack stopped: remove the file (its secrets are stale) and release the lock."""
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        finally:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> DevEnvFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
