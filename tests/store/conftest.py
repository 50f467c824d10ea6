"""The store conformance suite: every test in tests/store runs once per backend.

To add a backend, add its name to `BACKENDS` with a function that gives a database URL for a
test and one that corrupts a job's stored input (the only test that reaches under the protocol).
PostgreSQL runs on a private server the suite starts itself (tests/pgserver.py).
The tests themselves talk to the `Store` protocol only and must pass unchanged.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from stalwart.settings import Settings
from stalwart.store import Store, open_store


@dataclass(frozen=True)
class Backend:
    """How the suite opens one backend and tampers with its rows.

    `url` gives a database URL for a test: `migrated` asks for one with the schema already in
    place (PostgreSQL clones a template database; SQLite just migrates its new file)."""

    url: Callable[[pytest.FixtureRequest, Path, bool], str]
    corrupt_job_input: Callable[[Store, str], Awaitable[None]]


def _sqlite_url(request: pytest.FixtureRequest, tmp_path: Path, migrated: bool) -> str:
    return f"sqlite:///{tmp_path}/s.db"


async def _corrupt_sqlite_job_input(store: Store, job_id: str) -> None:
    path = store.url.removeprefix("sqlite:///")
    con = sqlite3.connect(path)
    try:
        with con:
            con.execute("UPDATE jobs SET input = '{not json' WHERE id = ?", (job_id,))
    finally:
        con.close()


def _postgres_url(request: pytest.FixtureRequest, tmp_path: Path, migrated: bool) -> str:
    return str(request.getfixturevalue("pg_url" if migrated else "pg_empty_url"))


async def _corrupt_postgres_job_input(store: Store, job_id: str) -> None:
    async with await psycopg.AsyncConnection.connect(store.url, autocommit=True) as con:
        await con.execute("UPDATE jobs SET input = '{not json' WHERE id = %s", (job_id,))


BACKENDS: dict[str, Backend] = {
    "sqlite": Backend(url=_sqlite_url, corrupt_job_input=_corrupt_sqlite_job_input),
    "postgres": Backend(url=_postgres_url, corrupt_job_input=_corrupt_postgres_job_input),
}


def settings_for(url: str) -> Settings:
    """Settings for a test store; synchronous=OFF on SQLite: the suite tests behaviour, not
    durability across power loss."""
    return Settings(database_url=url, sqlite_synchronous="OFF")


@pytest.fixture(params=list(BACKENDS))
def backend_name(request: pytest.FixtureRequest) -> str:
    """The name of the backend under test."""
    return str(request.param)


@pytest.fixture
def backend(backend_name: str) -> Backend:
    """The backend under test."""
    return BACKENDS[backend_name]


@pytest.fixture
async def fresh_store(
    backend: Backend, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[Store]:
    """An empty store with no migrations applied."""
    url = backend.url(request, tmp_path, False)
    store = open_store(url, settings_for(url))
    try:
        yield store
    finally:
        await store.close()


@pytest.fixture
async def store(
    backend: Backend, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[Store]:
    """A fresh, migrated store."""
    url = backend.url(request, tmp_path, True)
    store = open_store(url, settings_for(url))
    try:
        await store.migrate()
        yield store
    finally:
        await store.close()


@pytest.fixture
def corrupt_job_input(backend: Backend, store: Store) -> Callable[[str], Awaitable[None]]:
    """Overwrite a job's stored input with malformed JSON, under the protocol."""

    async def corrupt(job_id: str) -> None:
        await backend.corrupt_job_input(store, job_id)

    return corrupt
