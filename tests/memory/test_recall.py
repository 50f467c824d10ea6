"""Recall over a real store: knowledge search, tenant isolation, the cache following writes and
deletes, the lexical fallback, the merge of the three tiers within a token budget, and episodes
of ended jobs recalled for a similar job. The embedder is a small deterministic bag-of-words
one (the local model has its own tests); every other part is real."""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import BaseModel

from stalwart import App, ApprovalPolicy, Client, Settings, ToolContext
from stalwart.domain.memory import Vector
from stalwart.engine.episodes import EpisodeRecorder
from stalwart.engine.memory import MemoryItem
from stalwart.engine.recall import LEXICAL_NOTE, Recall
from stalwart.errors import NotFoundError, UsageError
from stalwart.llm.embeddings import EmbedScope
from stalwart.store import Store, open_store

DIM = 256


class BagOfWords:
    """Words hashed into a unit vector: texts sharing words are similar."""

    name = "test:bow"
    dimension = DIM

    def __init__(self) -> None:
        self.calls = 0

    async def embed(self, texts: Sequence[str], scope: EmbedScope | None = None) -> np.ndarray:
        self.calls += 1
        out = np.zeros((len(texts), DIM), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in re.findall(r"\w+", text.lower()):
                out[row, int(hashlib.sha1(word.encode()).hexdigest(), 16) % DIM] += 1.0
            norm = float(np.linalg.norm(out[row]))
            if norm:
                out[row] /= norm
        return out


def settings(url: str, **more: Any) -> Settings:
    return Settings(
        database_url=url,
        poll_interval_seconds=0.05,
        memory_chunk_tokens=40,
        memory_chunk_overlap=8,
        embedder="none",
        **more,
    )


@pytest.fixture
async def store(tmp_path: Path) -> Any:
    s = open_store(f"sqlite:///{tmp_path / 'memory.db'}")
    await s.migrate()
    yield s
    await s.close()


def client_with(store: Store, embedder: Any) -> Client:
    app = App(settings(store.url))
    app._embedder, app._embedder_made = embedder, True
    return Client(store, app=app)


async def test_knowledge_is_searched_by_meaning_of_words_and_scoped_to_the_tenant(
    store: Store,
) -> None:
    client = client_with(store, BagOfWords())
    await client.memory.add(
        "acme",
        "policies",
        [
            ("refunds.md", b"# Refunds\n\nRefunds are paid within 14 days of the return."),
            ("travel.txt", b"Travel must be booked through the company portal."),
        ],
    )
    await client.memory.add(
        "globex", "policies", [("refunds.md", b"Refunds are never paid at globex.")]
    )
    found = await client.memory.search("acme", "when are refunds paid", min_similarity=0.2)
    assert found.method == "vector" and found.notes == []
    assert found.hits[0].ref == "chunk:policies/refunds.md#0"
    assert "14 days" in found.hits[0].text
    assert all("globex" not in h.text for h in found.hits)
    theirs = await client.memory.search("globex", "when are refunds paid", min_similarity=0.2)
    assert [h.text for h in theirs.hits] == ["Refunds are never paid at globex."]
    assert (await client.memory.search("nobody", "refunds", min_similarity=0.0)).hits == []


async def test_the_threshold_and_k_bound_the_hits(store: Store) -> None:
    client = client_with(store, BagOfWords())
    files = [(f"d{i}.txt", f"alpha beta topic{i}".encode()) for i in range(8)]
    await client.memory.add("t", "kb", files)
    assert len((await client.memory.search("t", "alpha beta", k=3, min_similarity=0.5)).hits) == 3
    assert (await client.memory.search("t", "unrelated words", min_similarity=0.7)).hits == []
    with pytest.raises(UsageError):
        await client.memory.search("t", "  ")
    with pytest.raises(UsageError):
        await client.memory.search("t", "alpha", k=0)


async def test_the_search_cache_follows_additions_and_deletions(store: Store) -> None:
    client = client_with(store, BagOfWords())
    await client.memory.add("t", "kb", [("a.txt", b"apples are red")])
    assert len((await client.memory.search("t", "apples", min_similarity=0.1)).hits) == 1
    await client.memory.add("t", "kb", [("b.txt", b"apples are green too")])
    assert len((await client.memory.search("t", "apples", min_similarity=0.1)).hits) == 2
    await client.memory.forget("t", "kb", "a.txt")
    hits = (await client.memory.search("t", "apples", min_similarity=0.1)).hits
    assert [h.meta["source"] for h in hits] == ["b.txt"]
    # A second process (another Recall over the same database) sees the same.
    other = client_with(store, BagOfWords())
    assert [h.ref for h in (await other.memory.search("t", "apples", min_similarity=0.1)).hits] == [
        h.ref for h in hits
    ]


async def test_without_an_embedder_recall_is_lexical_and_says_so(store: Store) -> None:
    client = client_with(store, None)
    await client.memory.add(
        "t",
        "kb",
        [
            ("vpn.md", b"To reset the VPN token, open the self-service portal."),
            ("lunch.md", b"The canteen opens at noon."),
        ],
    )
    (coll,) = await client.memory.collections("t")
    assert coll.embedder is None and coll.dimension is None
    found = await client.memory.search("t", "reset VPN token")
    assert found.method == "bm25" and found.notes == [LEXICAL_NOTE]
    assert found.hits[0].meta["source"] == "vpn.md" and 0 < found.hits[0].relevance <= 1
    # Vectors cannot be added to a lexical collection afterwards.
    with pytest.raises(UsageError) as refused:
        await client_with(store, BagOfWords()).memory.add("t", "kb", [("x.md", b"more text")])
    assert refused.value.fields["field"] == "embedder"


async def test_bad_files_store_nothing(store: Store, tmp_path: Path) -> None:
    client = client_with(store, BagOfWords())
    good = tmp_path / "good.md"
    good.write_text("fine text")
    with pytest.raises(UsageError) as refused:
        await client.memory.add("t", "kb", [good, tmp_path / "missing.md"])
    assert "missing.md" in refused.value.message
    with pytest.raises(UsageError):
        await client.memory.add("t", "kb", [("data.pdf", b"%PDF")])
    with pytest.raises(UsageError):
        await client.memory.add("t", "Bad Name", [good])
    assert await client.memory.collections("t") == []
    with pytest.raises(NotFoundError):
        await client.memory.documents("t", "kb")


async def test_recall_merges_the_three_tiers_within_the_budget(store: Store) -> None:
    embedder = BagOfWords()
    client = client_with(store, embedder)
    await client.memory.add(
        "t", "kb", [("vendors.md", b"Invoice from vendor Acme GmbH: approved vendor.")]
    )
    await store.episode_put(
        _episode("t", "job_old", "invoice job: vendor: Acme GmbH; amount: 900. Outcome: rejected.")
    )
    recall = Recall(store, embedder)
    working = [MemoryItem("input", "vendor Acme GmbH amount 1200"), MemoryItem("note", "x" * 4000)]
    result = await recall.recall(
        "t", "vendor Acme GmbH invoice", working=working, budget_tokens=400
    )
    tiers = {h.tier for h in result.hits}
    assert tiers == {"working", "episodic", "semantic"}
    assert result.tokens <= 400 and result.tokens == sum(h.tokens for h in result.hits)
    assert all("x" * 100 not in h.text for h in result.hits)  # the long item did not fit
    scores = [h.score for h in result.hits]
    assert scores == sorted(scores, reverse=True)
    assert result.as_dict()["method"] == "vector"


def _episode(tenant: str, job_id: str, summary: str, outcome: str = "rejected") -> Any:
    from stalwart.domain.memory import NewEpisode

    return NewEpisode(
        tenant_id=tenant,
        job_id=job_id,
        workflow="invoice",
        outcome=outcome,
        summary=summary,
        details={},
        cost_usd=0.0,
        importance=0.9,
        finished=time.time(),
    )


# -- episodes of real jobs --------------------------------------------------------------------


class Invoice(BaseModel):
    vendor: str
    amount: float


class Paid(BaseModel):
    ok: bool


def invoice_app(url: str) -> App:
    app = App(settings(url))

    @app.tool(timeout=5, idempotent=True)
    async def pay(args: Invoice, ctx: ToolContext) -> Paid:
        return Paid(ok=True)

    app.workflow(
        "invoice",
        input=Invoice,
        approval=ApprovalPolicy(sla_seconds=3600),
        templates=[
            {
                "name": "invoice",
                "steps": [
                    {
                        "id": "pay",
                        "tool": "pay",
                        "args": {"vendor": "${input.vendor}", "amount": "${input.amount}"},
                        "requires_approval": True,
                    }
                ],
            }
        ],
    )
    return app


async def _decided(client: Client, job_id: str, approve: bool, comment: str) -> None:
    deadline = time.monotonic() + 20
    while True:
        pending = [r for r in await client.reviews() if r.job_id == job_id]
        if pending:
            decide = client.approve if approve else client.reject
            await decide(pending[0].id, reviewer="alice", comment=comment)
            return
        assert time.monotonic() < deadline, "no review appeared"
        await asyncio.sleep(0.05)


async def _ended(client: Client, job_id: str) -> str:
    deadline = time.monotonic() + 20
    while (job := await client.get(job_id)).status not in ("completed", "failed", "rejected"):
        assert time.monotonic() < deadline, f"job is {job.status}"
        await asyncio.sleep(0.05)
    return job.status


async def test_ended_jobs_become_episodes_a_similar_job_recalls(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'episodes.db'}"
    app = invoice_app(url)
    embedder = BagOfWords()
    app._embedder, app._embedder_made = embedder, True
    store = open_store(url, app.settings)
    await store.migrate()
    worker = app.worker(store=store, worker_id="mem")
    task = asyncio.create_task(worker.run())
    try:
        client = Client(store, app=app)
        rejected = (await client.submit("invoice", {"vendor": "Shady Ltd", "amount": 990})).job
        await _decided(client, rejected.id, False, "vendor is not on the approved list")
        paid = (await client.submit("invoice", {"vendor": "Acme GmbH", "amount": 120})).job
        await _decided(client, paid.id, True, "")
        assert await _ended(client, rejected.id) == "rejected"
        assert await _ended(client, paid.id) == "completed"
        # The worker records them within a poll; recording again adds nothing.
        deadline = time.monotonic() + 20
        while await store.episode_get("default", paid.id) is None:
            assert time.monotonic() < deadline, "no episode recorded"
            await asyncio.sleep(0.1)
        assert await EpisodeRecorder(store, embedder, lookback_seconds=60).run_once() == 0
        episode = await store.episode_get("default", rejected.id)
        assert episode is not None and episode.outcome == "rejected"
        assert "Shady Ltd" in episode.summary and "not on the approved list" in episode.summary
        assert episode.details["decisions"] == [
            {
                "decision": "rejected",
                "reviewer": "alice",
                "comment": "vendor is not on the approved list",
            }
        ]
        assert episode.importance > (await store.episode_get("default", paid.id)).importance  # type: ignore[union-attr]
        # A new invoice from the same vendor recalls the rejection, not itself.
        again = (await client.submit("invoice", {"vendor": "Shady Ltd", "amount": 1200})).job
        similar = await client.memory.similar_to_job("default", again.id)
        assert similar.hits and similar.hits[0].ref == f"episode:{rejected.id}"
        assert all(h.meta["job"] != again.id for h in similar.hits)
    finally:
        worker.stop()
        await task
        await store.close()


async def test_a_template_can_be_chosen_by_how_similar_past_jobs_ended(store: Store) -> None:
    # Two templates: a careful one (a person approves) when similar invoices were rejected
    # before, the plain one otherwise.
    app = invoice_app(store.url)

    def template(name: str, approval: bool) -> dict[str, Any]:
        step = {"id": "pay", "tool": "pay", "args": {"vendor": "${input.vendor}", "amount": 1}}
        return {"name": name, "steps": [{**step, "requires_approval": approval}]}

    app.workflow(
        "vendor_invoice",
        input=Invoice,
        templates=[
            {**template("careful", True), "when": {"past.rejected": {"gt": 0}}},
            template("plain", False),
        ],
    )
    embedder = BagOfWords()
    app._embedder, app._embedder_made = embedder, True
    client = Client(store, app=app)
    first = (await client.submit("vendor_invoice", {"vendor": "Shady Ltd", "amount": 50})).job
    assert first.template_name == "plain"
    key = "vendor_invoice job: vendor: Shady Ltd; amount: 990.0"
    [vector] = await embedder.embed([key])
    past = replace(
        _episode("default", "job_past", f"{key}. Outcome: rejected."),
        workflow="vendor_invoice",
        key_text=key,
        vector=Vector(embedder.name, DIM, vector.tobytes()),
    )
    assert await store.episode_put(past)
    again = (await client.submit("vendor_invoice", {"vendor": "Shady Ltd", "amount": 60})).job
    assert again.template_name == "careful"
    (plan,) = await store.plan_list(again.id)
    assert plan.plan["notes"]["past"]["rejected"] == 1
    assert plan.plan["notes"]["past"]["jobs"] == ["job_past"]
    other = (await client.submit("vendor_invoice", {"vendor": "Acme GmbH", "amount": 60})).job
    assert other.template_name == "plain"


async def test_a_caught_up_recorder_looks_back_only_a_few_minutes(store: Store) -> None:
    from stalwart.engine.episodes import SETTLE_SECONDS

    recorder = EpisodeRecorder(store, None, lookback_seconds=7 * 86400)
    assert recorder.since < time.time() - 6 * 86400
    assert await recorder.run_once() == 0
    assert time.time() - SETTLE_SECONDS - 5 < recorder.since <= time.time() - SETTLE_SECONDS
