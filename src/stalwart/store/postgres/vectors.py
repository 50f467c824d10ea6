"""pgvector for the memory tables: an HNSW index per vector size, used when the database has the
`vector` extension. Without it, `engine/recall.py` searches exactly in memory, as on SQLite.

At a store's first memory write or search, `PgVectorStore` looks for `vector` in
`pg_available_extensions`. When it is there, it makes sure of the following, under an advisory
lock (several processes may start at once), changing only what is missing:

- `CREATE EXTENSION vector` (a role that may not: logged once, then exact search);
- a column `embedding vector` on `memory_chunks` and `memory_episodes`, filled from the float32
  `vector` bytes of every row that lacks it (rows written before, or by a release without this
  module: a search looks for such rows again every `CATCH_UP_SECONDS`, through a partial index);
- per vector size d in use, an HNSW index on the expression `embedding::vector(d)` over the rows
  `WHERE dimension = d`. The column has no size of its own, since collections of different
  embedders share the table; a size gets its indexes when its first row is written. Sizes
  above `HNSW_MAX_DIMENSION` (pgvector's limit) get none and are searched exactly.

Rows written afterwards fill `embedding` in their own INSERT (`MemoryStore._memory_embedding`),
sent in pgvector's binary format. A search orders by cosine distance through the size's index,
with `hnsw.iterative_scan = relaxed_order` (pgvector 0.8+) so the tenant, collection and
embedder filters do not starve the result; when it still returns fewer than k rows while the
scope holds more, or k is over `EXACT_ABOVE_K`, the same query runs without the index (exact).
The planner may also compare every row of a scope it deems small (a few thousand rows, or one
tenant's share of a large table) rather than use the index: that is exact, and cheap, as
`embedding` is kept in the row (storage MAIN), not in TOAST.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import logging
import struct
import sys
import threading
import time
from abc import abstractmethod
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import psycopg
import psycopg.errors
from psycopg.adapt import Dumper
from psycopg.pq import Format

from stalwart.errors import StoreError, UsageError
from stalwart.store.sql.memory import NO_EMBEDDING, EmbeddingColumn, MemoryStore

T = TypeVar("T")
log = logging.getLogger("stalwart.store.postgres")

# pg_advisory_lock key held while setting pgvector up ("stalvec"; the migrations use "stalwart").
VECTOR_LOCK_KEY = int.from_bytes(b"stalvec", "big")
TABLES = ("memory_chunks", "memory_episodes")
HNSW_VERSION = (0, 5, 0)  # the first pgvector with HNSW indexes
ITERATIVE_SCAN_VERSION = (0, 8, 0)  # the first with hnsw.iterative_scan
HNSW_MAX_DIMENSION = 2000  # pgvector indexes `vector` columns of up to 2,000 dimensions
EF_SEARCH = 100  # candidates an HNSW scan keeps (pgvector's default: 40); at least k
EXACT_ABOVE_K = 1000  # hnsw.ef_search's ceiling: larger k are searched exactly
FILL_BATCH = 500  # rows per transaction when filling `embedding`
CATCH_UP_SECONDS = 60.0  # how often a search looks for rows written without `embedding`
BUILD_MEMORY = "512MB"  # maintenance_work_mem of an index build: the graph of 100k rows fits


class PgVector(bytes):
    """float32 values (native byte order, as `Vector.data` holds them) to be sent as a pgvector
    `vector`."""


class _PgVectorDumper(Dumper):
    """pgvector's binary input: the count and a zero (big-endian int16s), then big-endian
    float32s. The type's oid differs per database, so none is sent: the server takes the type
    from the `::vector` cast at the placeholder."""

    format = Format.BINARY

    def dump(self, obj: Any) -> bytes:
        values = array.array("f")
        values.frombytes(obj)
        if sys.byteorder == "little":
            values.byteswap()
        return struct.pack(">HH", len(values), 0) + values.tobytes()


# Only values wrapped in our own class are dumped this way.
psycopg.adapters.register_dumper(PgVector, _PgVectorDumper)

PG_EMBEDDING = EmbeddingColumn(column=", embedding", mark=", ?::vector", param=PgVector)


def search_sql(table: str, dimension: int, *, chunks: bool, exact: bool) -> str:
    """The nearest rows of one scope by cosine distance; named parameters `tenant`,
    `embedder`, `query`, `k` and, for chunks, `collections`. `exact` orders by an expression
    the HNSW index cannot serve, so every row of the scope is compared."""
    size = int(dimension)
    distance = f"(embedding::vector({size})) <=> %(query)s::vector({size})"
    return (
        f"SELECT id, {distance} AS distance FROM {table} WHERE {scope_sql(dimension, chunks)} "
        f"ORDER BY {f'({distance}) + 0' if exact else 'distance'} LIMIT %(k)s"
    )


def scope_sql(dimension: int, chunks: bool) -> str:
    """The rows a search may return: the tenant's, of the embedder and size, with `embedding`
    (and, for chunks, in the collections)."""
    where = (
        f"tenant_id = %(tenant)s AND embedder = %(embedder)s AND dimension = {int(dimension)} "
        "AND embedding IS NOT NULL"
    )
    return where + (" AND collection = ANY(%(collections)s)" if chunks else "")


def index_name(table: str, dimension: int) -> str:
    """The HNSW index of `table` for vectors of `dimension`."""
    return f"{table}_hnsw_{int(dimension)}"


class PgVectors:
    """What one store knows of pgvector in its database, and the statements that use it. The
    methods run on a store thread with a pool connection in autocommit mode."""

    def __init__(self, *, ef_search: int = EF_SEARCH) -> None:
        if not 1 <= ef_search <= EXACT_ABOVE_K:
            raise UsageError(
                f"ef_search is {ef_search}: pgvector takes 1 to {EXACT_ABOVE_K}",
                field="ef_search",
            )
        self.ef_search = ef_search  # candidates an HNSW scan keeps (at least k)
        self.lock = threading.Lock()  # held while setting up and adding indexes
        self.in_use: bool | None = None  # None: not asked yet
        self.version = ""
        self.iterative = False
        self.dimensions: set[int] = set()  # sizes whose indexes exist
        self.caught_up = 0.0  # time.monotonic() of the last look for rows without `embedding`

    def prepare(self, con: psycopg.Connection[Any], dimension: int | None) -> bool:
        """Set pgvector up on first use and make the indexes of `dimension`; whether it is in
        use. Any failure but a lost connection turns it off for this store (logged)."""
        with self.lock:
            try:
                if self.in_use is None:
                    self.in_use = self._set_up(con)
                if (
                    self.in_use
                    and dimension is not None
                    and _indexed(dimension)
                    and dimension not in self.dimensions
                ):
                    with _advisory_lock(con):
                        self._add_indexes(con, dimension)
            except psycopg.OperationalError:
                raise
            except psycopg.Error as exc:
                log.warning(
                    "pgvector could not be set up (%s): memory is searched exactly instead",
                    exc,
                    extra={"action": "pgvector_failed"},
                )
                self.in_use = False
            return bool(self.in_use)

    def search(
        self,
        con: psycopg.Connection[Any],
        tenant_id: str,
        collections: Sequence[str] | None,
        embedder: str,
        query: bytes,
        dimension: int,
        k: int,
    ) -> list[tuple[int, float]]:
        """(id, cosine similarity) of the `k` nearest rows, best first."""
        chunks = collections is not None
        table = "memory_chunks" if chunks else "memory_episodes"
        params: dict[str, Any] = {
            "tenant": tenant_id,
            "embedder": embedder,
            "query": PgVector(query),
            "k": k,
            "collections": list(collections or ()),
        }
        approximate = k <= EXACT_ABOVE_K
        try:
            if time.monotonic() - self.caught_up > CATCH_UP_SECONDS:
                self.caught_up = time.monotonic()
                for each in TABLES:
                    self._fill(con, each)
            with con.transaction():
                if approximate:
                    settings = f"SET LOCAL hnsw.ef_search = {max(self.ef_search, k)}"
                    if self.iterative:
                        settings += "; SET LOCAL hnsw.iterative_scan = relaxed_order"
                    con.execute(settings)
                sql = search_sql(table, dimension, chunks=chunks, exact=not approximate)
                rows = con.execute(sql, params).fetchall()
                if approximate and len(rows) < k:
                    # The scan gave up before k matches (hnsw.max_scan_tuples): a small scope in
                    # a large index. Its rows are few, so compare them all.
                    held = con.execute(
                        f"SELECT count(*) FROM {table} WHERE {scope_sql(dimension, chunks)}",
                        params,
                    ).fetchone()
                    if held is not None and int(held[0]) > len(rows):
                        exact = search_sql(table, dimension, chunks=chunks, exact=True)
                        rows = con.execute(exact, params).fetchall()
        except psycopg.OperationalError:
            raise
        except psycopg.Error as exc:
            raise StoreError(f"database error in a pgvector search: {exc}") from exc
        # relaxed_order may return neighbours slightly out of order.
        return sorted(((int(i), 1.0 - float(d)) for i, d in rows), key=lambda r: (-r[1], r[0]))

    # -- setting up ---------------------------------------------------------------------------

    def _set_up(self, con: psycopg.Connection[Any]) -> bool:
        row = con.execute(
            "SELECT installed_version FROM pg_available_extensions WHERE name = 'vector'"
        ).fetchone()
        if row is None:
            log.info(
                "pgvector is not installed on this PostgreSQL server: memory is searched "
                "exactly in each process (install pgvector for an HNSW index)",
                extra={"action": "pgvector_absent"},
            )
            return False
        with _advisory_lock(con):
            if row[0] is None:
                try:
                    con.execute("CREATE EXTENSION IF NOT EXISTS vector")
                except psycopg.errors.InsufficientPrivilege as exc:
                    log.warning(
                        "pgvector is installed on the server but this role may not create the "
                        "extension (%s): memory is searched exactly in each process. Fix: run "
                        "CREATE EXTENSION vector in this database as its owner or a superuser",
                        exc,
                        extra={"action": "pgvector_refused"},
                    )
                    return False
            found = con.execute(
                "SELECT extversion FROM pg_extension WHERE extname = 'vector'"
            ).fetchone()
            self.version = str(found[0]) if found else ""
            if _version(self.version) < HNSW_VERSION:
                log.warning(
                    "pgvector %s has no HNSW index (0.5.0 and later have): memory is searched "
                    "exactly in each process. Fix: ALTER EXTENSION vector UPDATE",
                    self.version,
                    extra={"action": "pgvector_too_old"},
                )
                return False
            self.iterative = _version(self.version) >= ITERATIVE_SCAN_VERSION
            for table in TABLES:
                if not _has_column(con, table, "embedding"):
                    # MAIN: kept in the row, so a search reads it without a TOAST lookup (the
                    # `vector` bytes are moved out instead, when the row is too long).
                    con.execute(
                        f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS embedding vector, "
                        "ALTER COLUMN embedding SET STORAGE MAIN"
                    )
                filled = self._fill(con, table)
                if filled:
                    log.info(
                        "pgvector: filled the embedding of %d rows of %s",
                        filled,
                        table,
                        extra={"action": "pgvector_filled"},
                    )
                    # Every row was rewritten: without fresh statistics the planner may scan
                    # them all instead of using the index (300 ms against 8 at 100k rows).
                    con.execute(f"ANALYZE {table}")
                if not _exists(con, f"{table}_unembedded"):
                    con.execute(
                        f"CREATE INDEX IF NOT EXISTS {table}_unembedded ON {table} (id) "
                        "WHERE embedding IS NULL AND vector IS NOT NULL"
                    )
            sizes = {
                int(size)
                for table in TABLES
                for (size,) in con.execute(
                    f"SELECT DISTINCT dimension FROM {table} WHERE dimension IS NOT NULL"
                ).fetchall()
            }
            for size in sorted(sizes):
                if _indexed(size):
                    self._add_indexes(con, size)
        self.caught_up = time.monotonic()
        log.info(
            "pgvector %s in use for memory search (HNSW indexes for %s dimensions)",
            self.version,
            ", ".join(map(str, sorted(self.dimensions))) or "no",
            extra={"action": "pgvector_ready"},
        )
        return True

    def _add_indexes(self, con: psycopg.Connection[Any], dimension: int) -> None:
        for table in TABLES:
            name = index_name(table, dimension)
            if _exists(con, name):
                continue
            started = time.monotonic()
            with con.transaction():
                con.execute(f"SET LOCAL maintenance_work_mem = '{BUILD_MEMORY}'")
                con.execute(
                    f"CREATE INDEX IF NOT EXISTS {name} ON {table} USING hnsw "
                    f"((embedding::vector({dimension})) vector_cosine_ops) "
                    f"WHERE dimension = {dimension}"
                )
            log.info(
                "pgvector: built %s in %.1fs",
                name,
                time.monotonic() - started,
                extra={"action": "pgvector_index_built"},
            )
        self.dimensions.add(dimension)

    def _fill(self, con: psycopg.Connection[Any], table: str) -> int:
        """Set `embedding` from `vector` where it is missing; the rows filled."""
        filled, after = 0, 0
        while True:
            rows = con.execute(
                f"SELECT id, vector FROM {table} WHERE embedding IS NULL AND vector IS NOT NULL "
                "AND id > %s ORDER BY id LIMIT %s",
                (after, FILL_BATCH),
            ).fetchall()
            if not rows:
                return filled
            with con.transaction(), con.cursor() as cur:
                cur.executemany(
                    f"UPDATE {table} SET embedding = %s::vector WHERE id = %s "
                    "AND embedding IS NULL",
                    [(PgVector(vector), row_id) for row_id, vector in rows],
                )
            filled += len(rows)
            after = int(rows[-1][0])


class PgVectorStore(MemoryStore):
    """The pgvector part of `PostgresStore` (see the module's docstring)."""

    _threads: ThreadPoolExecutor
    _vectors: PgVectors

    @abstractmethod
    def _admin(self, fn: Callable[[psycopg.Connection[Any]], T]) -> T:
        """Run `fn` on a pool connection, on the calling thread."""

    async def _memory_embedding(self, dimension: int | None) -> EmbeddingColumn:
        return PG_EMBEDDING if await self._pgvector(dimension) else NO_EMBEDDING

    async def memory_vector_search(
        self,
        tenant_id: str,
        collections: Sequence[str] | None,
        embedder: str,
        query: bytes,
        dimension: int,
        k: int,
    ) -> list[tuple[int, float]] | None:
        """(row id, cosine similarity), best first, of the `k` rows nearest `query` by the HNSW
        index of `dimension`; None where pgvector is not in use or has no index of that size."""
        if dimension < 1 or len(query) != 4 * dimension:
            raise UsageError(
                f"the query vector holds {len(query)} bytes, not {dimension} float32 values: "
                "embed the query with the embedder whose dimension you pass",
                field="query",
            )
        if not _indexed(dimension) or not await self._pgvector(dimension):
            return None
        if k < 1 or (collections is not None and not collections):
            return []
        vectors = self._vectors
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._threads,
            self._admin,
            lambda con: vectors.search(con, tenant_id, collections, embedder, query, dimension, k),
        )

    async def _pgvector(self, dimension: int | None) -> bool:
        """Whether pgvector is in use here (set up on the first call), with the indexes of
        `dimension` made."""
        vectors = self._vectors
        if vectors.in_use is False:
            return False
        if vectors.in_use and (
            dimension is None or dimension in vectors.dimensions or not _indexed(dimension)
        ):
            return True
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._threads, self._admin, lambda con: vectors.prepare(con, dimension)
        )


def _indexed(dimension: int) -> bool:
    return 0 < dimension <= HNSW_MAX_DIMENSION


def _version(text: str) -> tuple[int, ...]:
    parts = []
    for part in text.split("."):
        digits = "".join(c for c in part if c.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def _exists(con: psycopg.Connection[Any], name: str) -> bool:
    row = con.execute("SELECT to_regclass(%s) IS NOT NULL", (name,)).fetchone()
    return bool(row and row[0])


def _has_column(con: psycopg.Connection[Any], table: str, column: str) -> bool:
    row = con.execute(
        "SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass(%s) AND attname = %s "
        "AND NOT attisdropped",
        (table, column),
    ).fetchone()
    return row is not None


@contextlib.contextmanager
def _advisory_lock(con: psycopg.Connection[Any]) -> Iterator[None]:
    con.execute("SELECT pg_advisory_lock(%s)", (VECTOR_LOCK_KEY,))
    try:
        yield
    finally:
        con.execute("SELECT pg_advisory_unlock(%s)", (VECTOR_LOCK_KEY,))


__all__ = ["PgVectorStore", "PgVectors", "search_sql"]
