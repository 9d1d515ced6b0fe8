"""Faults the DigitalOcean simulator injects on demand, and its request log.

Counters (`rate_limit`, `rate_limit_reset_only`, `server_errors`, `truncate_csv`) are consumed one per matching
request; `slow_ms` applies to every matching request until cleared. `paths` restricts all of them to request
paths starting with that prefix. Everything here is touched from the server's event loop and from tests in
other threads, hence the lock.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class DoFaults(BaseModel):
    """What to inject. Posted as JSON to `/_sim/faults` or given as CLI flags."""

    model_config = ConfigDict(extra="forbid")

    rate_limit: int = Field(0, ge=0, description="The next N matching requests answer 429 with retry-after.")
    retry_after: int = Field(1, ge=0, description="Seconds in retry-after (and until ratelimit-reset) of a 429.")
    rate_limit_reset_only: int = Field(
        0, ge=0, description="The next N matching requests answer 429 with ratelimit-reset but no retry-after."
    )
    server_errors: int = Field(0, ge=0, description="The next N matching requests answer a 5xx.")
    server_error_status: int = Field(500, ge=500, le=599, description="Status of injected server errors.")
    slow_ms: int = Field(0, ge=0, description="Delay every matching answer by this many milliseconds.")
    truncate_csv: int = Field(0, ge=0, description="The next N CSV downloads are cut in the middle.")
    truncate_mode: Literal["body", "rows", "connection"] = Field(
        "body",
        description="body: a complete HTTP answer whose CSV stops mid-line; "
        "rows: a complete HTTP answer whose CSV stops after the last whole row before the middle (it still parses); "
        "connection: content-length announces the whole file and the connection closes early.",
    )
    paths: str = Field("/v2/", description="Only requests whose path starts with this prefix are affected.")


@dataclass(frozen=True)
class Decision:
    """What the simulator does with one request."""

    delay_s: float = 0.0
    status: int | None = None  # 429 / 5xx instead of the real answer
    retry_after: int | None = None
    reset_in_s: int = 0


class FaultState:
    def __init__(self, initial: DoFaults | None = None) -> None:
        self._lock = threading.Lock()
        self._faults = initial or DoFaults()

    def get(self) -> DoFaults:
        with self._lock:
            return self._faults.model_copy()

    def update(self, changes: dict[str, Any]) -> DoFaults:
        """Merge the given fields into the current faults (validated)."""
        with self._lock:
            merged = self._faults.model_dump() | changes
            self._faults = DoFaults.model_validate(merged)
            return self._faults.model_copy()

    def clear(self) -> DoFaults:
        with self._lock:
            self._faults = DoFaults()
            return self._faults.model_copy()

    def decide(self, path: str) -> Decision:
        with self._lock:
            f = self._faults
            if not path.startswith(f.paths):
                return Decision()
            delay = f.slow_ms / 1000
            if f.rate_limit > 0:
                f.rate_limit -= 1
                return Decision(delay, 429, f.retry_after, f.retry_after)
            if f.rate_limit_reset_only > 0:
                f.rate_limit_reset_only -= 1
                return Decision(delay, 429, None, f.retry_after)
            if f.server_errors > 0:
                f.server_errors -= 1
                return Decision(delay, f.server_error_status)
            return Decision(delay)

    def take_truncation(self, path: str) -> str | None:
        """Consume one CSV truncation if one is pending for this path; returns the mode."""
        with self._lock:
            f = self._faults
            if f.truncate_csv > 0 and path.startswith(f.paths):
                f.truncate_csv -= 1
                return f.truncate_mode
            return None


class RequestLog:
    """Recent requests (method, path, query, status, time): never headers, so never a token."""

    def __init__(self, maxlen: int = 20_000) -> None:
        self._lock = threading.Lock()
        self._entries: deque[dict[str, Any]] = deque(maxlen=maxlen)

    def add(self, method: str, path: str, query: str, status: int, started: float, duration_s: float) -> None:
        entry = {
            "method": method,
            "path": path,
            "query": query,
            "status": status,
            "time": round(started, 6),
            "duration_ms": round(duration_s * 1000, 3),
        }
        with self._lock:
            self._entries.append(entry)

    def entries(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


class RateWindow:
    """DigitalOcean's per-token sliding hour window, for the ratelimit-* headers."""

    def __init__(self, limit: int = 5000, window_s: float = 3600.0) -> None:
        self.limit = limit
        self.window_s = window_s
        self._lock = threading.Lock()
        self._seen: dict[int, deque[float]] = {}

    def hit(self, token: str, now: float | None = None) -> tuple[int, int]:
        """Count one request; returns (remaining, reset epoch seconds)."""
        now = time.time() if now is None else now
        with self._lock:
            q = self._seen.setdefault(hash(token), deque())
            q.append(now)
            while q and q[0] <= now - self.window_s:
                q.popleft()
            return max(0, self.limit - len(q)), int(q[0] + self.window_s)
