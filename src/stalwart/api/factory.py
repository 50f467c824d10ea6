"""`create_api(app)`: the FastAPI application for one Stalwart app. No module globals: each call
builds a new application that opens its own store when it starts and closes it when it stops,
with `workers` in-process workers beside it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI

from stalwart.api import errors
from stalwart.api.disconnects import ClientGone
from stalwart.api.routes import dlq, health, jobs, memory, metrics, reviews, webhooks
from stalwart.api.state import SESSION_SECRET, ServerState
from stalwart.app import App
from stalwart.client import Client
from stalwart.errors import StoreError
from stalwart.observability.tracing import setup_tracing
from stalwart.settings import Settings
from stalwart.store import open_store
from stalwart.worker.worker import Worker, default_worker_id

log = logging.getLogger("stalwart.api")

DESCRIPTION = """
Submit jobs, follow them, decide reviews and redrive dead letters.

Authenticate with an API key (`stalwart keys create --tenant T --role R`) in
`Authorization: Bearer <key>`. Every request acts within the key's tenant: another tenant's
resources answer 404. Errors share one shape, `{code, message, field, fix, details}`, with a stable
`code`.
"""


def create_api(
    app: App,
    *,
    settings: Settings | None = None,
    workers: int = 0,
    ui: bool = True,
) -> FastAPI:
    """The HTTP API (and web UI at `/ui`) over `app`. The store at `settings.database_url` must
    be migrated (`stalwart serve` migrates it first); `workers` runs that many workers in the
    server process."""
    settings = settings or app.settings
    setup_tracing()  # OTLP export only when the OTEL_* variables ask for it

    @contextlib.asynccontextmanager
    async def lifespan(api: FastAPI) -> AsyncIterator[None]:
        store = open_store(settings.database_url, settings)
        state = ServerState(
            app=app,
            settings=settings,
            store=store,
            client=Client(store, app=app, settings=settings),
        )
        tasks: list[asyncio.Task[None]] = []
        running: list[Worker] = []
        worker_stores = []
        try:
            if ui:
                try:
                    state.session_secret = await state.client.secret(SESSION_SECRET)
                except StoreError as exc:
                    # An unmigrated database: serve anyway, so /readyz can say so (503); the
                    # UI reads the secret on first use once the database is migrated.
                    log.warning("UI sessions are off: %s (run stalwart db migrate)", exc.message)
            base = default_worker_id()
            await app.load_mcp_async()  # list MCP servers' tools off the event loop
            for n in range(workers):
                # One store (one connection) per worker, as separate processes would have.
                worker_store = open_store(settings.database_url, settings)
                worker_stores.append(worker_store)
                worker = app.worker(
                    store=worker_store, worker_id=base if workers == 1 else f"{base}/{n + 1}"
                )
                running.append(worker)
                tasks.append(asyncio.create_task(worker.run(), name=worker.worker_id))
            state.workers = list(running)
            api.state.stalwart = state
            yield
        finally:
            for worker in running:
                worker.stop()
            for result in await asyncio.gather(*tasks, return_exceptions=True):
                if isinstance(result, BaseException):
                    log.error("an in-process worker failed", exc_info=result)
            for worker_store in worker_stores:
                await worker_store.close()
            await store.close()

    api = FastAPI(
        title="Stalwart",
        version=_version(),
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url="/docs",
        redoc_url=None,
    )
    errors.install(api)
    api.add_middleware(ClientGone)
    for module in (health, jobs, reviews, dlq, webhooks, metrics, memory):
        api.include_router(module.router)
    if ui:
        from stalwart.ui import mount

        mount(api)
    return api


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("stalwart")
    except Exception:  # pragma: no cover - not installed as a package
        return "0"
