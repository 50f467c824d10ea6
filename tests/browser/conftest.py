"""Fixtures of the web UI's tests: the live server of the API tests, and signing in to `/ui`
with httpx (no browser) as one tenant's key of one role."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import httpx
import pytest
from tests.api.conftest import Live, start_live

T = TypeVar("T")
SignIn = Callable[[str, str], httpx.Client]
CSRF_FIELD = re.compile(r'name="csrf" value="([^"]+)"')


def off_loop(fn: Callable[..., T], *args: object) -> T:
    """Run `fn` on a thread of its own: Playwright's sync API keeps an event loop running on
    the main thread, where `asyncio.run` refuses to start another."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(fn, *args).result()


@pytest.fixture
def live(tmp_path: Path) -> Iterator[Live]:
    """The API tests' live server (one in-process worker, a fresh SQLite database, a key per
    tenant and role), started off the main thread's event loop."""
    server, background = off_loop(start_live, f"sqlite:///{tmp_path / 'server.db'}")
    try:
        yield server
    finally:
        background.stop()


def csrf_of(html: str) -> str:
    """The CSRF token of the first form on a page."""
    found = CSRF_FIELD.search(html)
    assert found, "the page has no form with a CSRF token"
    return found.group(1)


def browser_client(live: Live) -> httpx.Client:
    """An httpx client that keeps cookies and does not follow redirects, like a careful browser."""
    return httpx.Client(base_url=live.url, timeout=30.0, follow_redirects=False)


def sign_in(http: httpx.Client, key: str, next_path: str = "") -> httpx.Response:
    """Load the login form, then post `key` with its CSRF token; the POST's response."""
    form = http.get("/ui/login")
    assert form.status_code == 200, form.text
    data = {"key": key, "csrf": csrf_of(form.text), "next": next_path}
    return http.post("/ui/login", data=data)


@pytest.fixture
def ui(live: Live) -> Iterator[SignIn]:
    """Signed-in httpx clients: `ui("acme", "reviewer")`; closed after the test."""
    opened: list[httpx.Client] = []

    def make(tenant: str, role: str) -> httpx.Client:
        http = browser_client(live)
        opened.append(http)
        response = sign_in(http, live.keys[(tenant, role)])
        assert response.status_code == 303, response.text
        return http

    yield make
    for http in opened:
        http.close()


def revoke(live: Live, key_name: str) -> None:
    """Revoke a key on the server's database, as `stalwart keys revoke` would."""

    async def go() -> None:
        client = live.client()
        try:
            await client.key_revoke(key_name, actor="test")
        finally:
            await client.store.close()

    off_loop(asyncio.run, go())
