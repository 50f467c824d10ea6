"""Memory rows on both backends: knowledge collections, their documents and chunks, and the
episodes finished jobs leave. Every statement names the tenant; nothing here reads across
tenants except the episode indexer's scan of finished jobs. Mixed into `SqlStore`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from stalwart.domain.memory import (
    EPISODE_OUTCOMES,
    CollectionRecord,
    DocumentRecord,
    EpisodeRecord,
    MemoryRow,
    NewDocument,
    NewEpisode,
    Vector,
)
from stalwart.errors import NotFoundError, UsageError
from stalwart.store.sql.base import SqlBase
from stalwart.store.sql.rows import loads
from stalwart.store.sql.tx import Tx
from stalwart.types import dumps

DAY = 86400.0
# Memory tables in the order a tenant's erase empties them (children first).
MEMORY_TABLES = ("memory_chunks", "memory_documents", "memory_collections", "memory_episodes")
EPISODE_COLUMNS = (
    "id, tenant_id, job_id, workflow, outcome, summary, details, cost_usd, importance, finished, "
    "embedder"
)


@dataclass(frozen=True, slots=True)
class EmbeddingColumn:
    """What a backend's own vector index adds to the INSERT of a chunk or an episode: nothing
    here (`NO_EMBEDDING`); PostgreSQL with pgvector fills its `embedding` column
    (`store/postgres/vectors.py`)."""

    column: str = ""  # ", embedding"
    mark: str = ""  # ", ?::vector"
    param: Callable[[bytes], object] | None = None  # float32 bytes -> the column's parameter

    def values(self, vector: Vector | None) -> tuple[object, ...]:
        """The extra parameter of a row holding `vector` (none without the column)."""
        if self.param is None:
            return ()
        return (self.param(vector.data) if vector is not None else None,)


NO_EMBEDDING = EmbeddingColumn()


def _collection(row: Sequence[Any]) -> CollectionRecord:
    return CollectionRecord(
        tenant_id=row[0],
        name=row[1],
        embedder=row[2],
        dimension=int(row[3]) if row[3] is not None else None,
        retention_days=float(row[4]) if row[4] is not None else None,
        created=float(row[5]),
        documents=int(row[6] or 0) if len(row) > 6 else 0,
        chunks=int(row[7] or 0) if len(row) > 7 else 0,
    )


def _chunk_row(r: Sequence[Any]) -> MemoryRow:
    """A chunk as a search reads it, from (id, collection, source, seq, text, tokens, created,
    importance, embedder[, vector])."""
    vector = r[9] if len(r) > 9 else None
    return MemoryRow(
        id=int(r[0]),
        tier="semantic",
        ref=f"chunk:{r[1]}/{r[2]}#{r[3]}",
        text=r[4],
        tokens=int(r[5]),
        created=float(r[6]),
        importance=float(r[7]),
        embedder=r[8],
        vector=bytes(vector) if vector is not None else None,
        meta={"collection": r[1], "source": r[2], "seq": int(r[3])},
    )


def _episode_row(r: Sequence[Any]) -> MemoryRow:
    """An episode as a search reads it, from (id, job, workflow, outcome, summary, finished,
    importance, embedder[, vector])."""
    vector = r[8] if len(r) > 8 else None
    return MemoryRow(
        id=int(r[0]),
        tier="episodic",
        ref=f"episode:{r[1]}",
        text=r[4],
        tokens=0,
        created=float(r[5]),
        importance=float(r[6]),
        embedder=r[7],
        vector=bytes(vector) if vector is not None else None,
        meta={"job": r[1], "workflow": r[2], "outcome": r[3], "finished": float(r[5])},
    )


def _episode(row: Sequence[Any]) -> EpisodeRecord:
    details = loads(row[6], f"details of episode {row[0]}")
    return EpisodeRecord(
        id=int(row[0]),
        tenant_id=row[1],
        job_id=row[2],
        workflow=row[3],
        outcome=row[4],
        summary=row[5],
        details=details if isinstance(details, dict) else {},
        cost_usd=float(row[7]),
        importance=float(row[8]),
        finished=float(row[9]),
        embedder=row[10],
    )


class MemoryStore(SqlBase):
    """Collections, documents, chunks and episodes (mixed into `SqlStore`)."""

    # -- collections and documents ----------------------------------------------------------------

    async def memory_document_put(
        self,
        doc: NewDocument,
        *,
        embedder: str | None,
        dimension: int | None,
        retention_days: float | None = None,
    ) -> DocumentRecord:
        """Store a document and its chunks in one transaction, creating the collection on first
        use. The same source added again replaces its chunks. A collection keeps the embedder
        and dimension of its first document: another one is refused (`UsageError`, field
        `embedder`), so vectors of different spaces never mix."""
        for chunk in doc.chunks:
            if chunk.vector is not None and (
                chunk.vector.embedder != embedder or chunk.vector.dimension != dimension
            ):
                raise UsageError(
                    f"chunk {chunk.seq} of {doc.source} has a {chunk.vector.dimension}-dimension "
                    f"vector of {chunk.vector.embedder}, not of the document's embedder "
                    f"{embedder} ({dimension})",
                    field="embedder",
                )
        emb = await self._memory_embedding(dimension)

        def run(tx: Tx) -> DocumentRecord:
            _ensure_collection(tx, doc, embedder, dimension, retention_days)
            tx.con.execute(
                "DELETE FROM memory_documents WHERE tenant_id = ? AND collection = ? "
                "AND source = ?",
                (doc.tenant_id, doc.collection, doc.source),
            )
            row = tx.con.execute(
                "INSERT INTO memory_documents (tenant_id, collection, source, digest, importance, "
                "created) VALUES (?,?,?,?,?,?) RETURNING id",
                (doc.tenant_id, doc.collection, doc.source, doc.digest, doc.importance, tx.now),
            ).fetchone()
            doc_id = int(row[0])
            tx.con.executemany(
                "INSERT INTO memory_chunks (tenant_id, collection, document_id, seq, text, tokens, "
                f"embedder, dimension, vector, created{emb.column}) "
                f"VALUES (?,?,?,?,?,?,?,?,?,?{emb.mark})",
                [
                    (
                        doc.tenant_id,
                        doc.collection,
                        doc_id,
                        c.seq,
                        c.text,
                        c.tokens,
                        c.vector.embedder if c.vector else None,
                        c.vector.dimension if c.vector else None,
                        c.vector.data if c.vector else None,
                        tx.now,
                        *emb.values(c.vector),
                    )
                    for c in doc.chunks
                ],
            )
            return DocumentRecord(
                id=doc_id,
                tenant_id=doc.tenant_id,
                collection=doc.collection,
                source=doc.source,
                digest=doc.digest,
                chunks=len(doc.chunks),
                created=tx.now,
            )

        return await self._write("memory", run)

    async def memory_collection(self, tenant_id: str, name: str) -> CollectionRecord:
        """One collection with its counts; `NotFoundError` when the tenant has none of that
        name."""
        found = await self._collections(tenant_id, name)
        if not found:
            raise NotFoundError(f"tenant {tenant_id!r} has no memory collection {name!r}")
        return found[0]

    async def memory_collections(self, tenant_id: str) -> list[CollectionRecord]:
        """The tenant's collections, by name, with their document and chunk counts."""
        return await self._collections(tenant_id)

    async def _collections(self, tenant_id: str, name: str | None = None) -> list[CollectionRecord]:
        one = " AND c.name = ?" if name is not None else ""
        rows = await self._read(
            "SELECT c.tenant_id, c.name, c.embedder, c.dimension, c.retention_days, c.created, "
            "(SELECT count(*) FROM memory_documents d WHERE d.tenant_id = c.tenant_id "
            "AND d.collection = c.name), "
            "(SELECT count(*) FROM memory_chunks k WHERE k.tenant_id = c.tenant_id "
            f"AND k.collection = c.name) FROM memory_collections c WHERE c.tenant_id = ?{one} "
            "ORDER BY c.name",
            (tenant_id,) if name is None else (tenant_id, name),
        )
        return [_collection(r) for r in rows]

    async def memory_documents(self, tenant_id: str, collection: str) -> list[DocumentRecord]:
        """The collection's documents, by source."""
        rows = await self._read(
            "SELECT d.id, d.tenant_id, d.collection, d.source, d.digest, "
            "(SELECT count(*) FROM memory_chunks k WHERE k.document_id = d.id), d.created "
            "FROM memory_documents d WHERE d.tenant_id = ? AND d.collection = ? ORDER BY d.source",
            (tenant_id, collection),
        )
        return [
            DocumentRecord(
                id=int(r[0]),
                tenant_id=r[1],
                collection=r[2],
                source=r[3],
                digest=r[4],
                chunks=int(r[5]),
                created=float(r[6]),
            )
            for r in rows
        ]

    async def memory_forget(
        self, tenant_id: str, collection: str, source: str | None = None
    ) -> dict[str, int]:
        """Remove one source of a collection, or (without `source`) the whole collection; the
        rows removed, by table. `NotFoundError` when there was nothing of that name."""

        def run(tx: Tx) -> dict[str, int]:
            scope = "tenant_id = ? AND collection = ?"
            params: tuple[Any, ...] = (tenant_id, collection)
            if source is not None:
                scope += " AND source = ?"
                params += (source,)
            chunks = tx.con.execute(
                "DELETE FROM memory_chunks WHERE document_id IN "
                f"(SELECT id FROM memory_documents WHERE {scope})",
                params,
            ).rowcount
            documents = tx.con.execute(f"DELETE FROM memory_documents WHERE {scope}", params)
            out = {"memory_chunks": chunks, "memory_documents": documents.rowcount}
            if source is None:
                out["memory_collections"] = tx.con.execute(
                    "DELETE FROM memory_collections WHERE tenant_id = ? AND name = ?",
                    (tenant_id, collection),
                ).rowcount
            if not any(out.values()):
                what = f"source {source!r} in " if source is not None else ""
                raise NotFoundError(
                    f"tenant {tenant_id!r} has no {what}memory collection {collection!r}"
                )
            return out

        return await self._write("memory", run)

    async def memory_erase_tenant(self, tenant_id: str) -> dict[str, int]:
        """Remove every memory row of a tenant, in one transaction; the rows removed, by
        table."""

        def run(tx: Tx) -> dict[str, int]:
            return {
                table: tx.con.execute(
                    f"DELETE FROM {table} WHERE tenant_id = ?", (tenant_id,)
                ).rowcount
                for table in MEMORY_TABLES
            }

        return await self._write("memory", run)

    async def memory_count(self, tenant_id: str) -> dict[str, int]:
        """The tenant's memory rows, by table."""
        out: dict[str, int] = {}
        for table in MEMORY_TABLES:
            rows = await self._read(
                f"SELECT count(*) FROM {table} WHERE tenant_id = ?", (tenant_id,)
            )
            out[table] = int(rows[0][0])
        return out

    async def memory_prune(self) -> int:
        """Remove the documents older than their collection's retention; the documents
        removed."""

        def run(tx: Tx) -> int:
            expired = (
                "(SELECT d.id FROM memory_documents d JOIN memory_collections c ON "
                "c.tenant_id = d.tenant_id AND c.name = d.collection WHERE "
                "c.retention_days IS NOT NULL AND d.created < ? - c.retention_days * ?)"
            )
            tx.con.execute(
                f"DELETE FROM memory_chunks WHERE document_id IN {expired}", (tx.now, DAY)
            )
            return int(
                tx.con.execute(
                    f"DELETE FROM memory_documents WHERE id IN {expired}", (tx.now, DAY)
                ).rowcount
            )

        return await self._write("memory", run)

    # -- reading for search -----------------------------------------------------------------------

    async def memory_version(
        self, tenant_id: str, collections: Sequence[str] | None
    ) -> tuple[int, int]:
        """(rows, highest id) of the tenant's chunks in `collections`, or of its episodes when
        `collections` is None: a search's cache is stale when this changes."""
        if collections is None:
            rows = await self._read(
                "SELECT count(*), coalesce(max(id), 0) FROM memory_episodes WHERE tenant_id = ?",
                (tenant_id,),
            )
        else:
            if not collections:
                return (0, 0)
            marks = ",".join("?" * len(collections))
            rows = await self._read(
                "SELECT count(*), coalesce(max(id), 0) FROM memory_chunks WHERE tenant_id = ? "
                f"AND collection IN ({marks})",
                (tenant_id, *collections),
            )
        return int(rows[0][0]), int(rows[0][1])

    async def memory_chunk_rows(
        self, tenant_id: str, collections: Sequence[str], *, after_id: int = 0, limit: int = 5000
    ) -> list[MemoryRow]:
        """The tenant's chunks in `collections` with an id above `after_id`, by id."""
        if not collections:
            return []
        marks = ",".join("?" * len(collections))
        rows = await self._read(
            "SELECT k.id, k.collection, d.source, k.seq, k.text, k.tokens, k.created, "
            "d.importance, k.embedder, k.vector FROM memory_chunks k JOIN memory_documents d "
            f"ON d.id = k.document_id WHERE k.tenant_id = ? AND k.collection IN ({marks}) "
            "AND k.id > ? ORDER BY k.id LIMIT ?",
            (tenant_id, *collections, after_id, limit),
        )
        return [_chunk_row(r) for r in rows]

    async def episode_rows(
        self, tenant_id: str, *, after_id: int = 0, limit: int = 5000
    ) -> list[MemoryRow]:
        """The tenant's episodes with an id above `after_id`, by id."""
        rows = await self._read(
            "SELECT id, job_id, workflow, outcome, summary, finished, importance, embedder, "
            "vector FROM memory_episodes WHERE tenant_id = ? AND id > ? ORDER BY id LIMIT ?",
            (tenant_id, after_id, limit),
        )
        return [_episode_row(r) for r in rows]

    async def memory_rows_get(
        self, tenant_id: str, collections: Sequence[str] | None, ids: Sequence[int]
    ) -> list[MemoryRow]:
        """The tenant's chunks in `collections` (its episodes when None) of these ids, without
        their vectors, in no particular order; ids of other tenants or collections are
        ignored."""
        if not ids or (collections is not None and not collections):
            return []
        marks = ",".join("?" * len(ids))
        if collections is None:
            rows = await self._read(
                "SELECT id, job_id, workflow, outcome, summary, finished, importance, embedder "
                f"FROM memory_episodes WHERE tenant_id = ? AND id IN ({marks})",
                (tenant_id, *ids),
            )
            return [_episode_row(r) for r in rows]
        names = ",".join("?" * len(collections))
        rows = await self._read(
            "SELECT k.id, k.collection, d.source, k.seq, k.text, k.tokens, k.created, "
            "d.importance, k.embedder FROM memory_chunks k JOIN memory_documents d "
            f"ON d.id = k.document_id WHERE k.tenant_id = ? AND k.collection IN ({names}) "
            f"AND k.id IN ({marks})",
            (tenant_id, *collections, *ids),
        )
        return [_chunk_row(r) for r in rows]

    async def memory_vector_search(
        self,
        tenant_id: str,
        collections: Sequence[str] | None,
        embedder: str,
        query: bytes,
        dimension: int,
        k: int,
    ) -> list[tuple[int, float]] | None:
        """(row id, cosine similarity), best first, of the `k` chunks in `collections` (episodes
        when None) nearest `query`, searched by the database's own vector index; None where
        there is none (here: `engine/recall.py` searches exactly in memory)."""
        return None

    async def _memory_embedding(self, dimension: int | None) -> EmbeddingColumn:
        """Hook: the column that rows written now with vectors of `dimension` fill for the
        database's own vector index, if it has one. None here."""
        return NO_EMBEDDING

    # -- episodes ---------------------------------------------------------------------------------

    async def episode_put(self, episode: NewEpisode) -> bool:
        """Store a job's episode; False when the job has one already (one per job, whoever
        writes it first)."""
        ep = episode
        vec = ep.vector
        emb = await self._memory_embedding(vec.dimension if vec else None)

        def run(tx: Tx) -> bool:
            cur = tx.con.execute(
                "INSERT INTO memory_episodes (tenant_id, job_id, workflow, outcome, summary, "
                "details, cost_usd, importance, finished, embedder, dimension, vector, created"
                f"{emb.column}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?{emb.mark}) "
                "ON CONFLICT (tenant_id, job_id) DO NOTHING",
                (
                    ep.tenant_id,
                    ep.job_id,
                    ep.workflow,
                    ep.outcome,
                    ep.summary,
                    dumps(ep.details),
                    ep.cost_usd,
                    ep.importance,
                    ep.finished,
                    vec.embedder if vec else None,
                    vec.dimension if vec else None,
                    vec.data if vec else None,
                    tx.now,
                    *emb.values(vec),
                ),
            )
            return bool(cur.rowcount)

        return await self._write("memory", run)

    async def episode_get(self, tenant_id: str, job_id: str) -> EpisodeRecord | None:
        """A job's episode, if it has one."""
        rows = await self._read(
            f"SELECT {EPISODE_COLUMNS} FROM memory_episodes WHERE tenant_id = ? AND job_id = ?",
            (tenant_id, job_id),
        )
        return _episode(rows[0]) if rows else None

    async def episodes_get(self, tenant_id: str, ids: Sequence[int]) -> list[EpisodeRecord]:
        """The tenant's episodes of these ids (others' ids are ignored)."""
        if not ids:
            return []
        marks = ",".join("?" * len(ids))
        rows = await self._read(
            f"SELECT {EPISODE_COLUMNS} FROM memory_episodes WHERE tenant_id = ? "
            f"AND id IN ({marks})",
            (tenant_id, *ids),
        )
        return [_episode(r) for r in rows]

    async def episodes_pending(self, since: float, limit: int = 100) -> list[tuple[str, str]]:
        """(tenant, job) of jobs that ended (`EPISODE_OUTCOMES`) at or after `since` and have no
        episode yet, oldest first. A job quarantined as corrupt since its last change
        (`job_quarantined`) is passed over: it would fill every batch again."""
        outcomes = sorted(EPISODE_OUTCOMES)
        marks = ",".join("?" * len(outcomes))
        rows = await self._read(
            "SELECT j.tenant_id, j.id FROM jobs j WHERE j.status IN "
            f"({marks}) AND coalesce(j.finished, j.updated) >= ? AND NOT EXISTS "
            "(SELECT 1 FROM memory_episodes e WHERE e.tenant_id = j.tenant_id AND "
            "e.job_id = j.id) AND NOT EXISTS (SELECT 1 FROM events q WHERE q.job_id = j.id "
            "AND q.kind = 'job_quarantined' AND q.at >= j.updated) "
            "ORDER BY coalesce(j.finished, j.updated), j.id LIMIT ?",
            (*outcomes, since, limit),
        )
        return [(str(r[0]), str(r[1])) for r in rows]


def _ensure_collection(
    tx: Tx,
    doc: NewDocument,
    embedder: str | None,
    dimension: int | None,
    retention_days: float | None,
) -> None:
    row = tx.con.execute(
        "SELECT embedder, dimension FROM memory_collections WHERE tenant_id = ? AND name = ?"
        f"{tx.lock}",
        (doc.tenant_id, doc.collection),
    ).fetchone()
    if row is None:
        tx.con.execute(
            "INSERT INTO memory_collections (tenant_id, name, embedder, dimension, "
            "retention_days, created, updated) VALUES (?,?,?,?,?,?,?) "
            "ON CONFLICT (tenant_id, name) DO NOTHING",
            (doc.tenant_id, doc.collection, embedder, dimension, retention_days, tx.now, tx.now),
        )
        return
    have_embedder, have_dimension = row[0], row[1]
    if (have_embedder, have_dimension) != (embedder, dimension):
        have = f"{have_embedder} ({have_dimension} dimensions)" if have_embedder else "no embedder"
        new = f"{embedder} ({dimension} dimensions)" if embedder else "no embedder"
        raise UsageError(
            f"collection {doc.collection!r} holds vectors of {have}; this document was embedded "
            f"with {new}. Vectors of different embedders cannot be compared: add it with the "
            f"collection's embedder, or forget the collection and add everything again",
            field="embedder",
        )
    if retention_days is not None:
        tx.con.execute(
            "UPDATE memory_collections SET retention_days = ?, updated = ? WHERE tenant_id = ? "
            "AND name = ?",
            (retention_days, tx.now, doc.tenant_id, doc.collection),
        )
