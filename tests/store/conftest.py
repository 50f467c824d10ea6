"""The store conformance suite: every test in tests/store runs once per backend.

To add a backend, add its name to `BACKENDS` with a function that opens a fresh, empty store
and one that corrupts a job's stored input (the only test that reaches under the protocol).
The tests themselves talk to the `Store` protocol only and must pass unchanged.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from stalwart.settings import Settings
from stalwart.store import Store, open_store


@dataclass(frozen=True)
class Backend:
    """How the suite opens one backend and tampers with its rows."""

    open: Callable[[Path], Store]
    corrupt_job_input: Callable[[Store, str], Awaitable[None]]


def _open_sqlite(tmp_path: Path) -> Store:
    url = f"sqlite:///{tmp_path}/s.db"
    # synchronous=OFF: the suite tests behaviour, not durability across power loss.
    return open_store(url, Settings(database_url=url, sqlite_synchronous="OFF"))


async def _corrupt_sqlite_job_input(store: Store, job_id: str) -> None:
    path = store.url.removeprefix("sqlite:///")
    con = sqlite3.connect(path)
    try:
        with con:
            con.execute("UPDATE jobs SET input = '{not json' WHERE id = ?", (job_id,))
    finally:
        con.close()


BACKENDS: dict[str, Backend] = {
    "sqlite": Backend(open=_open_sqlite, corrupt_job_input=_corrupt_sqlite_job_input),
    # "postgres": Backend(open=_open_postgres, corrupt_job_input=_corrupt_postgres_job_input),
}


@pytest.fixture(params=list(BACKENDS))
def backend_name(request: pytest.FixtureRequest) -> str:
    """The name of the backend under test."""
    return str(request.param)


@pytest.fixture
def backend(backend_name: str) -> Backend:
    """The backend under test."""
    return BACKENDS[backend_name]


@pytest.fixture
async def fresh_store(backend: Backend, tmp_path: Path) -> AsyncIterator[Store]:
    """An empty store with no migrations applied."""
    store = backend.open(tmp_path)
    try:
        yield store
    finally:
        await store.close()


@pytest.fixture
async def store(fresh_store: Store) -> Store:
    """A fresh, migrated store."""
    await fresh_store.migrate()
    return fresh_store


@pytest.fixture
def corrupt_job_input(backend: Backend, store: Store) -> Callable[[str], Awaitable[None]]:
    """Overwrite a job's stored input with malformed JSON, under the protocol."""

    async def corrupt(job_id: str) -> None:
        await backend.corrupt_job_input(store, job_id)

    return corrupt
