"""A live server for the API, UI and browser tests: `stalwart serve`'s own code (uvicorn, the
app factory, in-process workers) on a free port of 127.0.0.1, over a fresh database, with one
API key per (tenant, role)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.api.server_app import build_app

from stalwart import Client, Settings
from stalwart.api.server import BackgroundServer, config, free_port
from stalwart.domain.access import Role
from stalwart.store import open_store

TENANTS = ("acme", "globex")
ROLES = tuple(r.value for r in Role)


@dataclass
class Live:
    """A running server: its URL, database, and a key per (tenant, role)."""

    url: str
    database_url: str
    keys: dict[tuple[str, str], str] = field(default_factory=dict)
    names: dict[tuple[str, str], str] = field(default_factory=dict)

    def http(self, tenant: str | None = None, role: str | None = None) -> httpx.Client:
        """An HTTP client, authenticated as that tenant's key of that role (or not at all)."""
        headers = {}
        if tenant is not None and role is not None:
            headers["Authorization"] = f"Bearer {self.keys[(tenant, role)]}"
        return httpx.Client(base_url=self.url, headers=headers, timeout=30.0)

    def client(self) -> Client:
        """A `Client` on the server's database (open it inside the caller's loop)."""
        return Client(open_store(self.database_url, Settings(database_url=self.database_url)))


async def _prepare(database_url: str) -> tuple[dict[tuple[str, str], str], dict[Any, str]]:
    store = open_store(database_url, Settings(database_url=database_url))
    try:
        await store.migrate()
        client = Client(store)
        keys, names = {}, {}
        for tenant in TENANTS:
            for role in ROLES:
                name = f"{tenant}-{role}"
                created = await client.key_create(tenant=tenant, role=role, name=name)
                keys[(tenant, role)] = created.token
                names[(tenant, role)] = name
        return keys, names
    finally:
        await store.close()


def start_live(
    database_url: str, *, workers: int = 1, **settings: Any
) -> tuple[Live, BackgroundServer]:
    """Migrate, create the keys, and start a server on `database_url`."""
    keys, names = asyncio.run(_prepare(database_url))
    app_settings = Settings(
        database_url=database_url,
        poll_interval_seconds=0.05,
        reaper_interval_seconds=0.2,
        drain_seconds=2.0,
        event_stream_poll_seconds=0.05,
        **settings,
    )
    app = build_app(app_settings)
    port = free_port()
    bg = BackgroundServer(
        config(app, port=port, workers=workers, log_level="warning", access_log=False)
    )
    bg.start()
    return Live(bg.url, database_url, keys, names), bg


@pytest.fixture
def live(tmp_path: Path) -> Iterator[Live]:
    """A server with one in-process worker on a fresh SQLite database."""
    server, bg = start_live(f"sqlite:///{tmp_path / 'server.db'}")
    try:
        yield server
    finally:
        bg.stop()


@pytest.fixture
def live_pg(pg_url: str) -> Iterator[Live]:
    """A server with one in-process worker on a fresh PostgreSQL database."""
    server, bg = start_live(pg_url)
    try:
        yield server
    finally:
        bg.stop()
