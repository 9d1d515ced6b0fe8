"""run_in_thread: a real uvicorn server on a free loopback port, stopped cleanly."""

from __future__ import annotations

import socket

import httpx
import pytest
from fastapi import FastAPI

from shared.devinfra import free_port
from sims.server import run_in_thread


def tiny_app() -> FastAPI:
    app = FastAPI()

    @app.get("/ping")
    async def ping() -> dict[str, str]:
        return {"pong": "yes"}

    return app


def test_free_port_url_and_stop() -> None:
    srv = run_in_thread(tiny_app())
    assert srv.port > 0 and srv.url == f"http://127.0.0.1:{srv.port}"
    assert httpx.get(srv.url + "/ping").json() == {"pong": "yes"}
    srv.stop()
    assert not srv.thread.is_alive()
    with pytest.raises(httpx.ConnectError):
        httpx.get(srv.url + "/ping", timeout=1)
    srv.stop()  # idempotent


def test_given_port_and_context_manager() -> None:
    port = free_port()
    with run_in_thread(tiny_app(), port=port) as srv:
        assert srv.port == port
        assert httpx.get(f"http://127.0.0.1:{port}/ping").status_code == 200


def test_port_in_use_raises() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        with pytest.raises(OSError):
            run_in_thread(tiny_app(), port=s.getsockname()[1])


def test_two_servers_side_by_side() -> None:
    with run_in_thread(tiny_app()) as a, run_in_thread(tiny_app()) as b:
        assert a.port != b.port
        assert httpx.get(a.url + "/ping").status_code == httpx.get(b.url + "/ping").status_code == 200
