"""Talking to PostgreSQL for Stalwart: URLs, the `?`-placeholder adapter, migrations under an
advisory lock."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from functools import lru_cache
from typing import Any

import psycopg

from stalwart.errors import ConfigurationError, MigrationError
from stalwart.store import migrations
from stalwart.store.base import MigrationStatus

MIGRATIONS_PACKAGE = "stalwart.store.postgres.migrations"
# pg_advisory_lock key held while migrating: "stalwart" as a number, the same for every process.
MIGRATION_LOCK_KEY = int.from_bytes(b"stalwart", "big") & 0x7FFF_FFFF_FFFF_FFFF
SCHEMES = ("postgresql://", "postgres://")


def check_url(url: str) -> str:
    """A PostgreSQL URL as given, or a `ConfigurationError` naming the fix."""
    if not url.startswith(SCHEMES):
        raise ConfigurationError(
            f"database_url {url!r} is not a PostgreSQL URL; write "
            "postgresql://user:password@host:5432/dbname",
            field="database_url",
        )
    return url


@lru_cache(maxsize=2048)
def pg_sql(sql: str) -> str:
    """The shared SQL's `?` placeholders as psycopg's `%s` (a literal `%` is doubled first)."""
    return sql.replace("%", "%%").replace("?", "%s")


class PgConnection:
    """A psycopg connection that speaks the shared SQL: `?` placeholders, `executemany`."""

    __slots__ = ("raw",)

    def __init__(self, raw: psycopg.Connection[Any]) -> None:
        self.raw = raw

    def execute(self, sql: str, params: Sequence[Any] = (), /) -> psycopg.Cursor[Any]:
        """Run one statement."""
        return self.raw.execute(pg_sql(sql), tuple(params))

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]], /) -> None:
        """Run one statement for many parameter rows (pipelined by psycopg)."""
        with self.raw.cursor() as cur:
            cur.executemany(pg_sql(sql), list(rows))


def available_migrations() -> list[tuple[int, str, str]]:
    """(version, name, sql) of every migration shipped, in order."""
    return migrations.available(MIGRATIONS_PACKAGE)


def _ensure_table(con: psycopg.Connection[Any]) -> None:
    con.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations "
        "(version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied DOUBLE PRECISION NOT NULL)"
    )


def migration_status(con: psycopg.Connection[Any]) -> MigrationStatus:
    """What is applied and what is pending."""
    exists = con.execute("SELECT to_regclass('schema_migrations') IS NOT NULL").fetchone()
    applied: list[tuple[int, str, float]] = []
    if exists and exists[0]:
        applied = [
            (int(v), str(n), float(a))
            for v, n, a in con.execute(
                "SELECT version, name, applied FROM schema_migrations ORDER BY version"
            ).fetchall()
        ]
    return migrations.status(applied, MIGRATIONS_PACKAGE)


def migrate(con: psycopg.Connection[Any]) -> list[int]:
    """Apply pending migrations, each in its own transaction, while holding a session advisory
    lock: many workers starting at once queue on the lock, and all but the first find nothing
    left to do. `con` must be in autocommit mode."""
    applied_now: list[int] = []
    con.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK_KEY,))
    try:
        _ensure_table(con)
        for version, name, sql in available_migrations():
            with con.transaction():
                row = con.execute(
                    "SELECT 1 FROM schema_migrations WHERE version = %s", (version,)
                ).fetchone()
                if row:
                    continue
                try:
                    for statement in migrations.statements(sql):
                        con.execute(statement)
                except psycopg.Error as exc:
                    raise MigrationError(
                        f"migration {name} failed: {exc}", version=version
                    ) from exc
                con.execute(
                    "INSERT INTO schema_migrations (version, name, applied) VALUES (%s, %s, %s)",
                    (version, name, time.time()),
                )
                applied_now.append(version)
    finally:
        con.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK_KEY,))
    return applied_now
