"""Worker memory as the database grows: RSS after 1k and after 20k completed jobs.

A worker must not keep per-job state: its resident memory should stay flat while the number of
finished jobs in the database grows twentyfold.

    .venv/bin/python bench/worker_memory.py [--first 1000] [--total 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import tempfile
import time
from pathlib import Path

from pydantic import BaseModel

from stalwart import App, Settings, StepSpec, Template, ToolContext


class Item(BaseModel):
    """A small input."""

    n: int


def rss_mib() -> float:
    """Resident set size of this process, from /proc."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def build_app(db: Path) -> App:
    """Two-step jobs: a tool and its dependent."""
    app = App(
        Settings(
            database_url=f"sqlite:///{db}",
            sqlite_synchronous="NORMAL",
            poll_interval_seconds=0.01,
            max_queue_depth=100_000,
        )
    )

    @app.tool(timeout=5, idempotent=True)
    async def double(args: Item, ctx: ToolContext) -> Item:
        return Item(n=args.n * 2)

    app.workflow(
        "pair",
        input=Item,
        templates=[
            Template(
                name="pair",
                steps=[
                    StepSpec(id="a", tool="double", args={"n": "${input.n}"}),
                    StepSpec(id="b", tool="double", args={"n": "${steps.a.output.n}"}),
                ],
            )
        ],
    )
    return app


async def run(first: int, total: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        app = build_app(Path(tmp) / "mem.db")
        store = app.store()
        await store.migrate()
        client = app.client(store)
        worker = app.worker(store=store, concurrency=8)
        task = asyncio.create_task(worker.run())
        done = 0
        marks = {}
        start = time.perf_counter()
        for target in (first, total):
            while done < target:
                batch = min(500, target - done)
                for i in range(batch):
                    await client.submit("pair", {"n": done + i})
                done += batch
                while worker.steps_run < done * 2:  # noqa: ASYNC110 - polls a counter
                    await asyncio.sleep(0.01)
            gc.collect()
            marks[target] = rss_mib()
            print(
                f"{target:>6} jobs completed: worker process RSS {marks[target]:7.1f} MiB "
                f"({time.perf_counter() - start:5.1f} s)"
            )
        worker.stop()
        await task
        growth = marks[total] - marks[first]
        print(f"growth from {first} to {total} jobs: {growth:+.1f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--first", type=int, default=1000)
    parser.add_argument("--total", type=int, default=20000)
    args = parser.parse_args()
    asyncio.run(run(args.first, args.total))


if __name__ == "__main__":
    main()
