"""The built-in `memory_search` tool in a plan: a worker runs it against the job's own tenant's
knowledge, whatever the arguments say."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from pydantic import BaseModel
from tests.memory.test_recall import BagOfWords

from stalwart import App, Client, Settings
from stalwart.store import open_store


class Question(BaseModel):
    question: str


async def test_a_plan_step_searches_its_tenants_knowledge(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'tool.db'}"
    app = App(Settings(database_url=url, poll_interval_seconds=0.05, embedder="none"))
    app._embedder, app._embedder_made = BagOfWords(), True
    app.workflow(
        "ask",
        input=Question,
        templates=[
            {
                "name": "ask",
                "steps": [
                    {
                        "id": "lookup",
                        "tool": "memory_search",
                        "args": {"query": "${input.question}", "k": 2, "min_similarity": 0.2},
                    }
                ],
            }
        ],
    )
    store = open_store(url, app.settings)
    await store.migrate()
    client = Client(store, app=app)
    await client.memory.add(
        "acme", "faq", [("returns.md", b"Returns are accepted within 30 days of delivery.")]
    )
    await client.memory.add(
        "globex", "faq", [("returns.md", b"Returns are accepted within 90 days at globex.")]
    )
    worker = app.worker(store=store, worker_id="tool")
    task = asyncio.create_task(worker.run())
    try:
        jobs = {
            tenant: (
                await client.submit("ask", {"question": "how many days for returns"}, tenant=tenant)
            ).job
            for tenant in ("acme", "globex", "initech")
        }
        outputs = {}
        for tenant, job in jobs.items():
            deadline = time.monotonic() + 20
            while (done := await client.get(job.id, tenant=tenant)).status != "completed":
                assert done.status not in ("failed", "dead_lettered"), done.error
                assert time.monotonic() < deadline, done.status
                await asyncio.sleep(0.05)
            (step,) = await client.steps(job.id, tenant=tenant)
            outputs[tenant] = step.output["hits"]
    finally:
        worker.stop()
        await task
        await store.close()
    assert [h["text"] for h in outputs["acme"]] == [
        "Returns are accepted within 30 days of delivery."
    ]
    assert outputs["acme"][0]["collection"] == "faq" and outputs["acme"][0]["method"] == "vector"
    assert [h["text"] for h in outputs["globex"]] == [
        "Returns are accepted within 90 days at globex."
    ]
    assert outputs["initech"] == []
