"""Durable step overhead on SQLite (WAL, synchronous=FULL) and PostgreSQL (default durability).

One job of 200 sequential no-op tool steps, each durably committed before the next starts,
measured two ways: the executor's chain (claim, run, complete-and-claim-next: what a worker slot
does) and a whole `Worker` from submit to completed. Printed next to the cost of one bare commit
(a ~100-byte INSERT plus an UPDATE, then COMMIT) on the same database in the same run: on SQLite
the same file with the same settings; on PostgreSQL the same server, from psycopg with
autocommit off. PostgreSQL is a private server started for the run (tests/pgserver.py) with
fsync and synchronous_commit on.

Run from the repository root (the PostgreSQL part imports tests.pgserver):

    PYTHONPATH=. .venv/bin/python bench/step_overhead.py [--backend sqlite|postgres|both]
        [--steps 200] [--repeat 5]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

try:
    from bench._harness import (
        backends,
        bare_commit_us,
        chain_app,
        load_average,
        pg_describe,
        postgres_server,
        run_main,
    )
except ModuleNotFoundError as exc:  # `python bench/...` without the repository root on the path
    raise SystemExit(f"{exc}: run from the repository root with PYTHONPATH=.") from None
from stalwart import App, Settings

TARGETS_US = {"sqlite": 150.0, "postgres": 350.0}


def build_app(url: str, steps: int) -> App:
    """An app with one no-op tool and a workflow of `steps` sequential steps."""
    settings = Settings(
        database_url=url,
        sqlite_synchronous="FULL",
        poll_interval_seconds=0.001,
        max_plan_steps=max(steps, 100),
    )
    return chain_app(settings, steps)


async def chain_us(app: App, steps: int) -> float:
    """Microseconds per step for one job run by the executor's chain (one worker slot)."""
    store = app.store()
    try:
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
    finally:
        await store.close()


async def worker_us(app: App, steps: int) -> float:
    """Microseconds per step for one job run by a whole Worker, submit to completed."""
    store = app.store()
    try:
        await store.migrate()
        worker = app.worker(store=store, concurrency=1)
        job = (await app.client(store).submit("chain", {})).job
        start = time.perf_counter()
        task = asyncio.create_task(worker.run())
        while worker.steps_run < steps:
            if task.done():
                task.result()
                raise RuntimeError("the worker stopped before the job was done")
            await asyncio.sleep(0.0005)
        elapsed = time.perf_counter() - start
        worker.stop()
        await task
        assert (await store.job_get(job.id)).status == "completed"
        return elapsed / steps * 1e6
    finally:
        await store.close()


def measure(
    label: str, new_url: Callable[[str], str], steps: int, repeat: int, target: float
) -> list[str]:
    """`repeat` rounds, each on fresh databases from `new_url(name)`: a bare commit, the chain,
    a whole worker, interleaved so that drift in the disk's speed (other work on the machine)
    hits all three alike. Medians, and the median of each round's ratio. Summary lines."""
    bare, chain, whole = [], [], []
    for i in range(repeat):
        bare.append(bare_commit_us(new_url(f"bare{i}"), iterations=500))
        chain.append(asyncio.run(chain_us(build_app(new_url(f"c{i}"), steps), steps)))
        whole.append(asyncio.run(worker_us(build_app(new_url(f"w{i}"), steps), steps)))
    b, c, w = statistics.median(bare), statistics.median(chain), statistics.median(whole)
    c_ratio = statistics.median(x / y for x, y in zip(chain, bare, strict=True))
    w_ratio = statistics.median(x / y for x, y in zip(whole, bare, strict=True))
    return [
        f"{label}, {os.cpu_count()} cores, load average {load_average()}, {steps} sequential "
        f"no-op steps, median of {repeat}",
        f"bare commit (INSERT ~100 B + UPDATE):  {b:8.1f} µs   (rounds: {_spread(bare)})",
        f"durable step, executor chain:          {c:8.1f} µs   ({c_ratio:.1f}x a bare commit)",
        f"durable step, whole worker:            {w:8.1f} µs   ({w_ratio:.1f}x a bare commit)",
        f"target: at most {target:.0f} µs per durable step: "
        f"{'met' if max(c, w) <= target else 'MISSED'} "
        f"(chain {c:.0f} µs, whole worker {w:.0f} µs)",
    ]


def _spread(values: list[float]) -> str:
    return f"{min(values):.0f} to {max(values):.0f}"


def sqlite_urls(directory: Path) -> Callable[[str], str]:
    """A fresh SQLite database URL per name, in `directory`."""
    return lambda name: f"sqlite:///{directory / name}.db"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    summary: list[str] = []
    for backend in backends(args.backend):
        if backend == "sqlite":
            with tempfile.TemporaryDirectory() as tmp:
                summary += measure(
                    f"sqlite {sqlite3.sqlite_version}, WAL, synchronous=FULL",
                    sqlite_urls(Path(tmp)),
                    args.steps,
                    args.repeat,
                    TARGETS_US["sqlite"],
                )
        else:
            with postgres_server() as server:
                summary += measure(
                    pg_describe(server.url()),
                    server.create_database,
                    args.steps,
                    args.repeat,
                    TARGETS_US["postgres"],
                )
        summary.append("")
    print("\n".join(summary).rstrip())


if __name__ == "__main__":
    run_main(main)
