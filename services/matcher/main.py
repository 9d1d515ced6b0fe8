"""`cloudbill run matcher`: apply the faust fixes, create topics, build the app, run it supervised until stopped."""

from __future__ import annotations

import faulthandler
import logging
import os
import sys
from collections.abc import Callable

from services.matcher import faust_patches
from services.matcher.app import (
    InventoryGate,
    ProgressWatch,
    create_app,
    create_changelog_topics,
    inventory_targets,
    liveness_probe,
)
from services.matcher.options import MatcherOptions, app_id_of
from services.matcher.runtime import SupervisedApp, WorkerCrashed, WorkerStopTimeout, run_worker
from shared import metrics
from shared.kafka import StopSignal, create_topics
from shared.settings import Settings

log = logging.getLogger(__name__)

EXIT_CRASHED = 70  # EX_SOFTWARE
EXIT_STOP_TIMEOUT = 75


def run(settings: Settings, stop: StopSignal | None = None, options: MatcherOptions | None = None) -> None:
    """Run the matcher until `stop` (or SIGTERM/SIGINT when run as a process).

    As a process (stop None) a crashed agent or a stop that outlives its kill timeout ends the process
    with a non-zero code; embedded (a StopSignal given) the same conditions raise.
    """
    faust_patches.apply_all()  # before any faust object exists; refuses a faust version it was not checked on
    as_process = stop is None
    if stop is None:
        stop = StopSignal().install()
        metrics.serve(settings.metrics_port)  # a process only: tests run several matchers in one
        faulthandler.enable()  # a crash in a native client (librdkafka, aiokafka's codecs) leaves a traceback
    options = options or MatcherOptions()
    create_topics(settings)
    app_id = app_id_of(settings, options)
    create_changelog_topics(settings, app_id)
    gate = InventoryGate(inventory_targets(settings, app_id), options.inventory_catchup_timeout_s)
    watch = ProgressWatch(options.stall_timeout_s)
    app = create_app(settings, options, gate, watch)
    log.info(
        "matcher starting (group %s, store %s, web %s)",
        app.conf.id,
        options.store,
        f"{options.web_bind}:{options.web_port}" if options.web_port else "disabled",
    )
    liveness = liveness_probe(settings, app, watch) if options.stall_timeout_s else None
    supervise(
        app,
        stop,
        options.stop_timeout_s,
        as_process=as_process,
        liveness=liveness,
        liveness_every_s=max(1.0, min(5.0, options.stall_timeout_s / 4)),
    )
    log.info("matcher stopped")


def supervise(
    app: SupervisedApp,
    stop: StopSignal,
    stop_timeout_s: float,
    *,
    as_process: bool,
    liveness: Callable[[], str | None] | None = None,
    liveness_every_s: float = 5.0,
) -> None:
    """Run a faust app; as a process, a crash, a stall or a stop past its kill timeout exits non-zero."""
    try:
        run_worker(app, stop, stop_timeout_s=stop_timeout_s, liveness=liveness, liveness_every_s=liveness_every_s)
    except WorkerCrashed as e:
        if not as_process:
            raise
        log.critical("%s crashed, exiting: %s", app.conf.id, e)
        _exit(EXIT_CRASHED)
    except WorkerStopTimeout as e:
        if not as_process:
            raise
        log.critical("%s; exiting", e)
        _exit(EXIT_STOP_TIMEOUT)


def _exit(code: int) -> None:
    """Leave now: faust may have left threads or tasks that would keep a normal exit waiting."""
    logging.shutdown()
    sys.stderr.flush()
    os._exit(code)
