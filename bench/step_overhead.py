"""Durable step overhead on SQLite (WAL, synchronous=FULL).

One job of 200 sequential no-op tool steps, each durably committed before the next starts,
measured two ways: the executor's chain (claim, run, complete-and-claim-next: what a worker slot
does) and a whole `Worker` from submit to completed. Printed next to the cost of one bare SQLite
commit (a ~100-byte INSERT plus an UPDATE) on the same file with the same settings.

    .venv/bin/python bench/step_overhead.py [--steps 200] [--repeat 5]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

from pydantic import BaseModel

from stalwart import App, Settings, StepSpec, Template, ToolContext
from stalwart.store.sqlite.connection import connect


class Empty(BaseModel):
    """No arguments, no result."""


def build_app(db: Path, steps: int) -> App:
    """An app with one no-op tool and a workflow of `steps` sequential steps."""
    settings = Settings(
        database_url=f"sqlite:///{db}",
        sqlite_synchronous="FULL",
        poll_interval_seconds=0.001,
        max_plan_steps=max(steps, 100),
    )
    app = App(settings)

    @app.tool(timeout=5, idempotent=True)
    async def noop(args: Empty, ctx: ToolContext) -> Empty:
        return Empty()

    template = Template(
        name="chain",
        steps=[
            StepSpec(id=f"s{i}", tool="noop", depends_on=[f"s{i - 1}"] if i else [])
            for i in range(steps)
        ],
    )
    app.workflow("chain", input=Empty, templates=[template])
    return app


def bare_commit_us(db: Path, iterations: int = 2000) -> float:
    """Microseconds for one BEGIN IMMEDIATE; INSERT ~100 bytes; UPDATE; COMMIT."""
    con = connect(str(db), synchronous="FULL")
    con.execute("CREATE TABLE IF NOT EXISTS bare (id INTEGER PRIMARY KEY, payload TEXT, n INT)")
    payload = "x" * 100
    start = time.perf_counter()
    for i in range(iterations):
        con.execute("BEGIN IMMEDIATE")
        cur = con.execute("INSERT INTO bare (payload, n) VALUES (?, ?)", (payload, i))
        con.execute("UPDATE bare SET n = n + 1 WHERE id = ?", (cur.lastrowid,))
        con.execute("COMMIT")
    elapsed = time.perf_counter() - start
    con.close()
    return elapsed / iterations * 1e6


async def chain_us(app: App, steps: int) -> float:
    """Microseconds per step for one job run by the executor's chain (one worker slot)."""
    store = app.store()
    await store.migrate()
    job = (await app.client(store).submit("chain", {})).job
    executor = app.executor(store)
    start = time.perf_counter()
    claims = await store.step_claim("bench", limit=1, lease_seconds=30)
    claim = claims[0] if claims else None
    count = 0
    while claim is not None:
        claim = await executor.run(claim, executor.context_for(claim), worker_id="bench")
        count += 1
    elapsed = time.perf_counter() - start
    final = await store.job_get(job.id)
    assert final.status == "completed" and count == steps, (final.status, count)
    return elapsed / steps * 1e6


async def worker_us(app: App, steps: int) -> float:
    """Microseconds per step for one job run by a whole Worker, submit to completed."""
    store = app.store()
    await store.migrate()
    worker = app.worker(store=store, concurrency=1)
    job = (await app.client(store).submit("chain", {})).job
    start = time.perf_counter()
    task = asyncio.create_task(worker.run())
    while worker.steps_run < steps:  # noqa: ASYNC110 - a benchmark polls a counter
        await asyncio.sleep(0.0005)
    elapsed = time.perf_counter() - start
    worker.stop()
    await task
    assert (await store.job_get(job.id)).status == "completed"
    return elapsed / steps * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        bare = statistics.median(bare_commit_us(Path(tmp) / f"bare{i}.db") for i in range(3))
        chain, whole = [], []
        for i in range(args.repeat):
            chain.append(
                asyncio.run(chain_us(build_app(Path(tmp) / f"c{i}.db", args.steps), args.steps))
            )
            whole.append(
                asyncio.run(worker_us(build_app(Path(tmp) / f"w{i}.db", args.steps), args.steps))
            )
    c, w = statistics.median(chain), statistics.median(whole)
    print(
        f"sqlite {sqlite3.sqlite_version}, WAL, synchronous=FULL, {os.cpu_count()} cores, "
        f"{args.steps} sequential no-op steps, median of {args.repeat}"
    )
    print(f"bare commit (INSERT ~100 B + UPDATE):  {bare:8.1f} µs")
    print(f"durable step, executor chain:          {c:8.1f} µs   ({c / bare:.1f}x a bare commit)")
    print(f"durable step, whole worker:            {w:8.1f} µs   ({w / bare:.1f}x a bare commit)")
    print("target: at most 150 µs per durable step")


if __name__ == "__main__":
    main()
