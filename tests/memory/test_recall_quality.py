"""Recall quality on a labeled set: the local embedder must find more than BM25 does.

`data/recall_set.json` holds business documents and queries labeled with the documents that answer
them (see its `notes`). Each method ranks every document for every query; we measure recall@5 (the
share of a query's relevant documents in its top 5, averaged over queries) and MRR (the mean of
1 / rank of the first relevant document). The report is printed (`pytest -s`) and written to
`.artifacts/memory/recall_quality.json`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from stalwart.domain.memory_text import Bm25Index
from stalwart.llm.embeddings import LocalEmbedder

DATA = Path(__file__).parent / "data" / "recall_set.json"
REPORT = Path(__file__).resolve().parents[2] / ".artifacts" / "memory" / "recall_quality.json"
K = 5


@dataclass(frozen=True)
class Query:
    text: str
    style: str
    relevant: frozenset[str]


@dataclass(frozen=True)
class RecallSet:
    ids: list[str]
    texts: list[str]
    queries: list[Query]


def load_set() -> RecallSet:
    raw = json.loads(DATA.read_text(encoding="utf-8"))
    return RecallSet(
        ids=[d["id"] for d in raw["documents"]],
        texts=[d["text"] for d in raw["documents"]],
        queries=[Query(q["query"], q["style"], frozenset(q["relevant"])) for q in raw["queries"]],
    )


def recall_at(ranking: Sequence[str], relevant: frozenset[str], k: int) -> float:
    """The share of `relevant` in the first `k` of `ranking`."""
    return len(relevant.intersection(ranking[:k])) / len(relevant)


def reciprocal_rank(ranking: Sequence[str], relevant: frozenset[str]) -> float:
    """1 / the rank of the first relevant document; 0 when none is ranked."""
    return next((1.0 / rank for rank, id_ in enumerate(ranking, 1) if id_ in relevant), 0.0)


def evaluate(data: RecallSet, rankings: Sequence[Sequence[str]]) -> dict[str, Any]:
    """recall@K and MRR over all queries and per query style, and the queries missed at K."""

    def metrics(pairs: list[tuple[Query, Sequence[str]]]) -> dict[str, float]:
        return {
            f"recall@{K}": round(
                sum(recall_at(r, q.relevant, K) for q, r in pairs) / len(pairs), 4
            ),
            "mrr": round(sum(reciprocal_rank(r, q.relevant) for q, r in pairs) / len(pairs), 4),
        }

    pairs = list(zip(data.queries, rankings, strict=True))
    styles = sorted({q.style for q in data.queries})
    return {
        **metrics(pairs),
        "by_style": {s: metrics([(q, r) for q, r in pairs if q.style == s]) for s in styles},
        "missed": [q.text for q, r in pairs if recall_at(r, q.relevant, K) < 1.0],
    }


def bm25_rankings(data: RecallSet) -> list[list[str]]:
    """Documents sharing a term with the query, by BM25; the others are not ranked."""
    index = Bm25Index(data.texts)
    return [[data.ids[i] for i, _ in index.search(q.text, len(data.ids))] for q in data.queries]


async def local_rankings(data: RecallSet) -> list[list[str]]:
    """All documents by cosine similarity (a dot product: the rows are unit vectors)."""
    embedder = LocalEmbedder()
    documents = await embedder.embed(data.texts)
    queries = await embedder.embed([q.text for q in data.queries])
    similarities = queries @ documents.T
    return [[data.ids[i] for i in (-row).argsort(kind="stable")] for row in similarities]


def report(data: RecallSet, results: dict[str, dict[str, Any]]) -> None:
    """Print the figures and write them, with the misses, to `.artifacts/`."""
    out = {"documents": len(data.ids), "queries": len(data.queries), "k": K, **results}
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    REPORT.write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    print(f"\nrecall quality: {len(data.queries)} queries over {len(data.ids)} documents")
    for method, figures in results.items():
        styles = "  ".join(
            f"{s}: {f[f'recall@{K}']:.3f}/{f['mrr']:.3f}" for s, f in figures["by_style"].items()
        )
        print(
            f"  {method:6} recall@{K} {figures[f'recall@{K}']:.3f}  MRR {figures['mrr']:.3f}  "
            f"({styles})  missed {len(figures['missed'])}"
        )
    print(f"  written to {REPORT}")


def test_the_recall_set_is_well_formed() -> None:
    raw = json.loads(DATA.read_text(encoding="utf-8"))
    data = load_set()
    assert raw["notes"]
    assert len(set(data.ids)) == len(data.ids) >= 50
    assert len(data.queries) >= 40
    assert len({q.text for q in data.queries}) == len(data.queries)
    for query in data.queries:
        assert 1 <= len(query.relevant) <= 2 and query.relevant <= set(data.ids), query.text
        assert query.style in {"keyword", "question"}


def test_the_metrics() -> None:
    ranking = ["a", "b", "c", "d", "e", "f"]
    assert recall_at(ranking, frozenset({"b", "f"}), 5) == 0.5
    assert reciprocal_rank(ranking, frozenset({"c", "f"})) == pytest.approx(1 / 3)
    assert reciprocal_rank(ranking, frozenset({"z"})) == 0.0


def test_bm25_recall() -> None:
    data = load_set()
    results = {"bm25": evaluate(data, bm25_rankings(data))}
    report(data, results)
    # A floor for the lexical fallback, well under what it reaches on this set.
    assert results["bm25"][f"recall@{K}"] >= 0.5


@pytest.mark.usefixtures("local_embedder")
async def test_the_local_embedder_recalls_more_than_bm25() -> None:
    data = load_set()
    results = {
        "bm25": evaluate(data, bm25_rankings(data)),
        "local": evaluate(data, await local_rankings(data)),
    }
    report(data, results)
    assert results["local"][f"recall@{K}"] > results["bm25"][f"recall@{K}"]
