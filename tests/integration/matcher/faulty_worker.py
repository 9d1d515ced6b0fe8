"""A faust app whose agent misbehaves, supervised like the matcher (run as a process by the tests).

`python -m tests.integration.matcher.faulty_worker raise|hang DATADIR` with the test's settings in the environment:
`raise` makes the agent raise on its first message; `hang` makes it refuse to stop (ignores cancellation);
`drop` acks every record but the first, which is what faust does to a record it drops after a rebalance;
`stall` holds its first record forever (cancellable) under a liveness probe that reports a stall once it has it.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

from services.matcher import faust_patches
from services.matcher.app import broker_url
from services.matcher.main import supervise
from services.matcher.runtime import SupervisedApp
from shared import logging as cblog
from shared.kafka import StopSignal
from shared.settings import Settings
from shared.topics import HISTORY


def build(settings: Settings, mode: str) -> SupervisedApp:
    app = SupervisedApp(
        f"{settings.kafka_topic_prefix}faulty-{mode}",
        broker=broker_url(settings.kafka_bootstrap_servers),
        store="memory://",
        web_enabled=False,
        topic_allow_declare=False,
        topic_disable_leader=True,
        key_serializer="raw",
        value_serializer="raw",
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=settings.kafka_session_timeout_ms / 1000,
        broker_heartbeat_interval=settings.kafka_heartbeat_interval_ms / 1000,
        datadir=str(Path(sys.argv[2]) / "faust"),
    )
    topic = app.topic(HISTORY.name(settings.kafka_topic_prefix), key_type=bytes, value_type=bytes)
    app.holding = asyncio.Event()  # type: ignore[attr-defined]  # `stall`: set once the agent holds a record

    @app.agent(topic, concurrency=1)
    async def faulty(stream: Any) -> None:
        if mode == "drop":
            first = True
            async for event in stream.noack().events():
                if not first:
                    await stream.ack(event)
                first = False
            return
        async for _value in stream:
            if mode == "stall":
                app.holding.set()  # type: ignore[attr-defined]
                await asyncio.sleep(3600)
            if mode == "raise":
                raise RuntimeError("boom: the agent failed on purpose")
            print("faulty worker: got a record, now refusing to stop", flush=True)
            while True:
                try:
                    await asyncio.sleep(3600)
                except asyncio.CancelledError:
                    continue

    return app


def main() -> None:
    mode = sys.argv[1]
    settings = Settings()
    cblog.setup("faulty", "console", "INFO")
    stop = StopSignal().install()
    faust_patches.apply_all()  # as services.matcher.main.run does: `drop` relies on fix 3 reporting the drop
    app = build(settings, mode)
    liveness = None
    if mode == "stall":

        def liveness() -> str | None:
            return "1 record waiting, none processed (on purpose)" if app.holding.is_set() else None  # type: ignore[attr-defined]

    supervise(app, stop, 3.0, as_process=True, liveness=liveness, liveness_every_s=0.5)


if __name__ == "__main__":
    main()
