"""The ingester's DigitalOcean calls inside a record: interruptible by SIGTERM and bounded under max.poll.interval.ms.

They used to sleep through DigitalOcean's backoff (up to 60 s a wait, six tries, three calls per record): a
stop waited for it, and a record could outlast max.poll.interval.ms, so the group evicted the ingester mid-record.
"""

from __future__ import annotations

import socket
import threading
import time

import pytest
from pydantic import SecretStr

from services.ingester.main import do_clients
from shared.digitalocean import DigitalOceanInterrupted, DigitalOceanUnavailable
from shared.kafka import StopSignal
from shared.settings import Settings


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def settings(**kw: object) -> Settings:
    return Settings(
        _env_file=None,
        digitalocean_token=SecretStr("t"),
        digitalocean_api_url=f"http://127.0.0.1:{closed_port()}",  # refused: transient, retried with backoff
        digitalocean_max_retries=50,
        **kw,  # type: ignore[arg-type]
    )


def test_a_stop_ends_a_retry_wait_at_once() -> None:
    stop = StopSignal()
    (client,) = do_clients(settings(), stop).values()
    threading.Timer(0.5, stop.set).start()
    began = time.monotonic()
    with pytest.raises(DigitalOceanInterrupted):
        client.balance()
    assert time.monotonic() - began < 5


def test_a_record_s_calls_stay_within_a_sixth_of_max_poll_interval() -> None:
    """Three calls per record, each within max.poll.interval.ms / 6: the record stays under half of it."""
    (client,) = do_clients(settings(kafka_max_poll_interval_ms=12_000), StopSignal()).values()
    began = time.monotonic()
    with pytest.raises(DigitalOceanUnavailable, match="budget"):
        client.balance()
    assert time.monotonic() - began <= 2.5
