"""Run an ASGI app with uvicorn in a background thread (tests, the demo): `run_in_thread(app).url`."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import uvicorn


class ServerStartError(RuntimeError):
    """The server thread did not start accepting connections in time."""


@dataclass
class RunningServer:
    """A uvicorn server on a loopback port, served from a daemon thread until `stop()`."""

    host: str
    port: int
    server: uvicorn.Server
    thread: threading.Thread
    _stopped: bool = field(default=False, repr=False)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def stop(self, timeout: float = 10.0) -> None:
        """Ask uvicorn to exit (open connections get a short grace period), then join the thread."""
        if self._stopped:
            return
        self._stopped = True
        self.server.should_exit = True
        self.thread.join(timeout)
        if self.thread.is_alive():
            self.server.force_exit = True
            self.thread.join(timeout)

    def __enter__(self) -> RunningServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def run_in_thread(
    app: Any, port: int = 0, host: str = "127.0.0.1", *, timeout: float = 15.0, log_level: str = "warning"
) -> RunningServer:
    """Start `app` on host:port (0: a free port) and return once it accepts connections."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP: asyncio then sets TCP_NODELAY on accepted connections (else ~40 ms per request).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    bound_port = sock.getsockname()[1]
    config = uvicorn.Config(
        app, log_level=log_level, lifespan="auto", timeout_graceful_shutdown=2, access_log=False, ws="none"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name=f"uvicorn:{bound_port}", daemon=True)
    thread.start()
    running = RunningServer(host, bound_port, server, thread)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not thread.is_alive():
            sock.close()
            raise ServerStartError(f"server thread on {host}:{bound_port} exited during start-up")
        if server.started:
            with contextlib.suppress(OSError), socket.create_connection((host, bound_port), timeout=0.5):
                return running
        time.sleep(0.01)
    running.stop()
    raise ServerStartError(f"server on {host}:{bound_port} not ready in {timeout}s")
