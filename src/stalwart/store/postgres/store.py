"""`PostgresStore`: the shared-database backend, for any number of workers on any number of
machines.

The transaction code is the same as SQLite's (`stalwart.store.sql`), run on a psycopg 3
connection pool. Each write runs in READ COMMITTED with the rows it reads-then-changes locked
(`FOR UPDATE`), claims skip rows other workers hold (`FOR UPDATE ... SKIP LOCKED`), and every
time written (due, lease expiry) comes from the database clock, read once per transaction. A
transaction that loses a deadlock or serialisation race is run again from the start.

The pool's connections are blocking; each transaction runs whole on a thread of the store's own
executor, so the event loop never waits on the network. See
docs/decisions/0014-one-sql-store-two-backends.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import psycopg
import psycopg.errors
from psycopg_pool import ConnectionPool, PoolTimeout

from stalwart.domain.states import StepStatus
from stalwart.errors import StoreError, StoreUnavailableError
from stalwart.settings import Settings
from stalwart.store.base import MigrationStatus
from stalwart.store.postgres import connection
from stalwart.store.postgres.connection import PgConnection
from stalwart.store.postgres.vectors import PgVectors, PgVectorStore
from stalwart.store.sql.store import SqlStore
from stalwart.store.sql.tx import Tx

T = TypeVar("T")
log = logging.getLogger("stalwart.store.postgres")

# Steps became ready: workers LISTENing on this channel claim at once instead of at their next poll.
READY_CHANNEL = "stalwart_steps_ready"
RACE_ERRORS = (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure)
RACE_RETRIES = 8
NOW_SQL = "extract(epoch from now())::float8"

# Backoff jitter from a generator of its own, not the application's global `random` state.
_BACKOFF = random.Random()


class _NotCommitted(Exception):
    """A connection failed before COMMIT was sent: the transaction certainly did not apply."""


class PostgresStore(PgVectorStore, SqlStore):
    """The `Store` protocol on PostgreSQL."""

    now_sql = NOW_SQL
    wakeups = True
    server_turns = True

    def __init__(self, url: str, settings: Settings | None = None) -> None:
        settings = settings or Settings()
        self.url = connection.check_url(url)
        self._settings = settings
        # Every entry point opens a store: one connection first, so an unreachable server or a
        # database a newer Stalwart migrated fails here, once, before the pool starts retrying.
        connection.first_connect(self.url, settings.pg_connect_timeout_seconds)
        size = settings.pg_pool_size
        self._pool = ConnectionPool(
            self.url,
            min_size=1,
            max_size=size,
            kwargs={"autocommit": True},
            timeout=settings.pg_connect_timeout_seconds,
            open=True,
            name="stalwart",
        )
        self._threads = ThreadPoolExecutor(max_workers=size, thread_name_prefix="stalwart-pg")
        self._vectors = PgVectors(ef_search=settings.memory_hnsw_ef_search)
        self._closed = False

    # -- plumbing ---------------------------------------------------------------------------------

    async def _write(self, actor: str, fn: Callable[[Tx], T]) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._threads, self._write_sync, actor, fn)

    async def _read(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._threads, self._read_sync, sql, params)

    def _write_sync(self, actor: str, fn: Callable[[Tx], T]) -> T:
        for attempt in range(RACE_RETRIES + 1):
            try:
                return self._attempt(actor, fn)
            except RACE_ERRORS as exc:
                if attempt == RACE_RETRIES:
                    raise StoreError(f"database error after {attempt + 1} tries: {exc}") from exc
                time.sleep(_BACKOFF.uniform(0, 0.002 * 2**attempt))
            except _NotCommitted as exc:
                if attempt >= 1:
                    raise _unavailable(exc.__cause__) from exc.__cause__
            except PoolTimeout as exc:
                raise _unavailable(exc) from exc
        raise AssertionError("unreachable")

    def _attempt(self, actor: str, fn: Callable[[Tx], T]) -> T:
        with self._pool.connection() as raw:
            committing = False
            try:
                # BEGIN and the clock in one round trip (the simple protocol runs both).
                cur = raw.execute(f"BEGIN; SELECT {NOW_SQL}")
                cur.nextset()
                now = cur.fetchone()
                assert now is not None
                try:
                    tx = Tx(
                        PgConnection(raw),
                        float(now[0]),
                        actor,
                        row_locks=True,
                        retryable=(*RACE_ERRORS, psycopg.OperationalError),
                    )
                    result = fn(tx)
                    if _made_ready(tx):
                        raw.execute("SELECT pg_notify(%s, '')", (READY_CHANNEL,))
                    tx.flush()
                except BaseException:
                    if not raw.closed:
                        with contextlib.suppress(psycopg.Error):
                            raw.execute("ROLLBACK")
                    raise
                committing = True
                done = raw.execute("COMMIT")
                if done.statusmessage != "COMMIT":
                    # A failed statement whose error was swallowed: the server rolled back.
                    raise StoreError(f"the transaction was rolled back ({done.statusmessage})")
                return result
            except RACE_ERRORS:
                raise
            except psycopg.Error as exc:
                if not raw.closed:
                    raise StoreError(f"database error: {exc}") from exc
                if not committing:
                    raise _NotCommitted() from exc
                raise _unavailable(exc) from exc

    def _read_sync(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        for attempt in range(2):
            try:
                with self._pool.connection() as raw:
                    return PgConnection(raw).execute(sql, params).fetchall()
            except psycopg.OperationalError as exc:
                # A read is safe to repeat: the first try may have met a connection the server
                # closed (a restart); the pool replaces it.
                if attempt == 1:
                    raise _unavailable(exc) from exc
            except PoolTimeout as exc:
                raise _unavailable(exc) from exc
            except psycopg.Error as exc:
                raise StoreError(f"database error: {exc}") from exc
        raise AssertionError("unreachable")

    def _admin(self, fn: Callable[[psycopg.Connection[Any]], T]) -> T:
        try:
            with self._pool.connection() as raw:
                return fn(raw)
        except PoolTimeout as exc:
            raise _unavailable(exc) from exc
        except psycopg.OperationalError as exc:
            raise _unavailable(exc) from exc

    async def migrate(self) -> list[int]:
        """Apply pending migrations under an advisory lock; return the versions applied now."""
        loop = asyncio.get_running_loop()
        migrate = functools.partial(connection.migrate, url=self.url)
        return await loop.run_in_executor(self._threads, self._admin, migrate)

    async def migration_status(self) -> MigrationStatus:
        """Applied and pending migrations."""
        loop = asyncio.get_running_loop()
        status = functools.partial(connection.migration_status, url=self.url)
        return await loop.run_in_executor(self._threads, self._admin, status)

    async def close(self) -> None:
        """Close the pool and its threads."""
        if self._closed:
            return
        self._closed = True
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._threads, self._pool.close)
        self._threads.shutdown(wait=False)

    # -- wake-ups ---------------------------------------------------------------------------------

    async def listen(self, wake: Callable[[], None]) -> None:
        """Call `wake` whenever another process makes steps ready, until cancelled. A hint only:
        workers still poll. The listening connection is reopened when it drops."""
        delay = 0.1
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self.url,
                    autocommit=True,
                    connect_timeout=max(1, int(self._settings.pg_connect_timeout_seconds)),
                ) as con:
                    await con.execute(f"LISTEN {READY_CHANNEL}")
                    delay = 0.1
                    wake()  # anything made ready while we were not listening
                    async for _ in con.notifies():
                        wake()
            except asyncio.CancelledError:
                raise
            except psycopg.Error as exc:
                log.warning(
                    "wake-up listener lost its connection; reconnecting in %.1fs: %s",
                    delay,
                    exc,
                    extra={"action": "listener_reconnect"},
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


def _made_ready(tx: Tx) -> bool:
    """Did this transaction leave a step ready that it did not also claim?"""
    ready = {e.step_id for e in tx.events if e.to_status == StepStatus.READY.value}
    if not ready:
        return False
    running = {e.step_id for e in tx.events if e.to_status == StepStatus.RUNNING.value}
    return bool(ready - running)


def _unavailable(exc: BaseException | None) -> StoreUnavailableError:
    return StoreUnavailableError(f"PostgreSQL is unavailable: {exc}")


__all__ = ["READY_CHANNEL", "PostgresStore"]
