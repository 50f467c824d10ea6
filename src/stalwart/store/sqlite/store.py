"""`SqliteStore`: the embedded backend, one SQLite file in WAL mode shared by any number of
worker processes on one machine.

Each write method is one `BEGIN IMMEDIATE` transaction: the write lock is taken up front, so
two processes never both read-then-write the same rows and no row locks are needed. The methods
are async to match the `Store` protocol but run their (short, local) transactions directly on the
calling thread: a hop to a thread pool would cost more than the transaction itself. See
docs/decisions/0003-sqlite-runs-on-the-event-loop.md.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from stalwart.errors import StoreError
from stalwart.settings import Settings
from stalwart.store.base import MigrationStatus
from stalwart.store.sql.store import SqlStore
from stalwart.store.sql.tx import Tx
from stalwart.store.sqlite import connection
from stalwart.types import epoch_now

T = TypeVar("T")


class SqliteStore(SqlStore):
    """The `Store` protocol on one SQLite file."""

    # The wall clock as epoch seconds, in SQL, for the reads that decide whether a write is
    # worth taking the lock for. julianday() truncates to the millisecond, so one is added: the
    # write transaction checks again with the exact time.
    now_sql = "((julianday('now') - 2440587.5) * 86400.0 + 0.001)"

    def __init__(self, url: str, settings: Settings | None = None) -> None:
        settings = settings or Settings()
        self.url = url
        self.path = connection.path_from_url(url)
        self._con = connection.connect(
            self.path,
            synchronous=settings.sqlite_synchronous,
            busy_timeout_ms=settings.sqlite_busy_timeout_ms,
        )
        try:
            # Every entry point opens a store: a database a newer Stalwart migrated is refused
            # here, once, before anything reads or writes it.
            connection.refuse_newer(self._con, url)
        except BaseException:
            self._con.close()
            raise

    async def _write(self, actor: str, fn: Callable[[Tx], T]) -> T:
        try:
            with connection.immediate(self._con):
                tx = Tx(self._con, epoch_now(), actor)
                result = fn(tx)
                tx.flush()
                return result
        except sqlite3.Error as exc:
            raise StoreError(f"database error: {exc}") from exc

    async def _read(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        try:
            return self._con.execute(sql, tuple(params)).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"database error: {exc}") from exc

    async def migrate(self) -> list[int]:
        """Apply pending migrations; return the versions applied now."""
        return connection.migrate(self._con, self.url)

    async def migration_status(self) -> MigrationStatus:
        """Applied and pending migrations."""
        return connection.migration_status(self._con, self.url)

    async def close(self) -> None:
        """Close the connection."""
        self._con.close()


__all__ = ["SqliteStore"]
