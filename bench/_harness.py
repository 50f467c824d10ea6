"""Shared plumbing for the benchmarks: a durable private PostgreSQL server, fresh databases,
raw commit costs, `stalwart worker` subprocesses, and clean shutdown.

Import it as `bench._harness` with the repository root on the path (run the benchmarks from the
root with `PYTHONPATH=.`); `stalwart worker --app bench.<script>:app` finds the same modules
because the CLI puts the current directory on the path.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from stalwart import App, Settings, StepSpec, Template, ToolContext

if TYPE_CHECKING:
    from tests.pgserver import PgServer

REPO_ROOT = Path(__file__).resolve().parent.parent
PAYLOAD = "x" * 100
BACKENDS = ("sqlite", "postgres")


def backends(choice: str) -> list[str]:
    """`both` as the two backends, in the order they are measured; otherwise the one named."""
    return list(BACKENDS) if choice == "both" else [choice]


def exit_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit, so `finally` blocks stop workers and the server."""

    def handler(signum: int, frame: FrameType | None) -> None:
        print("terminated: stopping workers and the database server", file=sys.stderr)
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


def run_main(main: Callable[[], None]) -> None:
    """Run a benchmark's `main`: SIGTERM and Ctrl-C unwind through its `finally` blocks (workers
    stopped, the server stopped and deleted) and end with one line instead of a traceback."""
    exit_on_sigterm()
    try:
        main()
    except KeyboardInterrupt:
        print("interrupted: workers and the database server were stopped", file=sys.stderr)
        raise SystemExit(130) from None


# -- PostgreSQL ----------------------------------------------------------------------------------


@contextlib.contextmanager
def postgres_server() -> Iterator[PgServer]:
    """A private PostgreSQL 15 server with default durability (fsync on, synchronous_commit on),
    stopped and deleted on exit, Ctrl-C and exceptions included."""
    try:
        from tests import pgserver
    except ImportError as exc:
        raise SystemExit(
            f"cannot import tests.pgserver ({exc}): run from the repository root with PYTHONPATH=."
        ) from None
    reason = pgserver.available()
    if reason is not None:
        raise SystemExit(f"PostgreSQL cannot run here: {reason}")
    with pgserver.started(durable=True) as server:
        yield server


def pg_describe(url: str) -> str:
    """One line: server version and the settings that decide what a commit costs."""
    import psycopg

    names = ("server_version", "fsync", "synchronous_commit", "wal_sync_method", "full_page_writes")
    with psycopg.connect(url, autocommit=True) as con:
        values = {n: con.execute(f"SHOW {n}").fetchone()[0] for n in names}  # type: ignore[index]
    version = str(values.pop("server_version")).split()[0]
    return f"postgresql {version}, " + ", ".join(f"{k}={v}" for k, v in values.items())


def pg_execute(url: str, sql: str) -> None:
    """Run one statement in autocommit."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as con:
        con.execute(sql)


# -- raw commits ---------------------------------------------------------------------------------

BARE_TABLE_PG = "CREATE TABLE IF NOT EXISTS bare (id BIGSERIAL PRIMARY KEY, payload TEXT, n INT)"
BARE_TABLE_SQLITE = "CREATE TABLE IF NOT EXISTS bare (id INTEGER PRIMARY KEY, payload TEXT, n INT)"


class _Committer:
    """One client that commits single-row transactions: INSERT ~100 bytes, UPDATE, COMMIT."""

    def __init__(self, url: str, synchronous: str = "FULL") -> None:
        self.pg = url.startswith(("postgresql://", "postgres://"))
        self._n = 0
        if self.pg:
            import psycopg

            self._pg = psycopg.connect(url, autocommit=False)
            self._pg.execute(BARE_TABLE_PG)
            self._pg.commit()
        else:
            from stalwart.store.sqlite.connection import connect, path_from_url

            self._lite = connect(path_from_url(url), synchronous=synchronous)
            self._lite.execute(BARE_TABLE_SQLITE)

    def commit_one(self) -> None:
        self._n += 1
        if self.pg:
            row = self._pg.execute(
                "INSERT INTO bare (payload, n) VALUES (%s, %s) RETURNING id", (PAYLOAD, self._n)
            ).fetchone()
            assert row is not None
            self._pg.execute("UPDATE bare SET n = n + 1 WHERE id = %s", (row[0],))
            self._pg.commit()
        else:
            con: sqlite3.Connection = self._lite
            con.execute("BEGIN IMMEDIATE")
            cur = con.execute("INSERT INTO bare (payload, n) VALUES (?, ?)", (PAYLOAD, self._n))
            con.execute("UPDATE bare SET n = n + 1 WHERE id = ?", (cur.lastrowid,))
            con.execute("COMMIT")

    def close(self) -> None:
        if self.pg:
            self._pg.close()
        else:
            self._lite.close()


def bare_commit_us(url: str, iterations: int = 2000, synchronous: str = "FULL") -> float:
    """Microseconds for one committed single-row transaction (INSERT ~100 B + UPDATE + COMMIT),
    from one client, on the database at `url` (`sqlite:///...` or `postgresql://...`)."""
    client = _Committer(url, synchronous)
    try:
        for _ in range(min(100, iterations)):  # warm up: connection, catalog, first pages
            client.commit_one()
        start = time.perf_counter()
        for _ in range(iterations):
            client.commit_one()
        return (time.perf_counter() - start) / iterations * 1e6
    finally:
        client.close()


def commit_rate(
    url: str, clients: int = 2, seconds: float = 3.0, synchronous: str = "FULL"
) -> float:
    """Committed single-row transactions per second with `clients` concurrent clients (threads,
    each with its own connection: the drivers release the GIL while they wait on I/O)."""
    committers = [_Committer(url, synchronous) for _ in range(clients)]
    counts = [0] * clients
    go = threading.Barrier(clients + 1)
    stop = threading.Event()
    errors: list[BaseException] = []

    def loop(i: int) -> None:
        try:
            go.wait()
            while not stop.is_set():
                committers[i].commit_one()
                counts[i] += 1
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=loop, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    go.wait()
    start = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    for c in committers:
        c.close()
    if errors:
        raise errors[0]
    return sum(counts) / elapsed


# -- worker subprocesses -------------------------------------------------------------------------


def stalwart_command() -> list[str]:
    """How to run the `stalwart` CLI of this interpreter's environment."""
    script = Path(sys.executable).with_name("stalwart")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from stalwart.cli.main import main; main()"]


def child_env(extra: dict[str, str] | None = None, drop: Sequence[str] = ()) -> dict[str, str]:
    """This environment with the repository root on PYTHONPATH, `drop` removed, `extra` added."""
    env = {k: v for k, v in os.environ.items() if k not in drop}
    paths = [str(REPO_ROOT), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    env.update(extra or {})
    return env


class LoggedProcess:
    """A subprocess whose output goes to the file `log`: its tail, and its error lines."""

    log: Path

    def tail(self, lines: int = 30) -> str:
        """The last `lines` of the log."""
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:]) or "(empty log)"

    def problems(self) -> list[str]:
        """Lines of the log that look like errors or tracebacks."""
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return []
        # Text lines, and JSON lines (the log format of a process whose stderr is a file).
        json_keys = ('"level": "error"', '"level": "critical"')
        keys = ("Traceback", "ERROR", "CRITICAL", "error:", *json_keys)
        return [line for line in text.splitlines() if any(k in line for k in keys)]


@dataclass
class WorkerProcess(LoggedProcess):
    """One `stalwart worker` subprocess; its stderr goes to `log`."""

    url: str
    app_spec: str
    concurrency: int
    worker_id: str
    log: Path
    env: dict[str, str] = field(default_factory=child_env)
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    ready_at: float = 0.0
    """Wall-clock time (`time.time()`) when `wait_ready` saw the ready file."""

    @property
    def ready_file(self) -> Path:
        """Where the worker says it is ready (`--ready-file`): its log level hides the log line."""
        return self.log.with_suffix(".ready")

    def start(self) -> WorkerProcess:
        argv = [
            *stalwart_command(),
            "--database-url",
            self.url,
            "--app",
            self.app_spec,
            "worker",
            "--concurrency",
            str(self.concurrency),
            "--worker-id",
            self.worker_id,
            "--log-level",
            "warning",
            "--ready-file",
            str(self.ready_file),
        ]
        with contextlib.suppress(FileNotFoundError):
            self.ready_file.unlink()  # an earlier run's
        with self.log.open("ab") as out:
            self.started_at = time.perf_counter()
            self.proc = subprocess.Popen(
                argv, cwd=REPO_ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT
            )
        return self

    def wait_ready(self, timeout: float = 60.0) -> float:
        """Wait for the worker's ready file; seconds since `start()`."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"worker {self.worker_id} exited with {self.proc.returncode}:\n{self.tail()}"
                )
            if self.ready_file.exists():
                self.ready_at = time.time()
                return time.perf_counter() - self.started_at
            time.sleep(0.01)
        raise RuntimeError(f"worker {self.worker_id} not ready after {timeout}s:\n{self.tail()}")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill9(self) -> None:
        """SIGKILL, and reap."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM (the worker drains), then SIGKILL if it has not exited within `timeout`."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill9()


@contextlib.contextmanager
def workers_stopped(workers: list[WorkerProcess]) -> Iterator[list[WorkerProcess]]:
    """Stop every worker on the way out, whatever happened."""
    try:
        yield workers
    finally:
        for w in workers:
            if w.proc is not None and w.proc.poll() is None:
                w.proc.send_signal(signal.SIGTERM)
        for w in workers:
            w.stop()


# -- CPU accounting ------------------------------------------------------------------------------

_TICKS = os.sysconf("SC_CLK_TCK")


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system, all threads) a live process has used; 0 if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICKS


def postgres_cpu(datadir: Path) -> float:
    """CPU seconds used by a PostgreSQL server's live processes: the postmaster and its children
    (backends of connections closed earlier are not counted)."""
    try:
        postmaster = int((datadir / "postmaster.pid").read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return 0.0
    total = process_cpu(postmaster)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid == postmaster:
            total += process_cpu(int(entry.name))
    return total


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, all cores (/proc/stat)."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    total = sum(values[:8])
    return (total - idle) / _TICKS, total / _TICKS


# -- numbers -------------------------------------------------------------------------------------


def load_average() -> str:
    """The 1-minute load average now: other work on the machine skews every figure."""
    return f"{os.getloadavg()[0]:.1f}"


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) by linear interpolation; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def pg_placeholders(sql: str) -> str:
    """SQL with `?` placeholders as psycopg's `%s` (a literal `%` doubled first)."""
    return sql.replace("%", "%%").replace("?", "%s")


def rows(url: str, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    """One statement on either backend, on a short-lived connection (`?` placeholders)."""
    if url.startswith(("postgresql://", "postgres://")):
        import psycopg

        with psycopg.connect(url, autocommit=True) as con:
            return con.execute(pg_placeholders(sql), tuple(params)).fetchall()
    from stalwart.store.sqlite.connection import path_from_url

    con2 = sqlite3.connect(path_from_url(url), timeout=30)
    try:
        return con2.execute(sql, tuple(params)).fetchall()
    finally:
        con2.close()


class Empty(BaseModel):
    """No arguments, no result."""


def chain_app(settings: Settings, steps: int) -> App:
    """An app with one no-op tool and a workflow `chain` of `steps` sequential steps (the
    step-cost benchmarks' job)."""
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
