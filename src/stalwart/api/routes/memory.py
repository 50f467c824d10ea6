"""`/v1/memory`: search a tenant's knowledge and past episodes; `/v1/jobs/{id}/similar`: the past
jobs most like one job. Read-only: knowledge is added with `stalwart memory add`."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel

from stalwart.api.auth import require
from stalwart.api.errors import responses
from stalwart.api.params import JobId, StorableText
from stalwart.api.state import client
from stalwart.client_memory import SearchResult
from stalwart.domain.access import Permission, Principal

router = APIRouter(tags=["memory"])


class Hit(BaseModel):
    """One thing recalled."""

    tier: str
    ref: str
    text: str
    score: float
    relevance: float
    recency: float
    importance: float
    tokens: int
    method: str
    meta: dict[str, Any] = {}


class Hits(BaseModel):
    """What a search found, best first, and how it ranked them (`vector` or `bm25`)."""

    method: str
    notes: list[str]
    items: list[Hit]

    @classmethod
    def of(cls, result: SearchResult) -> Hits:
        """From the client's result."""
        return cls(
            method=result.method,
            notes=result.notes,
            items=[Hit.model_validate(h.as_dict()) for h in result.hits],
        )


class Collection(BaseModel):
    """A knowledge collection."""

    name: str
    embedder: str | None
    dimension: int | None
    retention_days: float | None
    documents: int
    chunks: int
    created: float


class CollectionList(BaseModel):
    """The tenant's collections, by name."""

    items: list[Collection]


@router.get(
    "/v1/memory/collections",
    response_model=CollectionList,
    responses=responses(401, 403),
    summary="Knowledge collections",
)
async def list_collections(
    request: Request, principal: Annotated[Principal, Depends(require(Permission.READ))]
) -> CollectionList:
    """The tenant's knowledge collections with their document and chunk counts."""
    found = await client(request).memory.collections(principal.tenant_id)
    return CollectionList(items=[Collection.model_validate(asdict(c)) for c in found])


@router.get(
    "/v1/memory/search",
    response_model=Hits,
    responses=responses(400, 401, 403, 422),
    summary="Search memory",
)
async def search(
    request: Request,
    principal: Annotated[Principal, Depends(require(Permission.READ))],
    q: Annotated[
        StorableText, Query(min_length=1, max_length=4000, description="What to look for.")
    ],
    collection: Annotated[
        list[str] | None, Query(description="Collections to search (default: all).")
    ] = None,
    k: Annotated[int, Query(ge=1, le=100)] = 5,
    min_similarity: Annotated[float | None, Query(ge=-1, le=1)] = None,
    episodes: Annotated[
        bool, Query(description="Search past episodes instead of knowledge.")
    ] = False,
) -> Hits:
    """The tenant's knowledge chunks (or, with `episodes=true`, past episodes) most relevant
    to `q`."""
    memory = client(request).memory
    if episodes:
        result = await memory.episodes(
            principal.tenant_id, q, k=k, min_similarity=_or(min_similarity, 0.75)
        )
    else:
        result = await memory.search(
            principal.tenant_id,
            q,
            collections=collection,
            k=k,
            min_similarity=_or(min_similarity, 0.70),
        )
    return Hits.of(result)


@router.get(
    "/v1/jobs/{job_id}/similar",
    response_model=Hits,
    responses=responses(401, 403, 404, 422),
    summary="Similar past jobs",
)
async def similar(
    job_id: JobId,
    request: Request,
    principal: Annotated[Principal, Depends(require(Permission.READ))],
    k: Annotated[int, Query(ge=1, le=20)] = 3,
) -> Hits:
    """The past episodes of the job's workflow most like it (its input and what its steps found
    so far): what a reviewer should know before deciding."""
    result = await client(request).memory.similar_to_job(principal.tenant_id, job_id, k=k)
    return Hits.of(result)


def _or(value: float | None, default: float) -> float:
    return default if value is None else value
