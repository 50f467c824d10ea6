"""A client that closes `/v1/jobs/{id}/events/stream` early is a normal event: no ERROR line,
no traceback, no exception out of the application. Driven at the ASGI level, so the client
leaves at a chosen moment: after one event, with the job's history still being streamed."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
from starlette.types import Message
from tests.api.server_app import build_app

from stalwart import Client, Settings
from stalwart.api.factory import create_api
from stalwart.store import open_store


async def test_a_client_closing_the_event_stream_early_logs_no_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"sqlite:///{tmp_path}/s.db"
    settings = Settings(database_url=url, event_stream_poll_seconds=0.05)
    app = build_app(settings)
    store = open_store(url, settings)
    try:
        await store.migrate()
        client = Client(store, app=app)
        key = (await client.key_create(tenant="acme", role="submitter", name="k")).token
        # A job with a history of several events (no worker runs it: it stays open).
        job = (await client.submit("order", {"customer": "ada", "amount": 5}, tenant="acme")).job
        assert len(await client.events(job.id, tenant="acme")) >= 3
    finally:
        await store.close()

    api = create_api(app, settings=settings, ui=False)
    requested, gone = False, asyncio.Event()
    statuses: list[int] = []

    async def receive() -> Message:
        nonlocal requested
        if not requested:
            requested = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])
        elif message.get("body"):
            # The client reads one event, is slow to take the next (the server streams on
            # meanwhile, filling its buffers), then closes: its socket takes no more bytes.
            for _ in range(100):
                await asyncio.sleep(0)
            gone.set()
            await asyncio.Event().wait()

    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": f"/v1/jobs/{job.id}/events/stream",
        "raw_path": f"/v1/jobs/{job.id}/events/stream".encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"test"), (b"authorization", f"Bearer {key}".encode())],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 80),
    }
    with caplog.at_level(logging.DEBUG):
        async with api.router.lifespan_context(api):
            await asyncio.wait_for(api(scope, receive, send), 60)

    assert statuses == [200] and gone.is_set()
    loud = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert not loud, [r.getMessage() for r in loud]
    assert [r.levelno for r in caplog.records if getattr(r, "action", "") == "client_gone"] == [
        logging.DEBUG
    ]
