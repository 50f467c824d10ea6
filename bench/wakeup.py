"""Wake-ups on PostgreSQL: enqueue-to-start latency on an idle system, and what an idle worker
costs the database.

One `stalwart worker` process against a private, durable PostgreSQL 15. First it sits idle for
`--idle` seconds while the database's own counters (`pg_stat_database.xact_commit +
xact_rollback` for the bench's database) count the statements it runs: every query an idle
worker makes is one autocommit transaction. Then one producer submits `--jobs` one-step jobs one
at a time, each after the last has started and a pause, so every job meets an idle worker.
Latency is from the job's `created` time to its step's `step_started` event, both written with
the database's clock.

    PYTHONPATH=. .venv/bin/python bench/wakeup.py [--jobs 50] [--idle 10]

Targets (issue 3): an idle worker makes at most about one query per second; enqueue-to-start
latency on an idle system well under 50 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from bench._harness import (
    WorkerProcess,
    percentile,
    pg_describe,
    pg_execute,
    postgres_server,
    rows,
    run_main,
    verdict,
    workers_stopped,
)
from pydantic import BaseModel

from stalwart import App, Settings, StepSpec, Template, ToolContext

app = App()


class Empty(BaseModel):
    """No arguments, no result."""


@app.tool(idempotent=True, timeout=5)
async def noop(args: Empty, ctx: ToolContext) -> Empty:
    """Does nothing."""
    return Empty()


app.workflow(
    "one", input=Empty, templates=[Template(name="one", steps=[StepSpec(id="a", tool="noop")])]
)


def _statements(log: Path, start: int) -> tuple[int, int]:
    """Statements logged since line `start` (BEGIN/COMMIT aside), and the line count now."""
    lines = log.read_text(errors="replace").splitlines()
    count = 0
    for line in lines[start:]:
        logged = "LOG:  statement: " in line or "LOG:  execute " in line
        if logged and not line.rstrip().endswith(("BEGIN", "COMMIT")):
            count += 1
    return count, len(lines)


def _transactions(url: str, db: str) -> int:
    [(count,)] = rows(
        url,
        "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = ?",
        (db,),
    )
    return int(count)


async def _submit_spaced(url: str, jobs: int, pause: float) -> list[float]:
    from stalwart.client import Client
    from stalwart.store import open_store

    store = open_store(url, Settings(database_url=url))
    latencies = []
    try:
        client = Client(store, app=app)
        for _ in range(jobs):
            job = (await client.submit("one", {})).job
            started: list[tuple[float]] = []
            deadline = time.monotonic() + 10
            while not started and time.monotonic() < deadline:
                started = [(e.at,) for e in await client.events(job.id) if e.kind == "step_started"]
                if not started:
                    await asyncio.sleep(0.005)
            if not started:
                raise RuntimeError(f"job {job.id} did not start within 10 s")
            latencies.append((started[0][0] - job.created) * 1000)
            await asyncio.sleep(pause)
    finally:
        await store.close()
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=50)
    parser.add_argument("--idle", type=float, default=10.0, help="Seconds of idling measured.")
    parser.add_argument("--pause", type=float, default=0.3, help="Seconds between jobs.")
    args = parser.parse_args()
    with postgres_server() as server, tempfile.TemporaryDirectory() as tmp:
        db = "wakeup"
        url = server.create_database(db)
        pg_execute(server.url(), f"ALTER DATABASE {db} SET log_statement = 'all'")
        print(pg_describe(url))
        worker = WorkerProcess(url, "bench.wakeup:app", 4, "wakeup-1", Path(tmp) / "w.log")
        with workers_stopped([worker.start()]):
            worker.wait_ready()
            time.sleep(2.0)  # past start-up (migrations, registration)
            before = _transactions(url, db)
            _, mark = _statements(server.logfile, 0)
            time.sleep(args.idle)
            logged, _ = _statements(server.logfile, mark)
            idle_rate = (_transactions(url, db) - before) / args.idle
            statement_rate = logged / args.idle
            latencies = asyncio.run(_submit_spaced(url, args.jobs, args.pause))
    p50, p95 = percentile(latencies, 50), percentile(latencies, 95)
    print(
        f"idle worker: {statement_rate:.2f} statements/s logged, {idle_rate:.2f} transactions/s "
        f"in pg_stat_database (autovacuum included) over {args.idle:g}s   (target about 1/s)"
    )
    print(
        f"enqueue-to-start, idle system, {len(latencies)} jobs: p50 {p50:.1f} ms, "
        f"p95 {p95:.1f} ms, max {max(latencies):.1f} ms   (target well under 50 ms) "
        f"{verdict(p95 < 50)}"
    )


if __name__ == "__main__":
    run_main(main)
