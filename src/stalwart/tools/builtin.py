"""Tools every app has. `memory_search` lets a plan look up the tenant's knowledge:

```yaml
- id: policy
  tool: memory_search
  args: {query: "refund policy for ${input.country}", collections: [policies], k: 3}
```
It searches only the job's own tenant (from the step, never from the arguments).
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from stalwart.domain.memory import KNOWLEDGE_K, KNOWLEDGE_MIN_SIMILARITY
from stalwart.errors import NonRetriableError
from stalwart.tools.context import ToolContext

MEMORY_SEARCH = "memory_search"


class MemorySearchArgs(BaseModel):
    """What to look for, and where."""

    query: str = Field(min_length=1, max_length=4000, description="What to look for.")
    collections: list[str] | None = Field(
        None, description="Collections to search (default: all of the tenant's)."
    )
    k: int = Field(KNOWLEDGE_K, ge=1, le=50, description="How many hits at most.")
    min_similarity: float = Field(
        KNOWLEDGE_MIN_SIMILARITY, ge=-1.0, le=1.0, description="Cosine similarity a hit needs."
    )


class MemorySearchHit(BaseModel):
    """One chunk found."""

    ref: str
    text: str
    relevance: float
    score: float
    method: str
    collection: str | None = None
    source: str | None = None


class MemorySearchResult(BaseModel):
    """The chunks found, best first."""

    hits: list[MemorySearchHit]


async def memory_search(args: MemorySearchArgs, ctx: ToolContext) -> MemorySearchResult:
    """Search the tenant's knowledge collections (semantic memory)."""
    if ctx.memory is None:
        raise NonRetriableError(
            "memory is not available to this worker's tools", code="memory_unavailable"
        )
    hits = await ctx.memory.knowledge(
        ctx.tenant_id,
        args.query,
        collections=args.collections,
        k=args.k,
        min_similarity=args.min_similarity,
    )  # an embedding that costs money is charged to the tenant's budgets, not the job's
    return MemorySearchResult(
        hits=[
            MemorySearchHit(
                ref=h.ref,
                text=h.text,
                relevance=round(h.relevance, 4),
                score=round(h.score, 4),
                method=h.method,
                collection=h.meta.get("collection"),
                source=h.meta.get("source"),
            )
            for h in hits
        ]
    )
