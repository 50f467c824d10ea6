"""What one running server holds: the app, its store and client, and the session secret."""

from __future__ import annotations

from dataclasses import dataclass, field

from fastapi import Request

from stalwart.app import App
from stalwart.client import Client
from stalwart.settings import Settings
from stalwart.store import Store
from stalwart.worker.worker import Worker

# The name of the shared secret that signs web UI sessions (`Store.secret_get`).
SESSION_SECRET = "ui_session"


@dataclass(slots=True)
class ServerState:
    """Set on `api.state.stalwart` when the server starts; closed when it stops."""

    app: App
    settings: Settings
    store: Store
    client: Client
    session_secret: str = ""
    workers: list[Worker] = field(default_factory=list)


def server(request: Request) -> ServerState:
    """The running server's state."""
    state = request.app.state.stalwart
    assert isinstance(state, ServerState), "the server has not started"
    return state


def client(request: Request) -> Client:
    """The server's client, over its store."""
    return server(request).client
