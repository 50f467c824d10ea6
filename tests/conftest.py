"""Suite-wide fixtures: a private PostgreSQL server, started only when a test asks for one.

`pg_url` is a freshly migrated database per test (cloned from a template migrated once per
session); `pg_empty_url` is an empty one. Both are dropped after the test. A test run that
requests neither never starts PostgreSQL. `local_embedder` marks a test that needs the local
embedding model. What a test needs and cannot have here skips it, unless CI=true: there it fails.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from tests.pgserver import PgServer, available

TEMPLATE_NAME = "stalwart_template"

# The suite's apps and worker subprocesses record episodes without loading the local embedding
# model (seconds of import and hundreds of MB per process); the memory tests choose theirs.
os.environ.setdefault("STALWART_EMBEDDER", "none")


def _migrate(url: str) -> None:
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    from stalwart.store import open_store

    async def go() -> None:
        store = open_store(url)
        try:
            await store.migrate()
        finally:
            await store.close()

    # Run on a thread of its own: the fixture may be set up from inside a running event loop.
    with ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(asyncio.run, go()).result()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """One throwaway PostgreSQL server for the whole session, removed at the end.

    Skips the test where PostgreSQL cannot run here, unless CI=true, where that is a failure.
    """
    reason = available()
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    server = PgServer()
    try:
        server.start()
        yield server
    finally:
        server.cleanup()


@pytest.fixture(scope="session")
def pg_template(pg_server: PgServer) -> str:
    """The name of a template database with Stalwart's migrations applied, built once."""
    return pg_server.template(TEMPLATE_NAME, _migrate)


def _drop_after_test(pg_server: PgServer, url: str) -> None:
    # A fault-injection test may have left the server stopped: bring it back for the rest.
    if not pg_server.running:
        pg_server.start()
    pg_server.drop_database(url.rsplit("/", 1)[1])


@pytest.fixture
def pg_url(pg_server: PgServer, pg_template: str) -> Iterator[str]:
    """The URL of a fresh, migrated database for this test only."""
    url = pg_server.fresh_database(pg_template)
    yield url
    _drop_after_test(pg_server, url)


@pytest.fixture
def local_embedder() -> None:
    """Requires the local embedder (the `local-embed` extra): skips the test where it is not
    installed, unless CI=true, where that is a failure (as for PostgreSQL and Chromium)."""
    from stalwart.llm.embeddings import LOCAL_EMBED_FIX, local_embedder_available

    if not local_embedder_available():
        reason = f"the local embedder is not installed: {LOCAL_EMBED_FIX}"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason} (CI=true requires it)")
        pytest.skip(reason)


@pytest.fixture
def pg_empty_url(pg_server: PgServer) -> Iterator[str]:
    """The URL of a fresh database with no migrations applied, for this test only."""
    url = pg_server.fresh_database("template0")
    yield url
    _drop_after_test(pg_server, url)
