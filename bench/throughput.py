"""Throughput: 2,000 jobs of the diamond A -> (B, C) -> D through 2 worker processes.

One producer process enqueues the jobs one at a time (a loop of `client.submit`) while two real
`stalwart worker` subprocesses (`--concurrency 16`, `--app bench.throughput:app`) drain them. The
clock starts at the first submit and stops when the last job finishes (the largest `finished` of
the jobs); every job must end `completed`. Printed: jobs/s, steps/s, p50/p95 job latency
(`finished - created`), and beside them the raw commit limit measured on the same database in the
same run: single-row transactions (INSERT ~100 B + UPDATE + COMMIT) per second from 2 concurrent
clients. PostgreSQL is a private server started for the run (tests/pgserver.py) with fsync and
synchronous_commit on; SQLite is a temporary file in WAL mode with synchronous=FULL.

Run from the repository root (the workers import this module as `bench.throughput`):

    PYTHONPATH=. .venv/bin/python bench/throughput.py [--backend postgres|sqlite|both]
        [--jobs 2000] [--workers 2] [--concurrency 16] [--poll-interval 0.05]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

try:
    from bench._harness import (
        WorkerProcess,
        backends,
        child_env,
        commit_rate,
        load_average,
        machine_cpu,
        percentile,
        pg_describe,
        pg_execute,
        postgres_cpu,
        postgres_server,
        process_cpu,
        rows,
        run_main,
        verdict,
        workers_stopped,
    )
except ModuleNotFoundError as exc:  # `python bench/...` without the repository root on the path
    raise SystemExit(f"{exc}: run from the repository root with PYTHONPATH=.") from None
from pydantic import BaseModel

from stalwart import App, Settings, StepSpec, Template, ToolContext
from stalwart.domain.states import JOB_PARKED, JOB_TERMINAL

if TYPE_CHECKING:
    from tests.pgserver import PgServer

STEPS_PER_JOB = 4
TARGET_JOBS_PER_SECOND = {"postgres": 500.0}
SETTLED = sorted(str(s) for s in JOB_TERMINAL | JOB_PARKED)


class Item(BaseModel):
    """A small input and output."""

    n: int


def build_app(url: str | None = None) -> App:
    """Four idempotent no-op tools and the diamond workflow. Settings come from the environment
    (`STALWART_*`); `stalwart worker --database-url` replaces the URL."""
    app = App(Settings(database_url=url) if url else Settings())

    @app.tool(timeout=10, idempotent=True)
    async def step_a(args: Item, ctx: ToolContext) -> Item:
        return Item(n=args.n)

    @app.tool(timeout=10, idempotent=True)
    async def step_b(args: Item, ctx: ToolContext) -> Item:
        return Item(n=args.n)

    @app.tool(timeout=10, idempotent=True)
    async def step_c(args: Item, ctx: ToolContext) -> Item:
        return Item(n=args.n)

    @app.tool(timeout=10, idempotent=True)
    async def step_d(args: Item, ctx: ToolContext) -> Item:
        return Item(n=args.n)

    app.workflow(
        "diamond",
        input=Item,
        templates=[
            Template(
                name="diamond",
                steps=[
                    StepSpec(id="a", tool="step_a", args={"n": "${input.n}"}),
                    StepSpec(id="b", tool="step_b", args={"n": "${steps.a.output.n}"}),
                    StepSpec(id="c", tool="step_c", args={"n": "${steps.a.output.n}"}),
                    StepSpec(
                        id="d",
                        tool="step_d",
                        args={"n": "${steps.b.output.n}"},
                        depends_on=["b", "c"],
                    ),
                ],
            )
        ],
    )
    return app


app = build_app()
"""What `stalwart worker --app bench.throughput:app` runs."""


# -- the producer (a process of its own) ---------------------------------------------------------


async def produce(url: str, jobs: int) -> dict[str, float]:
    """Submit `jobs` diamond jobs one at a time; wall-clock times of the first and last submit,
    and this process's CPU seconds over the loop."""
    producer = build_app(url)
    store = producer.store()
    try:
        client = producer.client(store)
        cpu = time.process_time()
        first = time.time()
        for i in range(jobs):
            await client.submit("diamond", {"n": i})
        last = time.time()
        cpu = time.process_time() - cpu
    finally:
        await store.close()
    return {"first_submit": first, "last_submit": last, "jobs": jobs, "cpu": cpu}


def producer_main(url: str, jobs: int) -> None:
    print(json.dumps(asyncio.run(produce(url, jobs))), flush=True)


# -- the run --------------------------------------------------------------------------------------


@dataclass
class Result:
    backend: str
    jobs: int
    completed: int
    statuses: dict[str, int]
    seconds: float
    submit_seconds: float
    p50: float
    p95: float
    max_latency: float
    commit_limit: float
    cpu: dict[str, float] = field(default_factory=dict)
    worker_problems: list[str] = field(default_factory=list)
    slowest: tuple[str, float] = ("", 0.0)
    slowest_timeline: list[str] = field(default_factory=list)

    @property
    def jobs_per_second(self) -> float:
        return self.jobs / self.seconds

    @property
    def steps_per_second(self) -> float:
        return self.jobs * STEPS_PER_JOB / self.seconds


def migrate(url: str) -> None:
    async def go() -> None:
        store = build_app(url).store()
        try:
            await store.migrate()
        finally:
            await store.close()

    asyncio.run(go())


class Producer:
    """The producer subprocess: this file with `--produce-into`."""

    def __init__(self, url: str, jobs: int, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--produce-into", url, "--jobs", str(jobs)],
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )

    def failed(self) -> bool:
        return self.proc.poll() not in (None, 0)

    def result(self, timeout: float = 600) -> dict[str, float]:
        out, _ = self.proc.communicate(timeout=timeout)
        if self.proc.returncode != 0:
            raise RuntimeError(f"the producer failed with exit code {self.proc.returncode}")
        return {k: float(v) for k, v in json.loads(out.strip().splitlines()[-1]).items()}

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def settled_count(url: str) -> int:
    marks = ",".join("?" * len(SETTLED))
    return int(rows(url, f"SELECT count(*) FROM jobs WHERE status IN ({marks})", SETTLED)[0][0])


def run_once(
    backend: str,
    url: str,
    args: argparse.Namespace,
    tmp: Path,
    datadir: Path | None,
    before_run: Callable[[], None] | None = None,
) -> Result:
    """Migrate, measure the raw commit limit, then run producer and workers to the end."""
    migrate(url)
    limit = commit_rate(url, clients=2, seconds=args.commit_seconds)
    if before_run is not None:
        before_run()
    extra = {}
    if args.poll_interval is not None:
        extra["STALWART_POLL_INTERVAL_SECONDS"] = str(args.poll_interval)
    env = child_env(extra, drop=["STALWART_DATABASE_URL", "STALWART_APP"])
    workers = [
        WorkerProcess(
            url,
            "bench.throughput:app",
            args.concurrency,
            f"bench-{backend}-{i}",
            tmp / f"worker-{backend}-{i}.log",
            env=env,
        )
        for i in range(args.workers)
    ]
    producer: Producer | None = None
    times: dict[str, float] = {}
    cpu: dict[str, float] = {}
    try:
        with workers_stopped(workers):
            if args.preload:  # enqueue everything first, then start the workers
                producer = Producer(url, args.jobs, env)
                times = producer.result()
            for w in workers:
                w.start()
            for w in workers:
                w.wait_ready()
            workers_cpu = sum(process_cpu(w.pid) for w in workers)
            pg_cpu = postgres_cpu(datadir) if datadir else 0.0
            busy, total = machine_cpu()
            if not args.preload:
                producer = Producer(url, args.jobs, env)
            deadline = time.monotonic() + args.timeout
            settled = 0
            while time.monotonic() < deadline:
                time.sleep(0.5)
                for w in workers:
                    if not w.alive():
                        raise RuntimeError(f"worker {w.worker_id} died:\n{w.tail()}")
                if producer is not None and producer.failed():
                    producer.result()
                settled = settled_count(url)
                if settled >= args.jobs:
                    break
            cpu["workers"] = sum(process_cpu(w.pid) for w in workers) - workers_cpu
            cpu["postgres"] = (postgres_cpu(datadir) if datadir else 0.0) - pg_cpu
            busy2, total2 = machine_cpu()
            cpu["machine busy"] = busy2 - busy
            cpu["machine total"] = total2 - total
            if not args.preload:
                assert producer is not None
                times = producer.result()
    finally:
        if producer is not None:
            producer.kill()
    cpu["producer"] = 0.0 if args.preload else times["cpu"]
    statuses = {
        str(s): int(n) for s, n in rows(url, "SELECT status, count(*) FROM jobs GROUP BY status")
    }
    latencies = [
        float(f) - float(c)
        for c, f in rows(url, "SELECT created, finished FROM jobs WHERE status = 'completed'")
    ]
    last_finished = rows(url, "SELECT max(finished) FROM jobs")[0][0]
    slowest, timeline = slowest_job(url, float("inf") if args.preload else 1.0)
    # The clock: from the first submit (or, with --preload, from the first worker ready).
    start = min(w.ready_at for w in workers) if args.preload else times["first_submit"]
    seconds = float(last_finished) - start if last_finished else float("nan")
    if args.preload:
        latencies = [float(f) - start for (f,) in rows(url, "SELECT finished FROM jobs")]
    return Result(
        backend=backend,
        jobs=args.jobs,
        completed=statuses.get("completed", 0),
        statuses=statuses,
        seconds=seconds if settled >= args.jobs else float("inf"),
        submit_seconds=times["last_submit"] - times["first_submit"],
        p50=percentile(latencies, 50),
        p95=percentile(latencies, 95),
        max_latency=max(latencies, default=float("nan")),
        commit_limit=limit,
        cpu=cpu,
        worker_problems=[p for w in workers for p in w.problems()],
        slowest=slowest,
        slowest_timeline=timeline,
    )


def slowest_job(url: str, explain_over: float = 1.0) -> tuple[tuple[str, float], list[str]]:
    """The completed job with the longest latency, and its event timeline if it took longer
    than `explain_over` seconds (a stall worth a look)."""
    found = rows(
        url,
        "SELECT id, finished - created, created FROM jobs WHERE status = 'completed' "
        "ORDER BY 2 DESC LIMIT 1",
    )
    if not found:
        return ("", 0.0), []
    job_id, latency, created = str(found[0][0]), float(found[0][1]), float(found[0][2])
    timeline = []
    if latency > explain_over:
        for at, kind, step, actor in rows(
            url,
            "SELECT at, kind, step_key, actor FROM events WHERE job_id = ? ORDER BY id",
            (job_id,),
        ):
            timeline.append(f"+{(float(at) - created) * 1000:.0f}ms {kind} {step or ''} {actor}")
    return (job_id, latency), timeline


def report(result: Result, describe: str, args: argparse.Namespace) -> list[str]:
    r = result
    poll = (
        f"workers' STALWART_POLL_INTERVAL_SECONDS={args.poll_interval:g}"
        if args.poll_interval is not None
        else "workers' poll interval: default (0.5 s)"
    )
    if r.backend == "postgres":
        poll += " (no effect here: PostgreSQL workers wake on LISTEN/NOTIFY and poll at most every "
        poll += "notify_poll_interval_seconds, 1 s)"
    mode = (
        "all enqueued first, then drained (--preload)"
        if args.preload
        else "enqueued while the workers drain"
    )
    cpu = r.cpu
    wall = cpu.get("machine total", 0.0) / (os.cpu_count() or 1)
    lines = [
        f"{r.backend}: {describe}; {os.cpu_count()} cores, load average {load_average()}",
        f"  {r.jobs} diamond jobs (A -> B,C -> D, no-op), 1 producer, {args.workers} worker "
        f"processes x concurrency {args.concurrency}, {mode}; {poll}",
        f"  completed:            {r.completed}/{r.jobs}"
        + ("" if r.completed == r.jobs else f"   statuses: {r.statuses}"),
        f"  {'first worker ready' if args.preload else 'first submit'} -> last finished: "
        f"{r.seconds:.2f} s; the producer's submit loop took {r.submit_seconds:.2f} s "
        f"({r.jobs / r.submit_seconds:.0f} submits/s"
        + (", before the workers started)" if args.preload else ", while the workers ran)"),
        f"  throughput:           {r.jobs_per_second:7.1f} jobs/s   {r.steps_per_second:7.1f} "
        "steps/s",
        f"  job latency:          p50 {r.p50 * 1000:7.1f} ms   p95 {r.p95 * 1000:7.1f} ms   "
        f"max {r.max_latency * 1000:.1f} ms"
        + ("   (from the first worker ready: all jobs were queued then)" if args.preload else ""),
        f"  raw commit limit:     {r.commit_limit:7.1f} commits/s (INSERT ~100 B + UPDATE + "
        "COMMIT, 2 concurrent clients)",
        f"  steps per raw commit: {r.steps_per_second / r.commit_limit:7.2f}",
        f"  CPU seconds in the run ({wall:.1f} s x {os.cpu_count()} cores = "
        f"{cpu.get('machine total', 0.0):.1f}): producer {cpu.get('producer', 0.0):.1f}, "
        f"workers {cpu.get('workers', 0.0):.1f}, "
        + (f"postgres {cpu.get('postgres', 0.0):.1f}, " if r.backend == "postgres" else "")
        + f"whole machine busy {cpu.get('machine busy', 0.0):.1f}",
    ]
    target = TARGET_JOBS_PER_SECOND.get(r.backend)
    if target is not None:
        ok = r.jobs_per_second >= target and r.completed == r.jobs
        steps = target * STEPS_PER_JOB
        lines.append(f"  target: >= {target:.0f} jobs/s ({steps:.0f} steps/s): {verdict(ok)}")
    if r.slowest_timeline:
        lines.append(f"  slowest job {r.slowest[0]}: " + "; ".join(r.slowest_timeline))
    if r.worker_problems:
        lines.append(f"  worker log problems ({len(r.worker_problems)}): {r.worker_problems[:3]}")
    return lines


STATS_SQL = (
    "SELECT calls, total_exec_time, mean_exec_time, rows, "
    "regexp_replace(query, '\\s+', ' ', 'g') FROM pg_stat_statements "
    "WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) "
    "ORDER BY total_exec_time DESC LIMIT ?"
)


def enable_pg_stat_statements(server: PgServer) -> None:
    """Load pg_stat_statements (a restart) so the run can say where the server's time went."""
    pg_execute(server.url(), "ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'")
    server.restart()


def pg_top_statements(url: str, limit: int = 12) -> list[str]:
    """The statements that took most of the server's execution time during the run."""
    found = rows(url, STATS_SQL, (limit,))
    total = float(
        rows(url, "SELECT coalesce(sum(total_exec_time), 0) FROM pg_stat_statements")[0][0]
    )
    lines = [
        f"  pg_stat_statements: {total / 1000:.2f} s of statement execution in all; the top "
        f"{len(found)}:",
        "       calls   total ms   mean µs  statement",
    ]
    for calls, total_ms, mean_ms, _, query in found:
        text = str(query)
        text = text if len(text) <= 110 else text[:107] + "..."
        lines.append(
            f"  {int(calls):10d} {float(total_ms):10.1f} {float(mean_ms) * 1000:9.1f}  {text}"
        )
    return lines


def run_backend(backend: str, args: argparse.Namespace, tmp: Path) -> tuple[Result, list[str]]:
    """One whole run on a fresh database of `backend`; the result and its summary lines."""
    if backend == "sqlite":
        url = f"sqlite:///{tmp / 'throughput.db'}"
        result = run_once(backend, url, args, tmp, None)
        return result, report(result, "sqlite, WAL, synchronous=FULL", args)
    with postgres_server() as server:
        if args.pg_stat_statements:
            enable_pg_stat_statements(server)
        url = server.create_database("throughput")
        describe = pg_describe(url)
        reset = None
        if args.pg_stat_statements:
            pg_execute(url, "CREATE EXTENSION pg_stat_statements")

            def reset() -> None:
                pg_execute(url, "SELECT pg_stat_statements_reset()")

        result = run_once(backend, url, args, tmp, server.datadir, reset)
        lines = report(result, describe, args)
        if args.pg_stat_statements:
            lines += pg_top_statements(url)
    return result, lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["postgres", "sqlite", "both"], default="both")
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument(
        "--poll-interval",
        type=float,
        default=0.05,
        help="STALWART_POLL_INTERVAL_SECONDS for the workers (default 0.05; 0 = leave the "
        "default of 0.5 s)",
    )
    parser.add_argument(
        "--preload",
        action="store_true",
        help="enqueue all jobs before starting the workers (worker capacity alone)",
    )
    parser.add_argument(
        "--pg-stat-statements",
        action="store_true",
        help="PostgreSQL: load pg_stat_statements and print the statements that took the most "
        "server time (a profiling aid; it costs a little throughput)",
    )
    parser.add_argument("--commit-seconds", type=float, default=3.0)
    parser.add_argument("--timeout", type=float, default=300.0, help="give up after this long")
    parser.add_argument("--produce-into", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.produce_into:
        producer_main(args.produce_into, args.jobs)
        return
    if args.poll_interval == 0:
        args.poll_interval = None
    summary: list[str] = []
    failed = False
    with tempfile.TemporaryDirectory(prefix="stalwart-bench-") as tmp:
        for backend in backends(args.backend):
            result, lines = run_backend(backend, args, Path(tmp))
            failed |= result.completed != result.jobs
            summary += lines
    print("\n".join(summary))
    if failed:
        raise SystemExit(1)


if __name__ == "__main__":
    run_main(main)
