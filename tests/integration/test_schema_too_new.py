"""A database migrated by a newer Stalwart is refused by every entry point, before it writes.

The database is made "newer" the way a newer release would leave it: one more row in
`schema_migrations`, with a version this code does not ship. Then every command that opens it
(`submit`, `keys create`, `worker`, `serve`, `demo`, `db migrate`, `db status`, `jobs list`)
must exit non-zero with one `SchemaTooNewError` naming both versions and the fix, and leave
every table's row count as it was. The commands run in-process through typer's runner, except
`worker` and `serve`, which would run until stopped if they did not refuse: those run as
subprocesses with a deadline.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import closing
from typing import Any

import pytest
from typer.testing import CliRunner

from stalwart.cli.main import cli
from stalwart.client import Client
from stalwart.errors import SchemaTooNewError
from stalwart.store import open_store
from stalwart.store.migrations import newest

from .apps import bad_app
from .conftest import APPS, REPO, is_postgres, query, sqlite_path

FUTURE = 9999
APP = f"{APPS}.bad_app:app"
GOOD = {"customer": "ada", "amount": 12.5}


def _package(db_url: str) -> str:
    backend = "postgres" if is_postgres(db_url) else "sqlite"
    return f"stalwart.store.{backend}.migrations"


def stamp(db_url: str, version: int) -> None:
    """Record migration `version` as applied, as `db migrate` does (committed)."""
    row = (version, f"{version:04d}_from_a_newer_release", time.time())
    sql = "INSERT INTO schema_migrations (version, name, applied) VALUES (?, ?, ?)"
    if is_postgres(db_url):
        import psycopg

        with psycopg.connect(db_url, autocommit=True) as pg:
            pg.execute(sql.replace("?", "%s"), row)
        return
    with closing(sqlite3.connect(sqlite_path(db_url))) as con, con:
        con.execute(sql, row)


def tables(db_url: str) -> list[str]:
    if is_postgres(db_url):
        sql = "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
    else:
        sql = "SELECT name FROM sqlite_master WHERE type = 'table'"
    return sorted(str(row[0]) for row in query(db_url, sql))


def counts(db_url: str) -> dict[str, int]:
    """Every table's row count: a refused command must leave each as it was."""
    return {t: int(query(db_url, f'SELECT count(*) FROM "{t}"')[0][0]) for t in tables(db_url)}


@pytest.fixture
def newer_db(db_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A migrated database holding a job and a key, then stamped with a migration from a
    future release (as that release's `db migrate` would record it)."""

    async def prepare() -> None:
        store = open_store(db_url)
        try:
            await store.migrate()
            client = Client(store, app=bad_app.app)
            await client.submit("order", GOOD, idempotency_key="before")
            await client.key_create(tenant="acme", role="admin", name="ops")
        finally:
            await store.close()

    asyncio.run(prepare())
    stamp(db_url, FUTURE)
    # `--app` replaces the imported app's database URL in place: undone after the test.
    monkeypatch.setattr(bad_app.app, "settings", bad_app.app.settings)
    monkeypatch.setattr(bad_app.app, "_store", None)
    monkeypatch.delenv("STALWART_APP", raising=False)
    monkeypatch.delenv("STALWART_DATABASE_URL", raising=False)
    yield db_url


def assert_refused(db_url: str, exit_code: int, stderr: str) -> None:
    """Exit 1 and one JSON error: code `schema_too_new`, both versions, the fix."""
    assert exit_code == 1, stderr
    lines = [line for line in stderr.splitlines() if line.startswith("{")]
    errors = [json.loads(line) for line in lines]
    errors = [e for e in errors if "code" in e and "fix" in e]
    assert len(errors) == 1, stderr
    [error] = errors
    code_version = newest(_package(db_url))
    assert error["code"] == "schema_too_new", error
    assert error["details"] == {"database_version": FUTURE, "code_version": code_version}
    assert f"schema version {FUTURE}" in error["message"]
    assert f"schema version {code_version}" in error["message"]
    assert "Upgrade Stalwart" in error["message"] and "another database" in error["message"]
    assert "upgrade Stalwart" in error["fix"] and "another database" in error["fix"]
    assert error["field"] == "database_url"


IN_PROCESS = {
    "submit": ["--app", APP, "submit", "order", "--input", json.dumps(GOOD)],
    "submit-wait": [
        *["--app", APP, "submit", "order", "--input", json.dumps(GOOD)],
        "--wait",
        "--timeout",
        "5",
    ],
    "keys-create": ["keys", "create", "--role", "admin", "--tenant", "acme"],
    "db-migrate": ["db", "migrate"],
    "db-status": ["db", "status"],
    "jobs-list": ["jobs", "list"],
    "keys-list": ["keys", "list"],
}


@pytest.mark.parametrize("command", list(IN_PROCESS), ids=list(IN_PROCESS))
def test_a_command_refuses_a_newer_database_and_writes_nothing(newer_db: str, command: str) -> None:
    before = counts(newer_db)
    done = CliRunner().invoke(cli, ["--database-url", newer_db, "--json", *IN_PROCESS[command]])
    assert_refused(newer_db, done.exit_code, done.stderr)
    assert done.stdout == ""
    assert counts(newer_db) == before


@pytest.mark.parametrize("resume", [False, True], ids=["fresh", "resume"])
def test_the_demo_refuses_a_newer_database_and_does_not_replace_it(
    newer_db: str, resume: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if is_postgres(newer_db):
        pytest.skip("the demo runs on SQLite only (it refuses any other URL)")
    monkeypatch.chdir(REPO)  # the demo lives in examples/ of the repository
    before = counts(newer_db)
    args = ["--database-url", newer_db, "--json", "demo", "--no-serve"]
    done = CliRunner().invoke(cli, [*args, "--resume"] if resume else args)
    assert_refused(newer_db, done.exit_code, done.stderr)
    assert counts(newer_db) == before


def _subprocess(db_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STALWART_")}
    env["STALWART_EMBEDDER"] = "none"
    # Without the refusal these would run until stopped: the deadline makes that a failure.
    return subprocess.run(
        [sys.executable, "-m", "stalwart.cli.main", "--database-url", db_url, "--json", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


@pytest.mark.parametrize(
    "args",
    [
        ["--app", APP, "worker", "--log-format", "json"],
        ["--app", APP, "serve", "--port", "0", "--log-format", "json"],
    ],
    ids=["worker", "serve"],
)
def test_worker_and_serve_refuse_a_newer_database_at_start(newer_db: str, args: list[str]) -> None:
    before = counts(newer_db)
    done = _subprocess(newer_db, *args)
    assert_refused(newer_db, done.returncode, done.stderr)
    assert counts(newer_db) == before


async def test_opening_the_store_refuses_it_with_both_versions(newer_db: str) -> None:
    before = counts(newer_db)
    with pytest.raises(SchemaTooNewError) as info:
        open_store(newer_db)
    error: Any = info.value
    assert (error.database_version, error.code_version) == (FUTURE, newest(_package(newer_db)))
    assert counts(newer_db) == before


def test_the_database_one_version_ahead_is_refused_too(db_url: str) -> None:
    """The edge: exactly one past the newest shipped migration."""

    async def migrate() -> None:
        store = open_store(db_url)
        try:
            await store.migrate()
        finally:
            await store.close()

    asyncio.run(migrate())
    ahead = newest(_package(db_url)) + 1
    stamp(db_url, ahead)
    with pytest.raises(SchemaTooNewError, match=f"schema version {ahead}"):
        open_store(db_url)


async def test_a_store_open_before_the_upgrade_refuses_to_migrate(db_url: str) -> None:
    """A long-lived process (a worker started before a newer release migrated the database)
    runs `migrate` and `migration_status` through the same check, not only at open."""
    store = open_store(db_url)
    try:
        await store.migrate()
        stamp(db_url, FUTURE)
        before = counts(db_url)
        with pytest.raises(SchemaTooNewError):
            await store.migrate()
        with pytest.raises(SchemaTooNewError):
            await store.migration_status()
        assert counts(db_url) == before
    finally:
        await store.close()
