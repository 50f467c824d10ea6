"""One corrupt job never stops anything else: with rows of one job hand-corrupted under the
store (raw SQL), a real `Worker` on each backend still completes every other job, escalates
the corrupt one with `CorruptStateError` (an event naming what failed to decode), records the
episodes of all the others and prunes memory as usual.
See docs/decisions/0036-corrupt-rows-are-quarantined.md."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from pydantic import BaseModel
from tests.integration.conftest import execute, query

from stalwart import App, Settings, ToolContext
from stalwart.store import Store
from stalwart.worker.worker import Worker

FAST = {
    "lease_seconds": 2.0,
    "poll_interval_seconds": 0.02,
    "reaper_interval_seconds": 0.05,
    "drain_seconds": 5.0,
    "memory_interval_seconds": 0.05,
}
FINISHED = ("completed", "failed", "escalated", "dead_lettered", "rejected", "cancelled")


class Args(BaseModel):
    n: int = 0


class Out(BaseModel):
    n: int


@pytest.fixture
async def make_app(db_url: str) -> AsyncIterator[Callable[..., App]]:
    """Apps with a two-step flow on the database under test; stores closed at teardown."""
    stores: list[Store] = []

    def make(**settings: Any) -> App:
        app = App(Settings(database_url=db_url, **{**FAST, **settings}))

        @app.tool(name="echo", timeout=5, idempotent=True)
        async def echo(args: Args, ctx: ToolContext) -> Out:
            return Out(n=args.n)

        steps = [
            {"id": "a", "tool": "echo", "args": {"n": "${input.n}"}},
            {"id": "b", "tool": "echo", "depends_on": ["a"], "args": {"n": 1}},
        ]
        app.workflow("flow", input=Args, templates=[{"name": "t", "steps": steps}])
        stores.append(app.store())
        return app

    yield make
    for store in stores:
        await store.close()


@asynccontextmanager
async def running(app: App) -> AsyncIterator[Worker]:
    worker = app.worker(worker_id="w-corrupt")
    task = asyncio.create_task(worker.run())
    try:
        yield worker
    finally:
        worker.stop()
        await asyncio.wait_for(task, 30)
    assert not worker.failed


async def eventually(check: Callable[[], Awaitable[Any]], within: float = 30.0) -> Any:
    deadline = time.monotonic() + within
    while True:
        result = await check()
        if result:
            return result
        assert time.monotonic() < deadline, f"condition not met within {within}s"
        await asyncio.sleep(0.05)


def sql(db_url: str, statement: str, *params: Any) -> list[tuple[Any, ...]]:
    return query(db_url, statement, params)


def all_finished(db_url: str) -> Callable[[], Awaitable[bool]]:
    """Whether every job has ended, read under the store (the listing is under test too)."""
    marks = ",".join("?" * len(FINISHED))

    async def check() -> bool:
        rows = await asyncio.to_thread(
            query, db_url, f"SELECT count(*) FROM jobs WHERE status NOT IN ({marks})", FINISHED
        )
        return bool(rows[0][0] == 0)

    return check


def quarantine_events(db_url: str, job_id: str) -> list[tuple[Any, ...]]:
    return sql(
        db_url,
        "SELECT kind, reason FROM events WHERE job_id = ? "
        "AND kind IN ('job_escalated', 'job_quarantined') ORDER BY id",
        job_id,
    )


async def test_a_worker_completes_the_other_jobs_and_escalates_the_corrupt_ones(
    make_app: Callable[..., App], db_url: str
) -> None:
    app = make_app(memory_episodes=False)
    await app.store().migrate()
    ids = [(await app.client().submit("flow", {"n": n})).job.id for n in range(6)]
    bad_json, bad_spec = ids[1], ids[4]
    execute(db_url, "UPDATE jobs SET input = '{not json' WHERE id = ?", (bad_json,))
    # Valid JSON that no longer validates: a worker reading it crashed its claim loop.
    execute(
        db_url,
        "UPDATE steps SET spec = ? WHERE job_id = ? AND key = 'a'",
        (json.dumps({"id": "a", "tool": "echo", "timeout_seconds": "soon"}), bad_spec),
    )
    good = [i for i in ids if i not in (bad_json, bad_spec)]

    async with running(app):
        await eventually(all_finished(db_url))

    listed = {j.id: j for j in await app.client().list(limit=100)}
    assert {i: listed[i].status for i in good} == dict.fromkeys(good, "completed")
    for job_id, what in ((bad_json, "input of job"), (bad_spec, "spec of step 'a'")):
        [(status, error)] = sql(db_url, "SELECT status, error FROM jobs WHERE id = ?", job_id)
        assert status == "escalated"
        assert json.loads(error)["exception_type"] == "CorruptStateError"
        assert json.loads(error)["code"] == "corrupt_state"
        kinds = quarantine_events(db_url, job_id)
        assert [k for k, _ in kinds] == ["job_escalated", "job_quarantined"]
        assert all(what in reason for _, reason in kinds), kinds
    assert "input of job" in (listed[bad_json].corrupt or "")
    assert listed[bad_spec].corrupt is None  # its job row is fine; its step is not
    letters = {d.job_id for d in await app.client().dead_letters()}
    assert {bad_json, bad_spec} <= letters


async def test_episodes_of_every_other_job_are_recorded_and_memory_is_pruned(
    make_app: Callable[..., App], db_url: str
) -> None:
    runner = make_app(memory_episodes=False)
    await runner.store().migrate()
    ids = [(await runner.client().submit("flow", {"n": n})).job.id for n in range(5)]
    escalated, ended = ids[0], ids[2]
    execute(db_url, "UPDATE jobs SET input = '[1, 2' WHERE id = ?", (escalated,))

    async with running(runner):
        await eventually(all_finished(db_url))
    # A job that completed, then had its stored result corrupted: it cannot be escalated any
    # more (completed is final), so the recorder quarantines it with an event only.
    execute(db_url, "UPDATE jobs SET result = '\"not an object\"' WHERE id = ?", (ended,))
    # Knowledge past its collection's retention, for the worker's pruning to remove.
    recorder = make_app(memory_episodes=True)
    memory = recorder.client().memory
    await memory.add("default", "kb", [("old.txt", b"an old note")], retention_days=1)
    execute(db_url, "UPDATE memory_documents SET created = created - 3 * 86400")

    good = sorted(set(ids) - {escalated, ended})

    async def recorded_and_pruned() -> bool:
        episodes = await asyncio.to_thread(
            sql, db_url, "SELECT job_id FROM memory_episodes ORDER BY job_id"
        )
        documents = await asyncio.to_thread(sql, db_url, "SELECT count(*) FROM memory_documents")
        return [r[0] for r in episodes] == good and documents[0][0] == 0

    async with running(recorder):
        await eventually(recorded_and_pruned)

    assert sql(db_url, "SELECT status FROM jobs WHERE id = ?", ended) == [("completed",)]
    [(kind, reason)] = [e for e in quarantine_events(db_url, ended)]
    assert kind == "job_quarantined" and "result of job" in reason
    assert [k for k, _ in quarantine_events(db_url, escalated)] == [
        "job_escalated",
        "job_quarantined",
    ]
