"""Recall: search episodic and semantic memory, and merge them with the job's working memory.

Where the store has a vector index of its own (PostgreSQL with pgvector:
`Store.memory_vector_search`), vectors are searched there, and only the rows found are read.
Elsewhere they are searched exactly: each process keeps, per tenant and scope (a set of
collections, or the episodes), a float32 matrix of the rows of the current embedder, refreshed
when the stored rows change (a count and highest-id check per search; new rows are appended,
anything else reloads). A query is one matrix-vector product. Without an embedder, or for rows
stored without vectors, ranking is lexical BM25 over the same rows, and the result says so.

`Recall.recall` queries the three tiers concurrently and orders the merged hits by relevance,
recency and importance (`domain.memory.Weights`), keeping what fits a token budget.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from stalwart.domain.memory import (
    EPISODE_K,
    EPISODE_MIN_SIMILARITY,
    KNOWLEDGE_K,
    KNOWLEDGE_MIN_SIMILARITY,
    MemoryHit,
    MemoryRow,
    Weights,
    recency,
    score,
    within_budget,
)
from stalwart.domain.memory_text import Bm25Index
from stalwart.llm.tokens import estimate_tokens

if TYPE_CHECKING:
    from stalwart.engine.memory import MemoryItem
    from stalwart.llm.embeddings import Embedder, EmbedScope
    from stalwart.store.base import Store

LEXICAL_NOTE = "no embedder is installed: ranked lexically (BM25)"
EVERY_ROW = 2**31 - 1  # a k that ranks every row of a scope


@dataclass
class _Index:
    """One scope: the version of its stored rows and, once a search needs them in memory (the
    store has no vector index, or the scope no vectors of the embedder), the rows, the vectors
    of the current embedder and the texts."""

    tenant_id: str
    collections: tuple[str, ...] | None
    stored: tuple[int, int] = (0, 0)  # (rows, highest id) in the store at the last search
    in_store: bool | None = None  # the store's index serves this scope (None: ask it)
    version: tuple[int, int] = (0, 0)  # what `rows` hold
    rows: list[MemoryRow] = field(default_factory=list)
    matrix: np.ndarray | None = None  # rows with a vector of the embedder, stacked
    with_vector: list[int] = field(default_factory=list)  # their positions in `rows`
    bm25: Bm25Index | None = None


@dataclass(frozen=True, slots=True)
class RecallResult:
    """What `recall` found, and how."""

    hits: list[MemoryHit]
    method: str  # "vector" or "bm25"
    notes: list[str]
    tokens: int

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "method": self.method,
            "notes": self.notes,
            "tokens": self.tokens,
            "hits": [h.as_dict() for h in self.hits],
        }


class Recall:
    """Searches a tenant's memory. One per process (it holds the search caches); safe to share
    between tasks."""

    def __init__(
        self,
        store: Store,
        embedder: Embedder | None,
        *,
        weights: Weights | None = None,
        max_cached_scopes: int = 64,
    ) -> None:
        self.store = store
        self.embedder = embedder
        self.weights = weights or Weights()
        self.max_cached_scopes = max_cached_scopes
        self._indexes: dict[tuple[str, tuple[str, ...] | None], _Index] = {}
        self._locks: dict[tuple[str, tuple[str, ...] | None], asyncio.Lock] = {}
        self._store_searches = True  # until the store says it has no index for our vectors

    @property
    def method(self) -> str:
        """How this process ranks: "vector" with an embedder, else "bm25"."""
        return "vector" if self.embedder is not None else "bm25"

    @property
    def notes(self) -> list[str]:
        """What a result should say about how it was ranked."""
        return [] if self.embedder is not None else [LEXICAL_NOTE]

    # -- the tiers --------------------------------------------------------------------------------

    async def knowledge(
        self,
        tenant_id: str,
        query: str,
        *,
        collections: Sequence[str] | None = None,
        k: int = KNOWLEDGE_K,
        min_similarity: float = KNOWLEDGE_MIN_SIMILARITY,
        scope: EmbedScope | None = None,
    ) -> list[MemoryHit]:
        """The best chunks of the tenant's collections (all of them by default)."""
        names = (
            sorted(collections)
            if collections is not None
            else [c.name for c in await self.store.memory_collections(tenant_id)]
        )
        if not names:
            return []
        index = await self._index(tenant_id, tuple(names))
        return await self._search(index, query, k, min_similarity, scope)

    async def episodes(
        self,
        tenant_id: str,
        query: str,
        *,
        k: int = EPISODE_K,
        min_similarity: float = EPISODE_MIN_SIMILARITY,
        workflow: str | None = None,
        exclude_job: str | None = None,
        scope: EmbedScope | None = None,
    ) -> list[MemoryHit]:
        """The past episodes most like `query` (of one workflow, when given)."""
        index = await self._index(tenant_id, None)
        wanted = k + (1 if exclude_job else 0)
        hits = await self._search(
            index,
            query,
            EVERY_ROW if workflow else wanted,
            min_similarity,
            scope,
        )
        out = [
            h
            for h in hits
            if (workflow is None or h.meta.get("workflow") == workflow)
            and h.meta.get("job") != exclude_job
        ]
        return out[:k]

    def working(self, query: str, items: Sequence[MemoryItem], now: float) -> list[MemoryHit]:
        """The job's own context, ranked lexically against `query` (it is small and current:
        recency 1, importance 1)."""
        if not items:
            return []
        bm25 = Bm25Index([f"{i.label} {i.text}" for i in items])
        found = dict(bm25.search(query, len(items)))
        out = []
        for pos, item in enumerate(items):
            relevance = found.get(pos, 0.0)
            out.append(
                MemoryHit(
                    tier="working",
                    ref=f"context:{item.label}",
                    text=item.text,
                    relevance=relevance,
                    recency=1.0,
                    importance=1.0,
                    score=score(relevance, 1.0, 1.0, self.weights),
                    tokens=item.tokens,
                    method="context",
                )
            )
        return out

    async def recall(
        self,
        tenant_id: str,
        query: str,
        *,
        working: Sequence[MemoryItem] = (),
        collections: Sequence[str] | None = None,
        budget_tokens: int = 1500,
        episode_k: int = EPISODE_K,
        knowledge_k: int = KNOWLEDGE_K,
        exclude_job: str | None = None,
        scope: EmbedScope | None = None,
    ) -> RecallResult:
        """Working, episodic and semantic memory queried at once, merged by score, cut to
        `budget_tokens` (the share of the prompt this recall may fill)."""
        now = time.time()
        episodic, semantic = await asyncio.gather(
            self.episodes(tenant_id, query, k=episode_k, exclude_job=exclude_job, scope=scope),
            self.knowledge(tenant_id, query, collections=collections, k=knowledge_k, scope=scope),
        )
        merged = [*self.working(query, working, now), *episodic, *semantic]
        kept = within_budget(merged, budget_tokens)
        return RecallResult(
            hits=kept, method=self.method, notes=self.notes, tokens=sum(h.tokens for h in kept)
        )

    # -- searching one scope ----------------------------------------------------------------------

    async def _index(self, tenant_id: str, collections: tuple[str, ...] | None) -> _Index:
        key = (tenant_id, collections)
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            index = self._indexes.pop(key, None) or _Index(tenant_id, collections)
            self._indexes[key] = index  # most recently used last
            while len(self._indexes) > self.max_cached_scopes:
                oldest = next(iter(self._indexes))
                self._indexes.pop(oldest)
                self._locks.pop(oldest, None)
            if index.in_store:
                # The store's index serves this scope: nothing held here can go stale, and
                # counting the rows (the version) would cost more than the search at 100k.
                return index
            version = await self.store.memory_version(tenant_id, collections)
            if version != index.stored:
                index.stored = version
                index.in_store = None  # vectors of the embedder may have come or gone
            return index

    async def _load(self, index: _Index) -> None:
        """Bring the scope's rows in memory up to the stored version."""
        lock = self._locks.setdefault((index.tenant_id, index.collections), asyncio.Lock())
        async with lock:
            if index.version != index.stored:
                await self._refresh(index, index.stored)

    async def _refresh(self, index: _Index, version: tuple[int, int]) -> None:
        tenant_id, collections = index.tenant_id, index.collections
        count, _ = index.version
        grown = version[0] - count
        appended = index.rows and grown > 0 and version[1] > index.version[1]
        after = index.rows[-1].id if appended else 0
        new: list[MemoryRow] = []
        while True:
            batch = (
                await self.store.episode_rows(tenant_id, after_id=after)
                if collections is None
                else await self.store.memory_chunk_rows(tenant_id, collections, after_id=after)
            )
            new += batch
            if len(batch) < 5000:
                break
            after = batch[-1].id
        rows = (index.rows + new) if appended else new
        if appended and len(rows) != version[0]:  # rows also went away: read everything
            index.rows, index.version = [], (0, 0)
            await self._refresh(index, version)
            return
        index.rows = rows
        index.version = version
        index.bm25 = None
        name = self.embedder.name if self.embedder is not None else None
        positions = [i for i, r in enumerate(rows) if r.vector is not None and r.embedder == name]
        index.with_vector = positions
        if positions and name is not None:
            index.matrix = np.vstack(
                [np.frombuffer(rows[i].vector or b"", dtype=np.float32) for i in positions]
            )
        else:
            index.matrix = None

    async def _search(
        self,
        index: _Index,
        query: str,
        k: int,
        min_similarity: float,
        scope: EmbedScope | None,
    ) -> list[MemoryHit]:
        if not index.stored[0] or k <= 0:
            return []
        now = time.time()
        vector: np.ndarray | None = None
        if self.embedder is not None and self._store_searches and index.in_store is not False:
            vector = await self._embed(query, scope, index.tenant_id)
            in_store = await self._store_search(index, vector, k, min_similarity)
            if in_store is not None:
                return [self._hit(row, sim, "vector", now) for row, sim in in_store]
        await self._load(index)
        if not index.rows:
            return []
        found: list[tuple[int, float, str]] = []  # (position, relevance, method)
        if self.embedder is not None and index.matrix is not None:
            if vector is None:
                vector = await self._embed(query, scope, index.tenant_id)
            sims = index.matrix @ vector
            top = min(k, len(sims))
            best = np.argpartition(-sims, top - 1)[:top]
            for j in best[np.argsort(-sims[best])]:
                if float(sims[j]) >= min_similarity:
                    found.append((index.with_vector[int(j)], float(sims[j]), "vector"))
        else:
            if index.bm25 is None:
                index.bm25 = Bm25Index([r.text for r in index.rows])
            found = [(pos, rel, "bm25") for pos, rel in index.bm25.search(query, k)]
        return [self._hit(index.rows[pos], rel, method, now) for pos, rel, method in found]

    async def _embed(self, query: str, scope: EmbedScope | None, tenant_id: str) -> np.ndarray:
        """The query's vector; an embedding that costs money is charged to the searching tenant
        (`scope`, else the tenant's budgets outside any job)."""
        assert self.embedder is not None
        from stalwart.llm.embeddings import EmbedScope

        rows = await self.embedder.embed([query], scope or EmbedScope(tenant_id=tenant_id))
        return np.ascontiguousarray(rows[0], dtype=np.float32)

    async def _store_search(
        self, index: _Index, vector: np.ndarray, k: int, min_similarity: float
    ) -> list[tuple[MemoryRow, float]] | None:
        """The scope's best rows by the store's own vector index, with their similarity; None
        when it has none for our vectors, or the scope holds no vectors of our embedder (then
        the rows are searched in memory)."""
        assert self.embedder is not None
        found = await self.store.memory_vector_search(
            index.tenant_id,
            index.collections,
            self.embedder.name,
            vector.tobytes(),
            self.embedder.dimension,
            k,
        )
        if found is None:
            self._store_searches = False  # the answer holds for this embedder's vectors
            return None
        if not found:
            if index.in_store:  # its version was not read while the store served it
                index.stored = await self.store.memory_version(index.tenant_id, index.collections)
            index.in_store = False
            return None
        index.in_store = True
        kept = [(row_id, sim) for row_id, sim in found if sim >= min_similarity]
        rows = await self.store.memory_rows_get(
            index.tenant_id, index.collections, [row_id for row_id, _ in kept]
        )
        by_id = {row.id: row for row in rows}
        # A row removed since the search is left out.
        return [(by_id[row_id], sim) for row_id, sim in kept if row_id in by_id]

    def _hit(self, row: MemoryRow, relevance: float, method: str, now: float) -> MemoryHit:
        rec = recency(row.created, now, self.weights.half_life_days)
        return MemoryHit(
            tier=row.tier,
            ref=row.ref,
            text=row.text,
            relevance=relevance,
            recency=rec,
            importance=row.importance,
            score=score(relevance, rec, row.importance, self.weights),
            tokens=row.tokens or estimate_tokens(row.text),
            method=method,
            meta=row.meta,
        )
