"""`client.memory`: a tenant's knowledge collections and episodes, and recall over them.

```python
await client.memory.add("default", "policies", [Path("refunds.md")])
hits = await client.memory.search("default", "how long do refunds take?")
await client.memory.forget("default", "policies")
```
Every call names its tenant; nothing reads or removes another tenant's rows.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from stalwart.domain.memory import (
    EPISODE_K,
    EPISODE_MIN_SIMILARITY,
    KNOWLEDGE_K,
    KNOWLEDGE_MIN_SIMILARITY,
    CollectionRecord,
    DocumentRecord,
    MemoryHit,
    NewChunk,
    NewDocument,
    Vector,
    check_collection,
    job_query,
)
from stalwart.domain.memory_text import chunk_text, extract_text
from stalwart.engine.recall import Recall, RecallResult
from stalwart.errors import UsageError
from stalwart.llm.tokens import estimate_tokens

if TYPE_CHECKING:
    from stalwart.engine.memory import MemoryItem
    from stalwart.llm.embeddings import Embedder
    from stalwart.settings import Settings
    from stalwart.store.base import Store

MAX_FILE_BYTES = 20 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class SearchResult:
    """Hits of one tier, and how they were ranked."""

    hits: list[MemoryHit]
    method: str
    notes: list[str]


class MemoryApi:
    """Memory operations over one store (reached as `client.memory`)."""

    def __init__(self, store: Store, settings: Settings, recall: Recall) -> None:
        self.store = store
        self.settings = settings
        self._recall = recall

    @property
    def embedder(self) -> Embedder | None:
        """The embedder in use (None: lexical ranking)."""
        return self._recall.embedder

    # -- knowledge ---------------------------------------------------------------------------------

    async def add(
        self,
        tenant: str,
        collection: str,
        files: Sequence[Path | tuple[str, bytes]],
        *,
        retention_days: float | None = None,
        importance: float = 0.5,
    ) -> list[DocumentRecord]:
        """Add text, Markdown or HTML files to a collection: extract, chunk with overlap,
        embed, store. Every file is read and checked before anything is stored; each
        document is stored in its own transaction (the same source again replaces it)."""
        check_collection(collection)
        if retention_days is not None and retention_days <= 0:
            raise UsageError("retention_days must be positive", field="retention_days")
        if not files:
            raise UsageError("name at least one file to add", field="files")
        texts = [self._read(f) for f in files]
        embedder = self.embedder
        out = []
        for source, text in texts:
            pieces = chunk_text(
                text,
                max_tokens=self.settings.memory_chunk_tokens,
                overlap_tokens=self.settings.memory_chunk_overlap,
            )
            vectors: list[Vector | None] = [None] * len(pieces)
            if embedder is not None and pieces:
                from stalwart.llm.embeddings import EmbedScope

                matrix = await embedder.embed(pieces, EmbedScope(tenant_id=tenant))
                vectors = [
                    Vector(embedder.name, embedder.dimension, matrix[i].tobytes())
                    for i in range(len(pieces))
                ]
            doc = NewDocument(
                tenant_id=tenant,
                collection=collection,
                source=source,
                digest=hashlib.sha256(text.encode()).hexdigest(),
                chunks=[
                    NewChunk(seq=n, text=piece, tokens=estimate_tokens(piece), vector=vectors[n])
                    for n, piece in enumerate(pieces)
                ],
                importance=importance,
            )
            out.append(
                await self.store.memory_document_put(
                    doc,
                    embedder=embedder.name if embedder else None,
                    dimension=embedder.dimension if embedder else None,
                    retention_days=retention_days,
                )
            )
        return out

    @staticmethod
    def _read(file: Path | tuple[str, bytes]) -> tuple[str, str]:
        if isinstance(file, tuple):
            name, data = file
        else:
            if not file.is_file():
                raise UsageError(f"{file} is not a readable file", field="files")
            if file.stat().st_size > MAX_FILE_BYTES:
                raise UsageError(
                    f"{file} is over {MAX_FILE_BYTES // (1024 * 1024)} MiB; split it first",
                    field="files",
                )
            name, data = file.name, file.read_bytes()
        text = extract_text(name, data)
        if not text.strip():
            raise UsageError(f"{name} holds no text to remember", field="files")
        return name, text

    async def collections(self, tenant: str) -> list[CollectionRecord]:
        """The tenant's collections with their counts."""
        return await self.store.memory_collections(tenant)

    async def documents(self, tenant: str, collection: str) -> list[DocumentRecord]:
        """A collection's documents (`NotFoundError` for an unknown collection)."""
        await self.store.memory_collection(tenant, check_collection(collection))
        return await self.store.memory_documents(tenant, collection)

    async def forget(
        self, tenant: str, collection: str, source: str | None = None
    ) -> dict[str, int]:
        """Remove one source of a collection, or the whole collection; rows removed."""
        return await self.store.memory_forget(tenant, check_collection(collection), source)

    async def erase(self, tenant: str) -> dict[str, int]:
        """Remove every memory row of the tenant (collections, documents, chunks, episodes)."""
        return await self.store.memory_erase_tenant(tenant)

    # -- search ------------------------------------------------------------------------------------

    async def search(
        self,
        tenant: str,
        query: str,
        *,
        collections: Sequence[str] | None = None,
        k: int = KNOWLEDGE_K,
        min_similarity: float = KNOWLEDGE_MIN_SIMILARITY,
    ) -> SearchResult:
        """The chunks of the tenant's collections most relevant to `query`."""
        _check_query(query, k)
        for name in collections or ():
            check_collection(name)
        hits = await self._recall.knowledge(
            tenant, query, collections=collections, k=k, min_similarity=min_similarity
        )
        return self._result(hits)

    async def episodes(
        self,
        tenant: str,
        query: str,
        *,
        k: int = EPISODE_K,
        min_similarity: float = EPISODE_MIN_SIMILARITY,
        workflow: str | None = None,
        exclude_job: str | None = None,
    ) -> SearchResult:
        """The tenant's past episodes most like `query`."""
        _check_query(query, k)
        hits = await self._recall.episodes(
            tenant,
            query,
            k=k,
            min_similarity=min_similarity,
            workflow=workflow,
            exclude_job=exclude_job,
        )
        return self._result(hits)

    async def similar_to_job(
        self,
        tenant: str,
        job_id: str,
        *,
        k: int = EPISODE_K,
        min_similarity: float = EPISODE_MIN_SIMILARITY,
    ) -> SearchResult:
        """Past episodes of the same workflow most like this job (its input and what its steps
        found so far), excluding its own: what a reviewer or a planner should know ("the last
        two invoices from this vendor were rejected because ...")."""
        from stalwart.engine.episodes import step_outputs

        job = await self.store.job_get(job_id, tenant_id=tenant)
        outputs = await step_outputs(self.store, tenant, job_id)
        return await self.episodes(
            tenant,
            job_query(job.workflow, job.input, outputs),
            k=k,
            min_similarity=min_similarity,
            workflow=job.workflow,
            exclude_job=job_id,
        )

    async def recall(
        self,
        tenant: str,
        query: str,
        *,
        working: Sequence[MemoryItem] = (),
        collections: Sequence[str] | None = None,
        budget_tokens: int | None = None,
    ) -> RecallResult:
        """Working, episodic and semantic memory at once, merged and cut to the budget."""
        _check_query(query, 1)
        return await self._recall.recall(
            tenant,
            query,
            working=working,
            collections=collections,
            budget_tokens=(
                self.settings.memory_recall_tokens if budget_tokens is None else budget_tokens
            ),
        )

    def _result(self, hits: list[MemoryHit]) -> SearchResult:
        return SearchResult(hits=hits, method=self._recall.method, notes=self._recall.notes)


def _check_query(query: str, k: int) -> None:
    if not query or not query.strip():
        raise UsageError("the query is empty", field="query")
    if k < 1 or k > 100:
        raise UsageError(f"k must be between 1 and 100, not {k}", field="k")
