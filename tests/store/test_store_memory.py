"""Conformance: memory rows. Collections keep one embedder and dimension, a source added again
replaces its chunks, every read names its tenant, a tenant's erase leaves zero rows, retention
prunes, and one episode per job whoever writes it."""

from __future__ import annotations

import struct

import pytest
from conformance import OTHER_TENANT, TENANT, make_step, run_sql, submit

from stalwart.domain.memory import NewChunk, NewDocument, NewEpisode, Vector
from stalwart.errors import NotFoundError, UsageError
from stalwart.store import Store


def vec(*values: float, embedder: str = "test:emb") -> Vector:
    return Vector(embedder, len(values), struct.pack(f"<{len(values)}f", *values))


def doc(
    tenant: str = TENANT,
    collection: str = "kb",
    source: str = "a.md",
    texts: tuple[str, ...] = ("first chunk", "second chunk"),
    dim: int | None = 2,
    embedder: str = "test:emb",
) -> NewDocument:
    return NewDocument(
        tenant_id=tenant,
        collection=collection,
        source=source,
        digest="d" * 64,
        chunks=[
            NewChunk(
                seq=n,
                text=t,
                tokens=2,
                vector=vec(*([float(n + 1)] * dim), embedder=embedder) if dim else None,
            )
            for n, t in enumerate(texts)
        ],
    )


async def put(store: Store, d: NewDocument, dim: int | None = 2, embedder: str = "test:emb"):
    return await store.memory_document_put(d, embedder=embedder if dim else None, dimension=dim)


async def test_documents_are_stored_with_their_vectors_and_listed(store: Store) -> None:
    stored = await put(store, doc())
    assert stored.chunks == 2 and stored.collection == "kb"
    (coll,) = await store.memory_collections(TENANT)
    assert (coll.name, coll.embedder, coll.dimension, coll.documents, coll.chunks) == (
        "kb",
        "test:emb",
        2,
        1,
        2,
    )
    rows = await store.memory_chunk_rows(TENANT, ["kb"])
    assert [r.text for r in rows] == ["first chunk", "second chunk"]
    assert rows[1].vector == struct.pack("<2f", 2.0, 2.0)
    assert rows[0].ref == "chunk:kb/a.md#0" and rows[0].embedder == "test:emb"
    assert await store.memory_version(TENANT, ["kb"]) == (2, rows[-1].id)


async def test_the_same_source_again_replaces_its_chunks(store: Store) -> None:
    await put(store, doc())
    await put(store, doc(texts=("only chunk",)))
    rows = await store.memory_chunk_rows(TENANT, ["kb"])
    assert [r.text for r in rows] == ["only chunk"]
    (d,) = await store.memory_documents(TENANT, "kb")
    assert d.chunks == 1


async def test_a_collection_refuses_another_dimension_or_embedder(store: Store) -> None:
    await put(store, doc())
    with pytest.raises(UsageError) as refused:
        await put(store, doc(source="b.md", dim=3), dim=3)
    assert refused.value.fields["field"] == "embedder"
    assert "2 dimensions" in refused.value.message and "3 dimensions" in refused.value.message
    with pytest.raises(UsageError):
        await put(store, doc(source="b.md", embedder="other"), embedder="other")
    with pytest.raises(UsageError):  # nor can a lexical document join a vector collection
        await put(store, doc(source="b.md", dim=None), dim=None)
    # Nothing of the refused documents was stored.
    assert [d.source for d in await store.memory_documents(TENANT, "kb")] == ["a.md"]
    assert len(await store.memory_chunk_rows(TENANT, ["kb"])) == 2


async def test_a_chunk_vector_must_match_the_documents_embedder(store: Store) -> None:
    with pytest.raises(UsageError):
        await put(store, doc(embedder="x"), embedder="test:emb")
    assert await store.memory_collections(TENANT) == []


async def test_reads_never_cross_tenants(store: Store) -> None:
    await put(store, doc())
    await put(store, doc(tenant=OTHER_TENANT, texts=("theirs",)))
    assert [r.text for r in await store.memory_chunk_rows(TENANT, ["kb"])] == [
        "first chunk",
        "second chunk",
    ]
    assert [r.text for r in await store.memory_chunk_rows(OTHER_TENANT, ["kb"])] == ["theirs"]
    assert [c.chunks for c in await store.memory_collections(OTHER_TENANT)] == [1]
    assert (await store.memory_version(OTHER_TENANT, ["kb"]))[0] == 1
    with pytest.raises(NotFoundError):
        await store.memory_collection("nobody", "kb")


async def test_forget_a_source_then_the_collection(store: Store) -> None:
    await put(store, doc())
    await put(store, doc(source="b.md"))
    removed = await store.memory_forget(TENANT, "kb", "a.md")
    assert removed == {"memory_chunks": 2, "memory_documents": 1}
    assert [d.source for d in await store.memory_documents(TENANT, "kb")] == ["b.md"]
    removed = await store.memory_forget(TENANT, "kb")
    assert removed == {"memory_chunks": 2, "memory_documents": 1, "memory_collections": 1}
    assert await store.memory_collections(TENANT) == []
    with pytest.raises(NotFoundError):
        await store.memory_forget(TENANT, "kb")


def episode(tenant: str, job_id: str, outcome: str = "rejected") -> NewEpisode:
    return NewEpisode(
        tenant_id=tenant,
        job_id=job_id,
        workflow="invoice",
        outcome=outcome,
        summary=f"invoice job {job_id}: {outcome}",
        details={"decisions": [{"comment": "unknown vendor"}]},
        cost_usd=0.25,
        importance=0.9,
        finished=1000.0,
        vector=vec(0.6, 0.8),
    )


async def test_one_episode_per_job_and_tenant_scoped_reads(store: Store) -> None:
    assert await store.episode_put(episode(TENANT, "job_1"))
    assert not await store.episode_put(episode(TENANT, "job_1", "completed"))
    assert await store.episode_put(episode(OTHER_TENANT, "job_1"))
    got = await store.episode_get(TENANT, "job_1")
    assert got is not None and got.outcome == "rejected" and got.cost_usd == 0.25
    assert got.details == {"decisions": [{"comment": "unknown vendor"}]}
    rows = await store.episode_rows(TENANT)
    assert [(r.ref, r.meta["outcome"]) for r in rows] == [("episode:job_1", "rejected")]
    assert rows[0].vector == struct.pack("<2f", 0.6, 0.8)
    other = await store.episode_rows(OTHER_TENANT)
    assert await store.episodes_get(TENANT, [other[0].id]) == []
    assert await store.episode_get("nobody", "job_1") is None


async def test_erase_leaves_zero_rows_of_the_tenant_and_all_of_the_others(store: Store) -> None:
    for tenant in (TENANT, OTHER_TENANT):
        await put(store, doc(tenant=tenant))
        await put(store, doc(tenant=tenant, collection="other", source="x.html"))
        await store.episode_put(episode(tenant, "job_9"))
    before = await store.memory_count(OTHER_TENANT)
    removed = await store.memory_erase_tenant(TENANT)
    assert removed == {
        "memory_chunks": 4,
        "memory_documents": 2,
        "memory_collections": 2,
        "memory_episodes": 1,
    }
    # Counted under the protocol too: no table holds a row of the erased tenant.
    for table in removed:
        (count,) = (
            await run_sql(store, f"SELECT count(*) FROM {table} WHERE tenant_id = ?", [TENANT])
        )[0]
        assert count == 0, table
    assert await store.memory_count(TENANT) == dict.fromkeys(removed, 0)
    assert await store.memory_count(OTHER_TENANT) == before


async def test_retention_prunes_old_documents(store: Store) -> None:
    await store.memory_document_put(doc(), embedder="test:emb", dimension=2, retention_days=1)
    await put(store, doc(collection="keep"))
    await run_sql(store, "UPDATE memory_documents SET created = created - 2 * 86400")
    assert await store.memory_prune() == 1
    assert [c.name for c in await store.memory_collections(TENANT) if c.chunks] == ["keep"]


async def test_ended_jobs_without_an_episode_are_pending(store: Store) -> None:
    job = await submit(store, make_step("a"))
    assert await store.episodes_pending(0.0) == []  # not ended yet
    await run_sql(
        store,
        "UPDATE jobs SET status = 'failed', finished = updated WHERE id = ?",
        [job.id],
    )
    assert await store.episodes_pending(0.0) == [(job.tenant_id, job.id)]
    await store.episode_put(episode(job.tenant_id, job.id, "failed"))
    assert await store.episodes_pending(0.0) == []
