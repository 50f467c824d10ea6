"""A client that goes away mid-response is a normal event, not a server error.

FastAPI's event streams (`/v1/jobs/{id}/events/stream`) run a keepalive task beside the
endpoint; when the client closes the stream early, that task may be writing to a stream the
response has already closed, and the `anyio.BrokenResourceError` it raises would reach the
server as an unhandled error: an ERROR line with a traceback for every client that stops
listening. `ClientGone` turns exactly that (a response already started, failing only because
its consumer is gone) into one DEBUG line; anything else is raised as before.
"""

from __future__ import annotations

import logging

import anyio
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("stalwart.api")


class ClientGone:
    """ASGI middleware: a response cut off by its client's leaving is logged at DEBUG."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def sending(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, sending)
        except BaseException as exc:
            if not (started and _client_gone(exc)):
                raise
            log.debug(
                "the client left %s %s before the response ended",
                scope.get("method"),
                scope.get("path"),
                extra={"action": "client_gone"},
            )


def _client_gone(exc: BaseException) -> bool:
    """Whether `exc` says only that the other end of an in-process stream was closed."""
    if isinstance(exc, BaseExceptionGroup):
        return all(_client_gone(inner) for inner in exc.exceptions)
    return isinstance(exc, anyio.BrokenResourceError | anyio.ClosedResourceError)
