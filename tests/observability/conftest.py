"""Fixtures for the metrics and alert tests: a database per backend (`[sqlite]`,
`[postgres]`), a migrated store on it, `stalwart worker` subprocesses (with `--metrics-port`)
that are always reaped, and reading a `/metrics` answer."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from tests.integration.conftest import Worker, Workers

from stalwart.settings import Settings
from stalwart.store import Store, open_store

BACKENDS = ("sqlite", "postgres")
SERVER_APP = "tests.api.server_app:app"


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """The backend under test."""
    return str(request.param)


@pytest.fixture
def db_url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """A migrated database for this test only (PostgreSQL: the suite's private server)."""
    if backend == "sqlite":
        return f"sqlite:///{tmp_path}/observability.db"
    return str(request.getfixturevalue("pg_url"))


def settings_for(url: str, **fields: Any) -> Settings:
    """Test settings on `url` (SQLite without fsync: behaviour, not durability)."""
    return Settings(database_url=url, sqlite_synchronous="OFF", **fields)


@pytest.fixture
async def store(db_url: str) -> AsyncIterator[Store]:
    """A migrated store on the test's database."""
    opened = open_store(db_url, settings_for(db_url))
    try:
        await opened.migrate()
        yield opened
    finally:
        await opened.close()


# -- reading /metrics -----------------------------------------------------------------------------


@dataclass
class Scrape:
    """One `/metrics` answer: every sample as (name, labels) -> value."""

    samples: dict[tuple[str, frozenset[tuple[str, str]]], float]
    text: str

    def value(self, name: str, **labels: str) -> float:
        """The one sample of `name` with exactly these labels (0 when absent)."""
        return self.samples.get((name, frozenset(labels.items())), 0.0)

    def total(self, name: str, **labels: str) -> float:
        """The sum of the samples of `name` whose labels include these."""
        want = set(labels.items())
        return sum(v for (n, ls), v in self.samples.items() if n == name and want <= ls)

    def has(self, name: str) -> bool:
        """Whether any sample of `name` is there."""
        return any(n == name for n, _ in self.samples)

    def names(self) -> set[str]:
        """Every sample name."""
        return {n for n, _ in self.samples}

    def counters(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        """The database-derived counters and histogram counts (the global figures)."""
        return {
            key: value
            for key, value in self.samples.items()
            if key[0].startswith("stalwart_")
            and not key[0].startswith("stalwart_worker_")
            and key[0].endswith(("_total", "_count", "_bucket"))
        }


def parse(text: str) -> Scrape:
    """Parse the Prometheus text format."""
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = float(sample.value)
    return Scrape(samples, text)


def scrape(url: str) -> Scrape:
    """GET a metrics endpoint and parse it."""
    response = httpx.get(url, timeout=30)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return parse(response.text)


# -- worker subprocesses --------------------------------------------------------------------------


class WorkerProcesses(Workers):
    """`stalwart worker` subprocesses of the server tests' app, reaped at teardown."""

    def start(  # type: ignore[override]
        self,
        db_url: str,
        *args: str,
        env: dict[str, str] | None = None,
        name: str | None = None,
    ) -> Worker:
        # The workers' own default concurrency (worker_concurrency), which the metrics show.
        return super().start(db_url, SERVER_APP, env=env, name=name, args=args, concurrency=10)


@pytest.fixture
def worker_processes(tmp_path: Path) -> Iterator[WorkerProcesses]:
    """Start worker subprocesses; all are gone after the test."""
    pool = WorkerProcesses(tmp_path)
    try:
        yield pool
    finally:
        pool.close()


def wait_until(predicate: Any, timeout: float, what: str, interval: float = 0.05) -> None:
    """Poll `predicate` until it holds; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    if not predicate():
        pytest.fail(f"timed out after {timeout}s waiting for {what}")
