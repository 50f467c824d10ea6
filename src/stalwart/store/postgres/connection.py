"""Talking to PostgreSQL for Stalwart: URLs, the `?`-placeholder adapter, migrations under an
advisory lock."""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from functools import lru_cache
from typing import Any
from urllib.parse import unquote, urlsplit

import psycopg
from psycopg.conninfo import conninfo_to_dict

from stalwart.errors import ConfigurationError, MigrationError, StoreUnavailableError
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


def first_connect(url: str, timeout_seconds: float) -> None:
    """Connect once before any pool does: an unreachable server fails here, at once, with one
    `StoreUnavailableError` naming its host and port (never the password), instead of a pool's
    retries logging for `timeout_seconds`; and a database a newer Stalwart migrated is refused
    (`SchemaTooNewError`) before anything reads or writes it."""
    try:
        con = psycopg.connect(
            url, autocommit=True, connect_timeout=max(1, math.ceil(timeout_seconds))
        )
    except psycopg.Error as exc:
        # Not kept as the cause: the driver's text may quote the URL, password and all.
        raise unreachable(url, exc) from None
    with con:
        try:
            refuse_newer(con, url)
        except psycopg.Error as exc:
            raise unreachable(url, exc) from None


def unreachable(url: str, exc: BaseException) -> StoreUnavailableError:
    """The error for a connection to `url` that failed with `exc`: host, port and database
    named, the driver's reason kept, the password never shown."""
    try:
        info = conninfo_to_dict(url)
    except psycopg.Error:
        info = {}
    host = str(info.get("host") or "localhost")
    port = str(info.get("port") or "5432")
    lines = str(exc).strip().splitlines() or [type(exc).__name__]
    # libpq: 'connection failed: connection to server at "h", port p failed: <the reason>'
    reason = lines[0].rpartition(" failed: ")[2].strip() or lines[0]
    for secret in {str(info.get("password") or ""), *_url_passwords(url)} - {""}:
        reason = reason.replace(secret, "***")
    where = f"{host}:{port}"
    return StoreUnavailableError(
        f"PostgreSQL is unavailable: cannot connect to {where} "
        f"(database {info.get('dbname') or '(default)'}): {reason}",
        host=host,
        port=port,
        field="database_url",
        fix=f"check that PostgreSQL is running at {where} and accepts connections from here, "
        "and that --database-url (STALWART_DATABASE_URL) names the right server and database",
    )


def _url_passwords(url: str) -> set[str]:
    """The URL's password as written and decoded (either may be quoted in an error)."""
    try:
        raw = urlsplit(url).password or ""
    except ValueError:
        return set()
    return {raw, unquote(raw)}


def refuse_newer(con: psycopg.Connection[Any], url: str) -> None:
    """Raise `SchemaTooNewError` if a newer Stalwart migrated this database (reads only)."""
    exists = con.execute("SELECT to_regclass('schema_migrations') IS NOT NULL").fetchone()
    newest = None
    if exists and exists[0]:
        row = con.execute("SELECT max(version) FROM schema_migrations").fetchone()
        newest = None if row is None or row[0] is None else int(row[0])
    migrations.refuse_newer(newest, MIGRATIONS_PACKAGE, url)


def available_migrations() -> list[tuple[int, str, str]]:
    """(version, name, sql) of every migration shipped, in order."""
    return migrations.available(MIGRATIONS_PACKAGE)


def _ensure_table(con: psycopg.Connection[Any]) -> None:
    con.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations "
        "(version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied DOUBLE PRECISION NOT NULL)"
    )


def migration_status(con: psycopg.Connection[Any], url: str) -> MigrationStatus:
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
    return migrations.status(applied, MIGRATIONS_PACKAGE, url)


def migrate(con: psycopg.Connection[Any], url: str) -> list[int]:
    """Apply pending migrations, each in its own transaction, while holding a session advisory
    lock: many workers starting at once queue on the lock, and all but the first find nothing
    left to do. A database a newer Stalwart migrated is refused before anything is written.
    `con` must be in autocommit mode."""
    applied_now: list[int] = []
    con.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK_KEY,))
    try:
        refuse_newer(con, url)
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
