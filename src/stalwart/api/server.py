"""Running the API with uvicorn: `stalwart serve`, the demo, the tests and the benchmark."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import uvicorn
from uvicorn.config import LOGGING_CONFIG

from stalwart.api.factory import create_api
from stalwart.app import App
from stalwart.settings import Settings


def config(
    app: App,
    *,
    settings: Settings | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    workers: int = 1,
    log_level: str = "info",
    access_log: bool = True,
    log_config: dict[str, Any] | str | None = LOGGING_CONFIG,
) -> uvicorn.Config:
    """A uvicorn configuration serving `app`'s API and UI with `workers` in-process workers.
    `log_config=None` leaves logging as it is (`stalwart serve` routes uvicorn's loggers
    through its own handler)."""
    return uvicorn.Config(
        create_api(app, settings=settings, workers=workers),
        host=host,
        port=port,
        log_level=log_level,
        access_log=access_log,
        log_config=log_config,
        # X-Forwarded-Proto/For are trusted from 127.0.0.1 only (uvicorn's default): a TLS proxy
        # on the same host makes the UI's session cookie Secure.
        proxy_headers=True,
        server_header=False,
        timeout_graceful_shutdown=int((settings or app.settings).drain_seconds) + 5,
    )


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class BackgroundServer:
    """A server on its own thread and event loop, for tests, the demo's CI run and benches."""

    def __init__(self, cfg: uvicorn.Config) -> None:
        self.server = uvicorn.Server(cfg)
        self.url = f"http://{cfg.host}:{cfg.port}"
        self._thread = threading.Thread(target=self._run, name="stalwart-server", daemon=True)
        self.error: BaseException | None = None

    def _run(self) -> None:
        try:
            asyncio.run(self.server.serve())
        except BaseException as exc:  # reported by start()
            self.error = exc

    def start(self, timeout: float = 30.0) -> None:
        """Start and wait until the server accepts requests."""
        self._thread.start()  # off the main thread, uvicorn leaves the signals alone
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self._thread.is_alive():
                raise RuntimeError(f"the server did not start: {self.error!r}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the server did not start within {timeout:g}s")
            time.sleep(0.02)

    def stop(self) -> None:
        """Ask the server to shut down (draining its workers) and wait."""
        self.server.should_exit = True
        self._thread.join(timeout=60)


@contextlib.contextmanager
def running(cfg: uvicorn.Config) -> Iterator[BackgroundServer]:
    """A started `BackgroundServer`, stopped on exit."""
    bg = BackgroundServer(cfg)
    bg.start()
    try:
        yield bg
    finally:
        bg.stop()
