"""Fixtures of the ingester's integration tests: one DigitalOcean simulator per module on a private scenario copy."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from shared.settings import Settings
from sims.do.app import create_app
from sims.server import RunningServer, run_in_thread
from tests.integration.ingester.support import clear_faults, copy_scenario


@pytest.fixture(scope="module")
def scenario_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return copy_scenario(tmp_path_factory.mktemp("do-scenario"))


@pytest.fixture(scope="module")
def do_sim(scenario_dir: Path) -> Iterator[RunningServer]:
    server = run_in_thread(create_app(scenario_dir))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def ingester_settings(settings: Settings, do_sim: RunningServer) -> Iterator[Settings]:
    """Broker + fresh database + the simulator, with a token for the single default account."""
    yield settings.model_copy(
        update={
            "digitalocean_api_url": do_sim.url,
            "digitalocean_token": SecretStr("dop_v1_" + "0123456789abcdef" * 4),
            "digitalocean_max_retries": 2,
        }
    )
    clear_faults(do_sim.url)
