"""Observability overhead: step throughput with tracing and metrics on, against the same run
with them off, in one invocation.

Each measurement is a fresh child process (a tracer provider is global and set once per
process): it submits `--jobs` jobs of `--steps` sequential no-op steps to a fresh SQLite database
(WAL, synchronous=FULL) and runs one in-process worker (`--concurrency` slots) until all are
done; steps/s is steps over the time from the worker's start to the last completion.

- off: no tracer provider (OpenTelemetry's no-op), no metrics scrapes.
- on: an SDK tracer provider with Stalwart's id generator and a batching processor into an
  exporter that counts and drops the spans (the cost of making them, not of a network), plus
  the worker's metrics endpoint (`--metrics-port`), caught up with the log before the clock
  starts, scraped over HTTP every `--scrape-interval` seconds by another process, as
  Prometheus would. Every job is traced (the judged figure).
- sampled: as on, with head sampling at submit tracing 10% of the jobs
  (`OTEL_TRACES_SAMPLER=parentbased_traceidratio`, `OTEL_TRACES_SAMPLER_ARG=0.1`): what an
  operator can trade for the cost. Reported, not judged.

Rounds alternate the modes so drift on the machine hits all alike; the medians, the CPU seconds
per step of the measured process (all its threads) and the overhead are printed, with the
target: at most 10% fewer steps/s. `--breakdown` also measures tracing alone and metrics alone.

    PYTHONPATH=. .venv/bin/python bench/observability_overhead.py [--jobs 200] [--steps 5]
        [--concurrency 8] [--rounds 3] [--scrape-interval 1] [--breakdown]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench._harness import chain_app

from stalwart import App, Settings

TARGET_OVERHEAD = 0.10
MODES = ("off", "on", "sampled", "tracing", "metrics")
SAMPLED_RATIO = 0.1


def build_app(url: str, steps: int) -> App:
    """One no-op tool and a workflow of `steps` sequential steps."""
    settings = Settings(database_url=url, poll_interval_seconds=0.01, sqlite_synchronous="FULL")
    return chain_app(settings, steps)


def tracing_on(ratio: float = 1.0) -> Any:
    """An SDK provider whose exporter counts and drops spans, tracing `ratio` of the jobs
    (head sampling at submit); returns the provider and the exporter."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

    from stalwart.observability.tracing import tracer_provider

    class Counting(SpanExporter):
        spans = 0

        def export(self, spans: Sequence[Any]) -> SpanExportResult:
            Counting.spans += len(spans)
            return SpanExportResult.SUCCESS

    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    exporter = Counting()
    provider = tracer_provider(exporter, sampler=ParentBased(TraceIdRatioBased(ratio)))
    trace.set_tracer_provider(provider)
    return provider, exporter


SCRAPER = """
import sys, time, urllib.request
url, interval = sys.argv[1], float(sys.argv[2])
count = 0
try:
    while True:
        time.sleep(interval)
        urllib.request.urlopen(url, timeout=30).read()
        count += 1
        print(count, flush=True)
except KeyboardInterrupt:
    pass
"""


def start_scraper(url: str, interval: float) -> subprocess.Popen[str]:
    """Prometheus's part, in a process of its own (its CPU is not the worker's): GET the
    metrics every `interval` seconds, printing a count per scrape."""
    return subprocess.Popen(
        [sys.executable, "-c", SCRAPER, url, str(interval)], stdout=subprocess.PIPE, text=True
    )


def stop_scraper(proc: subprocess.Popen[str]) -> int:
    """Stop the scraper; how many scrapes it made."""
    proc.terminate()
    out, _ = proc.communicate(timeout=10)
    lines = out.split()
    return int(lines[-1]) if lines else 0


async def child(
    mode: str, url: str, jobs: int, steps: int, concurrency: int, scrape: float
) -> dict[str, Any]:
    """One measurement in this process: steps/s, spans made, scrapes served."""
    provider = exporter = None
    if mode in ("on", "tracing", "sampled"):
        provider, exporter = tracing_on(SAMPLED_RATIO if mode == "sampled" else 1.0)
    app = build_app(url, steps)
    store = app.store()
    await store.migrate()
    client = app.client(store)
    worker = app.worker(store=store, concurrency=concurrency, worker_id=f"bench-{mode}")
    metrics = None
    if mode in ("on", "metrics", "sampled"):
        from stalwart.observability.metrics import serve_metrics

        # The worker's endpoint, as `stalwart worker --metrics-port` serves it.
        metrics = serve_metrics(store, port=0, workers=lambda: [worker])
    for _ in range(jobs):
        await client.submit("chain", {})
    scraper = None
    if metrics is not None:
        # A deployment's exporter has caught up with the log long before: one scrape reads
        # the history (the jobs just submitted) before the clock starts.
        await asyncio.to_thread(_get, metrics.url)
        scraper = start_scraper(metrics.url, scrape)
    start = time.perf_counter()
    cpu_start = time.process_time()
    task = asyncio.create_task(worker.run())
    total = jobs * steps
    while worker.steps_run < total:
        if task.done():
            task.result()
            raise RuntimeError("the worker stopped before the jobs were done")
        await asyncio.sleep(0.005)
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu_start
    worker.stop()
    await task
    scrapes = 0
    if scraper is not None:
        scrapes = stop_scraper(scraper)
    if metrics is not None:
        metrics.close()
    done = await client.list(statuses=["completed"], limit=jobs + 1)
    assert len(done) == jobs, f"{len(done)} of {jobs} jobs completed"
    await store.close()
    spans = 0
    if provider is not None:
        provider.force_flush()
        spans = exporter.spans
    return {
        "steps_per_s": total / elapsed,
        "cpu_us_per_step": cpu / total * 1e6,
        "spans": spans,
        "scrapes": scrapes,
    }


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=60) as answer:
        return bytes(answer.read())


def run_child(mode: str, args: argparse.Namespace, directory: Path, n: int) -> dict[str, Any]:
    url = f"sqlite:///{directory / f'{mode}-{n}.db'}"
    out = subprocess.run(
        [
            sys.executable,
            __file__,
            "--child",
            mode,
            "--url",
            url,
            "--jobs",
            str(args.jobs),
            "--steps",
            str(args.steps),
            "--concurrency",
            str(args.concurrency),
            "--scrape-interval",
            str(args.scrape_interval),
        ],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--scrape-interval", type=float, default=1.0)
    parser.add_argument(
        "--breakdown",
        action="store_true",
        help="also measure tracing alone and metrics alone",
    )
    parser.add_argument("--child", choices=MODES)
    parser.add_argument("--url")
    args = parser.parse_args()
    if args.child:
        result = asyncio.run(
            child(
                args.child,
                args.url,
                args.jobs,
                args.steps,
                args.concurrency,
                args.scrape_interval,
            )
        )
        print(json.dumps(result))
        return
    modes = MODES if args.breakdown else MODES[:3]
    results: dict[str, list[dict[str, Any]]] = {mode: [] for mode in modes}
    with tempfile.TemporaryDirectory(prefix="stalwart-obs-") as tmp:
        for n in range(args.rounds):
            for mode in modes:
                results[mode].append(run_child(mode, args, Path(tmp), n))
    off = statistics.median(r["steps_per_s"] for r in results["off"])
    on = statistics.median(r["steps_per_s"] for r in results["on"])
    overhead = 1 - on / off
    spans = statistics.median(r["spans"] for r in results["on"])
    scrapes = statistics.median(r["scrapes"] for r in results["on"])
    print(
        f"observability overhead: {args.jobs} jobs x {args.steps} no-op steps, one worker with "
        f"{args.concurrency} slots, SQLite FULL, {os.cpu_count()} cores, median of {args.rounds}"
    )
    print(f"  off: {off:8.1f} steps/s   (rounds: {_rounds(results['off'])})")
    print(
        f"  on:  {on:8.1f} steps/s   (rounds: {_rounds(results['on'])}; {spans:.0f} spans, "
        f"{scrapes:.0f} scrapes every {args.scrape_interval:g} s)"
    )
    labels = {
        "sampled": f"on, {SAMPLED_RATIO:.0%} of jobs traced:",
        "tracing": "tracing alone:",
        "metrics": "metrics alone:",
    }
    for mode in modes[2:]:
        alone = statistics.median(r["steps_per_s"] for r in results[mode])
        print(
            f"  {labels[mode]} {alone:8.1f} steps/s   (rounds: {_rounds(results[mode])}; "
            f"overhead {1 - alone / off:.1%})"
        )
    verdict = "met" if overhead <= TARGET_OVERHEAD else "MISSED"
    print(f"  overhead: {overhead:.1%} (target at most {TARGET_OVERHEAD:.0%}): {verdict}")


def _rounds(rows: list[dict[str, Any]]) -> str:
    cpu = statistics.median(r["cpu_us_per_step"] for r in rows)
    return ", ".join(f"{r['steps_per_s']:.0f}" for r in rows) + f"; {cpu:.0f} us CPU/step"


if __name__ == "__main__":
    main()
