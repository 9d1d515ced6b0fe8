"""Retrying remote calls and records, in one place: which failures are transient, and how long to wait.

Why one module: a server's `Retry-After: 0` (or a date in the past) used to be taken literally, so a
consumer retried a record as fast as it could (264k attempts/s measured). Every wait in cloudbill (the
DigitalOcean client, the finance pusher's record retries, the Kafka loops) now comes from `wait_s`:
the larger of the server's hint and an exponential backoff with jitter, never below a floor, never above
a cap.

Classes of HTTP answers (the same for DigitalOcean and finance):
- transient: 408, 409, 425, 429 and every 5xx (and timeouts, connection errors, a body that does not
  decode): try again later;
- authentication: 401 and 403: no point retrying soon (a token or a role must change);
- permanent: every other 4xx (400, 404, 422, ...): the request itself is wrong, retrying cannot help.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

TRANSIENT_STATUSES = frozenset({408, 409, 425, 429})
HttpClass = Literal["ok", "transient", "auth", "permanent"]

MIN_WAIT_S = 0.5  # no retry sooner than this, whatever a server says


def http_class(status: int) -> HttpClass:
    """What an HTTP status means for a retry (see the module docstring)."""
    if status < 400:
        return "ok"
    if status in TRANSIENT_STATUSES or status >= 500:
        return "transient"
    if status in (401, 403):
        return "auth"
    return "permanent"


def backoff_s(
    attempt: int,
    *,
    base: float = 0.5,
    cap: float = 30.0,
    floor: float = MIN_WAIT_S,
    rng: Callable[[], float] = random.random,
) -> float:
    """Exponential backoff with equal jitter for the `attempt`-th retry (1-based): half fixed, half random.

    The ceiling doubles per attempt from `base` up to `cap`; the wait is in [ceiling/2, ceiling], then
    floored and capped."""
    ceiling = min(cap, base * (2 ** max(0, attempt - 1)))
    return clamp(ceiling / 2 + rng() * ceiling / 2, floor=floor, cap=cap)


def wait_s(
    attempt: int,
    hint_s: float | None = None,
    *,
    base: float = 0.5,
    cap: float = 30.0,
    floor: float = MIN_WAIT_S,
    rng: Callable[[], float] = random.random,
) -> float:
    """The wait before retry number `attempt`: a server's hint (Retry-After, a rate-limit reset) is a lower
    bound, never a licence to retry at once; the backoff keeps growing with the attempts; floor and cap."""
    wait = backoff_s(attempt, base=base, cap=cap, floor=floor, rng=rng)
    if hint_s is not None and hint_s == hint_s:  # not NaN
        wait = max(wait, hint_s)
    return clamp(wait, floor=floor, cap=cap)


def clamp(seconds: float, *, floor: float = MIN_WAIT_S, cap: float = 30.0) -> float:
    return max(min(floor, cap), min(cap, seconds))


@dataclass(frozen=True)
class RetryPolicy:
    """How a Kafka stage retries a record that fails transiently (settings `RETRY_*`).

    In place first: the record's partition is paused (the others flow) and the record retried with backoff,
    up to `max_attempts` attempts or `max_s` seconds since its first failure. Then it is parked in the
    stage's retry topic and retried from there after `park_delay_s` (doubling per park up to
    `park_max_delay_s`); after `max_parks` parks it is dead-lettered with its last reason."""

    min_s: float = MIN_WAIT_S
    max_backoff_s: float = 30.0
    max_attempts: int = 10
    max_s: float = 600.0
    park_delay_s: float = 60.0
    park_max_delay_s: float = 3600.0
    max_parks: int = 24

    def wait(self, attempt: int, hint_s: float | None = None) -> float:
        return wait_s(attempt, hint_s, cap=self.max_backoff_s, floor=self.min_s)

    def exhausted(self, attempts: int, elapsed_s: float) -> bool:
        """The in-place budget is spent: park the record."""
        return attempts >= self.max_attempts or elapsed_s >= self.max_s

    def park_delay(self, parks: int) -> float:
        """Delay before the `parks`-th retry from the retry topic (1-based)."""
        factor: int = 2 ** max(0, parks - 1)  # typeshed types int ** int as Any (a negative power is a float)
        return min(self.park_max_delay_s, self.park_delay_s * factor)
