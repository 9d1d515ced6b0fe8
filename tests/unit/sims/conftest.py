"""Shared fixtures: one DigitalOcean simulator (april-2026) per module, faults cleared around each test."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from sims.do.app import create_app
from sims.scenario import Scenario, builtin
from sims.server import RunningServer, run_in_thread

TOKEN = "dop_v1_simulatortesttoken"


@pytest.fixture(scope="module")
def april() -> Scenario:
    return builtin("april-2026")


@pytest.fixture(scope="module")
def do_server(april: Scenario) -> Iterator[RunningServer]:
    srv = run_in_thread(create_app(april))
    yield srv
    srv.stop()


@pytest.fixture
def do_client(do_server: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=do_server.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10) as c:
        c.delete("/_sim/faults").raise_for_status()
        c.delete("/_sim/requests").raise_for_status()
        yield c
        c.delete("/_sim/faults")
