"""`cloudbill run api` on the real PostgreSQL: served until stopped, health, readiness and authorization."""

from __future__ import annotations

import threading
from collections.abc import Callable

import httpx
from pydantic import SecretStr

from services.api import main as api_main
from services.api.cli import mint_token
from shared.devinfra import free_port
from shared.kafka import StopSignal
from shared.settings import Settings
from tests.helpers import wait_until

SECRET = "integration-secret-0123456789abcdef-0123456789abcdef-01234567"


def _start(target: Callable[..., None], *args, **kw) -> tuple[threading.Thread, StopSignal]:
    stop = StopSignal()
    t = threading.Thread(target=target, args=(*args, stop), kwargs=kw, daemon=True)
    t.start()
    return t, stop


def test_cloudbill_run_api_serves_until_stopped(settings: Settings) -> None:
    s = settings.model_copy(update={"api_jwt_secret": SecretStr(SECRET), "api_port": free_port()})
    thread, stop = _start(api_main.run, s)
    try:
        base = f"http://127.0.0.1:{s.api_port}"

        def up() -> bool:
            try:
                return httpx.get(base + "/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(up, timeout=30, what="api up")
        assert httpx.get(base + "/readyz", timeout=5).status_code == 200
        r = httpx.get(base + "/api/v1/billing/balance", headers={"Authorization": "Bearer x"}, timeout=5)
        assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
        token = mint_token(s, ["platform_admin"], 60, "t")
        r = httpx.get(base + "/api/v1/billing/balance", headers={"Authorization": f"Bearer {token}"}, timeout=5)
        assert r.status_code == 404  # no snapshot yet, but authorized and the schema exists
    finally:
        stop.set()
        thread.join(30)
    assert not thread.is_alive()
