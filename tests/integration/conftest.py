"""Fixtures for the integration tests: worker subprocesses that are always reaped, the database
under test (every test asking for `db_url` runs once per backend, `[sqlite]` and `[postgres]`),
and helpers to read and write that database from the test process on either backend."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing
from pathlib import Path
from typing import IO, Any

import pytest

BACKENDS = ("sqlite", "postgres")

REPO = Path(__file__).resolve().parents[2]
APPS = "tests.integration.apps"

FAST_WORKER_ENV = {
    "STALWART_LEASE_SECONDS": "2",
    "STALWART_POLL_INTERVAL_SECONDS": "0.1",
    "STALWART_REAPER_INTERVAL_SECONDS": "0.3",
    "STALWART_DRAIN_SECONDS": "2",
}


class Worker:
    """One `stalwart worker` subprocess, its output in a log file."""

    def __init__(
        self, proc: subprocess.Popen[bytes], log_path: Path, log: IO[bytes], ready_file: Path
    ) -> None:
        self.proc = proc
        self.log_path = log_path
        self._log = log
        self.ready_file = ready_file

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            os.kill(self.proc.pid, sig)

    def kill(self) -> None:
        """SIGKILL and reap."""
        if self.alive():
            os.kill(self.proc.pid, signal.SIGCONT)  # a stopped process dies only once resumed
            self.proc.kill()
        self.proc.wait(timeout=10)
        self._log.close()

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM (drain), then SIGKILL if it does not exit in time; return the exit code."""
        if self.alive():
            os.kill(self.proc.pid, signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._log.close()
        return self.proc.returncode

    def output(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def ready(self) -> bool:
        """Whether this process wrote its ready file (`--ready-file`: whatever the log level)."""
        try:
            return bool(json.loads(self.ready_file.read_text())["pid"] == self.pid)
        except (OSError, ValueError, KeyError):
            return False

    def wait_ready(self, timeout: float) -> bool:
        """Poll for the worker's ready file; False if it exits or the time runs out first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.alive():
            if self.ready():
                return True
            time.sleep(0.05)
        return self.ready()

    def wait_for_output(self, text: str, timeout: float) -> bool:
        """Poll the log until `text` appears."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.output():
                return True
            time.sleep(0.05)
        return text in self.output()


class Workers:
    """Starts worker subprocesses and guarantees they are all gone at teardown."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.started: list[Worker] = []

    def start(
        self,
        db_url: str,
        app: str,
        *,
        env: dict[str, str] | None = None,
        concurrency: int = 4,
        name: str | None = None,
        args: Sequence[str] = (),
    ) -> Worker:
        index = len(self.started)
        log_path = self.tmp_path / f"worker-{name or index}.log"
        ready_file = log_path.with_suffix(".ready")
        log = open(log_path, "wb")  # noqa: SIM115 - closed by Worker.kill/stop
        full_env = {**os.environ, **FAST_WORKER_ENV, "PYTHONUNBUFFERED": "1", **(env or {})}
        full_env.pop("STALWART_APP", None)
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "stalwart.cli.main",
                "--database-url",
                db_url,
                "--app",
                app if ":" in app else f"{APPS}.{app}:app",
                "worker",
                "--concurrency",
                str(concurrency),
                "--worker-id",
                f"w{index}-{name or 'worker'}",
                "--ready-file",
                str(ready_file),
                *args,
            ],
            cwd=REPO,
            env=full_env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        worker = Worker(proc, log_path, log, ready_file)
        self.started.append(worker)
        return worker

    def close(self) -> None:
        for worker in self.started:
            if worker.alive():
                worker.kill()
            else:
                worker.proc.wait()
                worker._log.close()

    def logs(self, tail: int | None = 3000) -> str:
        """Every worker's output (the last `tail` characters of each), for a failure message."""
        parts = []
        for worker in self.started:
            text = worker.output()
            parts.append(f"--- worker pid {worker.pid} (exit {worker.proc.returncode}) ---")
            parts.append(text if tail is None else text[-tail:])
        return "\n".join(parts)


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Workers]:
    pool = Workers(tmp_path)
    try:
        yield pool
    finally:
        pool.close()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """The backend under test: "sqlite" or "postgres" (the part of the test id in brackets)."""
    return str(request.param)


@pytest.fixture
def db_url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """A database URL for this test only: a SQLite file in tmp_path, or a fresh, migrated
    PostgreSQL database on the suite's private server (tests/conftest.py, `pg_url`)."""
    if backend == "sqlite":
        return f"sqlite:///{tmp_path}/{request.node.originalname}.db"
    return str(request.getfixturevalue("pg_url"))


def is_postgres(db_url: str) -> bool:
    return db_url.startswith(("postgresql://", "postgres://"))


def sqlite_path(db_url: str) -> str:
    return db_url.removeprefix("sqlite:///")


def _pg_sql(sql: str) -> str:
    """SQLite's `?` placeholders as psycopg's `%s`, with every literal `%` doubled first. A `?`
    inside a '...' string literal stays as it is (the even parts of a split on `'` are the text
    outside literals; a doubled `''` inside one splits into an empty outside part)."""
    parts = sql.replace("%", "%%").split("'")
    return "'".join(p if i % 2 else p.replace("?", "%s") for i, p in enumerate(parts))


def query(db_url: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Read from the database in a short-lived connection of its own (`?` placeholders)."""
    if is_postgres(db_url):
        import psycopg

        with psycopg.connect(db_url, autocommit=True, connect_timeout=10) as con:
            return con.execute(_pg_sql(sql), params).fetchall()
    with closing(sqlite3.connect(sqlite_path(db_url), timeout=10)) as con:
        return con.execute(sql, params).fetchall()


def execute(db_url: str, sql: str, params: tuple[Any, ...] = ()) -> int:
    """Write to the database in a short-lived connection of its own, committed before this
    returns (`?` placeholders); the number of rows affected."""
    if is_postgres(db_url):
        import psycopg

        with psycopg.connect(db_url, autocommit=True, connect_timeout=10) as con:
            return con.execute(_pg_sql(sql), params).rowcount
    with closing(sqlite3.connect(sqlite_path(db_url), timeout=10)) as con, con:
        return con.execute(sql, params).rowcount


def wait_until(
    predicate: Callable[[], bool], timeout: float, interval: float = 0.1, what: str = ""
) -> None:
    """Poll `predicate` until it holds; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    if not predicate():
        pytest.fail(f"timed out after {timeout}s waiting for {what or predicate}")
