"""HTTP API load: `POST /v1/jobs` at increasing concurrency against a real `stalwart serve`.

For each backend (SQLite, then PostgreSQL): a fresh database (a temporary SQLite file with the
defaults, WAL and `synchronous=FULL`; a private PostgreSQL server with fsync and
synchronous_commit on, from tests/pgserver.py), `stalwart db migrate`, a submitter key from
`stalwart keys create`, then `stalwart --app examples.app:app serve --workers 0` as a subprocess
on 127.0.0.1 and a free port (API only: nothing runs the jobs, so each one stays queued;
`STALWART_MAX_QUEUE_DEPTH` is set to 10,000,000 so the queue never fills).

The load comes from this process, over HTTP/1.1 keep-alive connections, one per loop: at
each concurrency level N, N loops POST `{"workflow": "onboarding", "input": {"user_id":
"u-<n>"}}` back to back, each with a distinct input (and, with `--idempotency-keys`, a distinct
`Idempotency-Key`, so each submit also writes and checks its dedup key), for a warm-up, then for
`--seconds`. Each loop has its own `httpx.AsyncClient` (a pool of one connection): one shared
client with a pool of N connections (`--shared-pool`) spends client CPU on its pool that grows
with N (httpcore checks every connection for every queued request), enough at N = 64 for the
client, not the server, to set the rate. Printed per level: requests measured, requests/s, p50
and p99 latency of the successful ones, non-2xx answers and transport errors (not counted as
successes), the CPU the server (and its event-loop thread), this client, PostgreSQL and the
whole machine used, the server's CPU per request, and the jobs already in the queue when the
level began (each submit counts the tenant's unfinished jobs).

`--healthz` adds a baseline first: `GET /healthz` (no key, no database) at the same levels, the
server's bare request rate through uvicorn and FastAPI on this machine.

Client and server share the machine's cores: on a small machine the client's own CPU is part of
what limits the rate, and it is printed beside it.

Total time is bounded: per backend, the start-up (at most about 60 s for PostgreSQL, a few
seconds otherwise), then per level `--warmup` + `--seconds` plus at most the last requests'
10 s timeout. The server and PostgreSQL are stopped on exit, Ctrl-C and SIGTERM included.

Run from the repository root (the server imports `examples.app`; this script imports
`bench._harness` and, for PostgreSQL, `tests.pgserver`):

    PYTHONPATH=. .venv/bin/python bench/api_load.py [--backend sqlite|postgres|both]
        [--seconds 5] [--warmup 1] [--levels 1,4,16,64] [--idempotency-keys] [--healthz]
        [--shared-pool]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import itertools
import json
import os
import platform
import shlex
import sqlite3
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import astuple, dataclass, field
from pathlib import Path

try:
    from bench._harness import (
        REPO_ROOT,
        LoggedProcess,
        backends,
        child_env,
        load_average,
        machine_cpu,
        percentile,
        pg_describe,
        postgres_cpu,
        postgres_server,
        process_cpu,
        rows,
        run_main,
        stalwart_command,
    )
except ModuleNotFoundError as exc:  # `python bench/...` without the repository root on the path
    raise SystemExit(f"{exc}: run from the repository root with PYTHONPATH=.") from None
import httpx

from stalwart.api.server import free_port
from stalwart.types import redact_url

HOST = "127.0.0.1"
APP_SPEC = "examples.app:app"
WORKFLOW = "onboarding"
TENANT = "bench"
MAX_QUEUE_DEPTH = 10_000_000
REQUEST_TIMEOUT = 10.0
READY_TIMEOUT = 60.0
SUBMIT = "POST /v1/jobs"
HEALTHZ = "GET /healthz"


# -- the server ------------------------------------------------------------------------------------


def cli(url: str, *args: str) -> list[str]:
    """A `stalwart` command line with the bench's app and database."""
    return [*stalwart_command(), "--app", APP_SPEC, "--database-url", url, *args]


def server_env() -> dict[str, str]:
    """The environment of every `stalwart` subprocess: the repository root on the path, the
    queue limit out of the way, no database or app from the caller's environment."""
    return child_env(
        {"STALWART_MAX_QUEUE_DEPTH": str(MAX_QUEUE_DEPTH)},
        drop=["STALWART_DATABASE_URL", "STALWART_APP"],
    )


def run_cli(argv: list[str]) -> str:
    """Run a `stalwart` command to completion; its stdout, or SystemExit with its stderr."""
    done = subprocess.run(
        argv, cwd=REPO_ROOT, env=server_env(), capture_output=True, text=True, timeout=120
    )
    if done.returncode != 0:
        raise SystemExit(
            f"{shlex.join(argv[len(stalwart_command()) :])} failed ({done.returncode}):\n"
            f"{done.stderr.strip() or done.stdout.strip()}"
        )
    return done.stdout


def prepare(url: str) -> str:
    """`stalwart db migrate`, then a submitter key for the bench's tenant: its token."""
    run_cli(cli(url, "db", "migrate"))
    key = ("keys", "create", "--tenant", TENANT, "--role", "submitter", "--name", "bench-api-load")
    out = run_cli(cli(url, "--json", *key))
    return str(json.loads(out)["token"])


@dataclass
class ServerProcess(LoggedProcess):
    """`stalwart serve --workers 0` as a subprocess; its output goes to `log`."""

    url: str
    log: Path
    port: int = field(default_factory=lambda: free_port(HOST))
    proc: subprocess.Popen[bytes] | None = None

    @property
    def argv(self) -> list[str]:
        return cli(
            self.url,
            "serve",
            "--host",
            HOST,
            "--port",
            str(self.port),
            "--workers",
            "0",
            "--log-level",
            "warning",
        )

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def shown(self) -> str:
        """The command line, fit to print (the database URL without a password)."""
        argv = [redact_url(a) for a in self.argv]
        argv[0] = Path(argv[0]).name
        return f"STALWART_MAX_QUEUE_DEPTH={MAX_QUEUE_DEPTH} {shlex.join(argv)}"

    def start(self) -> ServerProcess:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                self.argv, cwd=REPO_ROOT, env=server_env(), stdout=out, stderr=subprocess.STDOUT
            )
        return self

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> float:
        """Poll `/readyz` until it answers 200; seconds waited."""
        assert self.proc is not None
        start = time.monotonic()
        with httpx.Client(base_url=self.base_url, timeout=2.0) as client:
            while time.monotonic() - start < timeout:
                if self.proc.poll() is not None:
                    raise RuntimeError(
                        f"stalwart serve exited with {self.proc.returncode}:\n{self.tail()}"
                    )
                try:
                    if client.get("/readyz").status_code == 200:
                        return time.monotonic() - start
                except httpx.HTTPError:
                    pass
                time.sleep(0.05)
        raise RuntimeError(f"stalwart serve not ready after {timeout:g}s:\n{self.tail()}")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL if it has not exited within `timeout`."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# -- the load -------------------------------------------------------------------------------------


def loop_thread(pid: int) -> tuple[float, float]:
    """Seconds the main thread of process `pid` (the server's event loop) has run on a CPU, and
    waited in the run queue for one (/proc/PID/task/PID/schedstat); zeros if unreadable."""
    try:
        run, wait = Path(f"/proc/{pid}/task/{pid}/schedstat").read_text().split()[:2]
    except (OSError, ValueError):
        return 0.0, 0.0
    return int(run) / 1e9, int(wait) / 1e9


@dataclass(frozen=True)
class Cpu:
    """CPU seconds so far (or, as a difference, in a window)."""

    server: float
    """The server process, all threads."""
    client: float
    """This process (the load generator)."""
    db: float
    """PostgreSQL's processes (0 on SQLite)."""
    machine: float
    """The whole machine busy, all processes and cores (kernel threads included)."""
    loop_run: float
    """The server's main thread (its event loop) on a CPU."""
    loop_wait: float
    """The server's main thread runnable but waiting for a CPU."""

    @classmethod
    def now(cls, server_pid: int, db_cpu: Callable[[], float] | None) -> Cpu:
        run, wait = loop_thread(server_pid)
        return cls(
            server=process_cpu(server_pid),
            client=time.process_time(),
            db=db_cpu() if db_cpu is not None else 0.0,
            machine=machine_cpu()[0],
            loop_run=run,
            loop_wait=wait,
        )

    @property
    def other(self) -> float:
        """The machine busy outside the server, this client and PostgreSQL (CPU times count in
        clock ticks, so a few % either way is noise: a negative difference reads as 0)."""
        return max(0.0, self.machine - self.server - self.client - self.db)

    def __sub__(self, other: Cpu) -> Cpu:
        return Cpu(*(a - b for a, b in zip(astuple(self), astuple(other), strict=True)))


@dataclass
class Level:
    """What one concurrency level measured."""

    what: str
    concurrency: int
    queued_before: int
    latencies: list[float] = field(default_factory=list)
    """Seconds per successful (2xx) request started in the measured window."""
    statuses: Counter[str] = field(default_factory=Counter)
    """Answers in the measured window by status code (or transport error name)."""
    elapsed: float = 0.0
    cpu: Cpu = field(default_factory=lambda: Cpu(0, 0, 0, 0, 0, 0))
    """Seconds used in the measured window."""
    first_error: str = ""

    @property
    def requests(self) -> int:
        return sum(self.statuses.values())

    @property
    def ok(self) -> int:
        return len(self.latencies)

    @property
    def errors(self) -> int:
        return self.requests - self.ok

    @property
    def rate(self) -> float:
        return self.ok / self.elapsed if self.elapsed else 0.0

    def ms(self, q: float) -> float:
        return percentile(self.latencies, q) * 1000


@dataclass
class Load:
    """Where and how to send requests; `serial` numbers every submit of the run."""

    base_url: str
    token: str
    idempotency_keys: bool
    shared_pool: bool
    server_pid: int
    db_cpu: Callable[[], float] | None
    run_id: str = field(default_factory=lambda: f"{os.getpid()}-{time.time_ns()}")
    serial: itertools.count[int] = field(default_factory=itertools.count)


def clients(load: Load, concurrency: int) -> list[httpx.AsyncClient]:
    """The HTTP clients of one level: one per loop with one keep-alive connection each, or
    (`--shared-pool`) one whose pool holds all `concurrency` connections."""
    count, size = (1, concurrency) if load.shared_pool else (concurrency, 1)
    limits = httpx.Limits(max_connections=size, max_keepalive_connections=size)
    return [
        httpx.AsyncClient(
            base_url=load.base_url,
            limits=limits,
            timeout=REQUEST_TIMEOUT,
            headers={"Authorization": f"Bearer {load.token}"},
            http1=True,
            http2=False,
        )
        for _ in range(count)
    ]


async def measure(
    load: Load, what: str, concurrency: int, warmup: float, seconds: float, queued: int
) -> Level:
    """`concurrency` loops sending `what` back to back for `warmup` + `seconds`; only requests
    started after the warm-up are measured, and the rate is over the time from the end of the
    warm-up to the last measured answer."""
    level = Level(what, concurrency, queued)
    pool = clients(load, concurrency)
    start = time.perf_counter()
    measure_from = start + warmup
    stop_at = measure_from + seconds
    last_end = measure_from
    cpu_from = Cpu.now(load.server_pid, load.db_cpu)

    async def one(client: httpx.AsyncClient) -> None:
        nonlocal last_end
        if what == HEALTHZ:
            request = client.build_request("GET", "/healthz")
        else:
            n = next(load.serial)
            extra = {"Idempotency-Key": f"{load.run_id}-{n}"} if load.idempotency_keys else {}
            body = {"workflow": WORKFLOW, "input": {"user_id": f"u-{n}"}}
            request = client.build_request("POST", "/v1/jobs", json=body, headers=extra)
        began = time.perf_counter()
        try:
            response = await client.send(request)
            status = str(response.status_code)
            good = response.is_success
            problem = "" if good else f"{status} {response.text[:300]}"
        except httpx.HTTPError as exc:
            status, good, problem = type(exc).__name__, False, f"{type(exc).__name__}: {exc}"
        ended = time.perf_counter()
        if began < measure_from:
            return
        level.statuses[status] += 1
        last_end = max(last_end, ended)
        if good:
            level.latencies.append(ended - began)
        elif not level.first_error:
            level.first_error = problem

    async def loop(client: httpx.AsyncClient) -> None:
        while time.perf_counter() < stop_at:
            await one(client)

    async def cpu_marker() -> None:
        nonlocal cpu_from
        await asyncio.sleep(max(0.0, measure_from - time.perf_counter()))
        cpu_from = Cpu.now(load.server_pid, load.db_cpu)

    try:
        await asyncio.gather(cpu_marker(), *(loop(pool[i % len(pool)]) for i in range(concurrency)))
        cpu_to = Cpu.now(load.server_pid, load.db_cpu)
    finally:
        for client in pool:
            await client.aclose()
    level.elapsed = last_end - measure_from
    level.cpu = cpu_to - cpu_from
    return level


def queued_jobs(url: str) -> int:
    return int(rows(url, "SELECT count(*) FROM jobs")[0][0])


def run_backend(
    backend: str,
    url: str,
    describe: str,
    args: argparse.Namespace,
    tmp: Path,
    db_cpu: Callable[[], float] | None,
) -> list[str]:
    """Prepare the database, start the server, run the levels; the report's lines."""
    token = prepare(url)
    server = ServerProcess(url, tmp / f"serve-{backend}.log")
    levels: list[Level] = []
    try:
        server.start()
        ready = server.wait_ready()
        load = Load(
            server.base_url, token, args.idempotency_keys, args.shared_pool, server.pid, db_cpu
        )
        plan = [(HEALTHZ, n) for n in args.levels] if args.healthz else []
        plan += [(SUBMIT, n) for n in args.levels]
        for what, n in plan:
            queued = queued_jobs(url)
            level = asyncio.run(measure(load, what, n, args.warmup, args.seconds, queued))
            levels.append(level)
        alive = server.proc is not None and server.proc.poll() is None
    finally:
        server.stop()
    return report(backend, describe, server, ready, alive, levels, args)


# -- the report -----------------------------------------------------------------------------------


def report(
    backend: str,
    describe: str,
    server: ServerProcess,
    ready: float,
    alive: bool,
    levels: Sequence[Level],
    args: argparse.Namespace,
) -> list[str]:
    pg = backend == "postgres"
    keys = ", each with a distinct Idempotency-Key" if args.idempotency_keys else ""
    lines = [
        f"{backend}: {describe}; {os.cpu_count()} cores (client and server share them), load "
        f"average {load_average()}",
        f"  server: {server.shown()}",
        f"  ready after {ready:.2f} s; {WORKFLOW} jobs, a distinct input per request{keys}; "
        f"warm-up {args.warmup:g} s, then {args.seconds:g} s per level; HTTP/1.1 keep-alive, "
        + ("one client, pool = concurrency" if args.shared_pool else "one client per loop"),
        "  CPU as % of one core over the measured window: server = the server process, loop = "
        "its event-loop thread on a CPU, runq = that thread waiting for a CPU, client = this "
        "process" + (", pg = all PostgreSQL processes" if pg else "") + ", all = the whole "
        f"machine (at most {(os.cpu_count() or 1) * 100}%), other = all but those (the kernel's "
        "threads, anything else running); srv ms = server CPU per request; "
        "queued = jobs in the database when the level began",
    ]
    lines.append(
        f"  {'request':<14}{'conc':>5}{'requests':>10}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}"
        f"{'errors':>8}{'server':>8}{'loop':>6}{'runq':>6}{'client':>8}"
        + (f"{'pg':>6}" if pg else "")
        + f"{'all':>6}{'other':>7}{'srv ms':>8}{'queued':>8}"
    )
    for lv in levels:
        window = lv.elapsed or args.seconds

        def pct(seconds: float, width: int, window: float = window) -> str:
            return f"{seconds / window * 100:>{width - 1}.0f}%"

        per_req = lv.cpu.server / lv.requests * 1000 if lv.requests else float("nan")
        queued = "-" if lv.what == HEALTHZ else str(lv.queued_before)
        lines.append(
            f"  {lv.what:<14}{lv.concurrency:>5}{lv.requests:>10}{lv.rate:>9.1f}"
            f"{lv.ms(50):>9.2f}{lv.ms(99):>9.2f}{lv.errors:>8}"
            f"{pct(lv.cpu.server, 8)}{pct(lv.cpu.loop_run, 6)}{pct(lv.cpu.loop_wait, 6)}"
            f"{pct(lv.cpu.client, 8)}"
            + (pct(lv.cpu.db, 6) if pg else "")
            + f"{pct(lv.cpu.machine, 6)}{pct(lv.cpu.other, 7)}{per_req:>8.2f}{queued:>8}"
        )
    for lv in levels:
        if lv.errors:
            bad = {s: n for s, n in sorted(lv.statuses.items()) if not s.startswith("2")}
            lines.append(
                f"  errors at {lv.what} x {lv.concurrency}: {bad}; first: {lv.first_error}"
            )
    dupes = sum(lv.statuses.get("200", 0) for lv in levels if lv.what == SUBMIT)
    if dupes:
        lines.append(f"  {dupes} submits answered 200 (a duplicate) instead of 201")
    if not alive:
        lines.append(f"  the server had exited before the end:\n{server.tail()}")
    problems = server.problems()
    if problems:
        lines.append(f"  server log problems ({len(problems)}): {problems[:3]}")
    return lines


def parse_levels(text: str) -> list[int]:
    try:
        levels = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of integers: {text!r}") from None
    if not levels or min(levels) < 1:
        raise argparse.ArgumentTypeError("levels must be positive integers, e.g. 1,4,16,64")
    return levels


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per level")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds per level")
    parser.add_argument(
        "--levels", type=parse_levels, default=[1, 4, 16, 64], help="concurrency levels"
    )
    parser.add_argument(
        "--idempotency-keys",
        action="store_true",
        help="send a distinct Idempotency-Key with every submit (the dedup path)",
    )
    parser.add_argument(
        "--shared-pool",
        action="store_true",
        help="one httpx client whose pool holds every connection, instead of one client per "
        "loop (httpx's pool then costs the client CPU that grows with the concurrency)",
    )
    parser.add_argument(
        "--healthz",
        action="store_true",
        help="first GET /healthz at the same levels: the server's bare request rate",
    )
    args = parser.parse_args()
    if args.seconds <= 0 or args.warmup < 0:
        parser.error("--seconds must be positive and --warmup not negative")
    print(
        f"api_load: {platform.python_implementation()} {platform.python_version()}, "
        f"httpx {httpx.__version__}, {os.cpu_count()} cores, levels {args.levels}"
    )
    for backend in backends(args.backend):
        with tempfile.TemporaryDirectory(prefix="stalwart-bench-") as tmp:
            if backend == "sqlite":
                url = f"sqlite:///{Path(tmp) / 'api_load.db'}"
                describe = f"sqlite {sqlite3.sqlite_version}, WAL, synchronous=FULL (default)"
                lines = run_backend(backend, url, describe, args, Path(tmp), None)
            else:
                with postgres_server() as pg:
                    url = pg.create_database("api_load")
                    db_cpu = functools.partial(postgres_cpu, pg.datadir)
                    describe = pg_describe(url)
                    lines = run_backend(backend, url, describe, args, Path(tmp), db_cpu)
        print("\n".join(lines), flush=True)


if __name__ == "__main__":
    run_main(main)
