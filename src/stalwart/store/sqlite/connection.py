"""Opening a SQLite database for Stalwart: WAL, synchronous, busy timeout, migrations."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from stalwart.errors import ConfigurationError, MigrationError, StoreError
from stalwart.store import migrations
from stalwart.store.base import MigrationStatus

MIGRATIONS_PACKAGE = "stalwart.store.sqlite.migrations"


def path_from_url(url: str) -> str:
    """The file path of a `sqlite:///path` URL (`sqlite:///:memory:` is refused: workers in
    other processes could never see it)."""
    prefix = "sqlite:///"
    if not url.startswith(prefix):
        raise ConfigurationError(
            f"database_url {url!r} is not a SQLite URL; write sqlite:///path/to/file.db",
            field="database_url",
        )
    path = url[len(prefix) :]
    if not path or path == ":memory:":
        raise ConfigurationError(
            "database_url needs a file path (sqlite:///stalwart.db): several processes share it",
            field="database_url",
        )
    return path


def connect(
    path: str, *, synchronous: str = "FULL", busy_timeout_ms: int = 10_000
) -> sqlite3.Connection:
    """Open the file in WAL mode with manual transactions (we issue BEGIN IMMEDIATE ourselves)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    try:
        con = sqlite3.connect(
            path,
            isolation_level=None,
            check_same_thread=False,
            timeout=busy_timeout_ms / 1000,
            cached_statements=256,
        )
        con.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        mode = con.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise StoreError(f"could not switch {path} to WAL mode (got {mode})")
        con.execute(f"PRAGMA synchronous = {synchronous}")
        con.execute("PRAGMA foreign_keys = ON")
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open SQLite database {path}: {exc}") from exc
    return con


@contextmanager
def immediate(con: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One write transaction: BEGIN IMMEDIATE takes the write lock up front, so two processes
    never both read-then-write the same rows."""
    try:
        con.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as exc:
        raise StoreError(f"could not start a write transaction: {exc}") from exc
    try:
        yield con
    except BaseException:
        con.execute("ROLLBACK")
        raise
    try:
        con.execute("COMMIT")
    except sqlite3.Error as exc:
        con.execute("ROLLBACK")
        raise StoreError(f"commit failed: {exc}") from exc


def available_migrations() -> list[tuple[int, str, str]]:
    """(version, name, sql) of every migration shipped, in order."""
    return migrations.available(MIGRATIONS_PACKAGE)


def _ensure_table(con: sqlite3.Connection) -> None:
    con.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations "
        "(version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied REAL NOT NULL)"
    )


def refuse_newer(con: sqlite3.Connection, url: str) -> None:
    """Raise `SchemaTooNewError` if a newer Stalwart migrated this database. Only reads: a
    database without the migrations table is left as it is."""
    try:
        table = con.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'"
        ).fetchone()
        row = None
        if table:
            row = con.execute("SELECT max(version) FROM schema_migrations").fetchone()
    except sqlite3.Error as exc:
        raise StoreError(f"cannot read the schema version of {url}: {exc}") from exc
    newest = None if row is None or row[0] is None else int(row[0])
    migrations.refuse_newer(newest, MIGRATIONS_PACKAGE, url)


def migration_status(con: sqlite3.Connection, url: str) -> MigrationStatus:
    """What is applied and what is pending."""
    refuse_newer(con, url)
    _ensure_table(con)
    applied = [
        (int(v), str(n), float(a))
        for v, n, a in con.execute(
            "SELECT version, name, applied FROM schema_migrations ORDER BY version"
        )
    ]
    return migrations.status(applied, MIGRATIONS_PACKAGE, url)


def migrate(con: sqlite3.Connection, url: str) -> list[int]:
    """Apply pending migrations, each in its own write transaction; safe to run from several
    processes at once (the write lock serialises them and the version table is re-read). A
    database a newer Stalwart migrated is refused before anything is written."""
    applied_now: list[int] = []
    refuse_newer(con, url)
    _ensure_table(con)
    for version, name, sql in available_migrations():
        with immediate(con):
            row = con.execute(
                "SELECT 1 FROM schema_migrations WHERE version = ?", (version,)
            ).fetchone()
            if row:
                continue
            try:
                for statement in migrations.statements(sql):
                    con.execute(statement)
            except sqlite3.Error as exc:
                raise MigrationError(f"migration {name} failed: {exc}", version=version) from exc
            con.execute(
                "INSERT INTO schema_migrations (version, name, applied) VALUES (?, ?, ?)",
                (version, name, time.time()),
            )
            applied_now.append(version)
    return applied_now
