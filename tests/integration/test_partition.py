"""A worker cut off from PostgreSQL stops its own work before anyone else can take it.

Worker A reaches the database through a TCP proxy the test controls; worker B directly. A holds
both slots of a tool capped at 2 (its calls run until the test lets them go). The test cuts the
proxy: A's heartbeats fail, and by its own clock A gives its steps up before their leases can
expire in the database (decision 0032), so when B takes the slots over the cap still holds and
no step runs on two workers at once. Healed, A takes work again: B is killed, and A alone finishes
every job.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
from tests.fakes.tcp_proxy import TcpProxy
from tests.integration.apps import partition_app
from tests.integration.conftest import Workers, query, wait_until

from stalwart.client import Client
from stalwart.store import open_store

pytestmark = pytest.mark.slow

JOBS = 6
LEASE = 3.0  # the worker gives a lease up after 2.4 s unrenewed: 0.6 s before it can expire


@dataclass(frozen=True)
class Run:
    """One call of the tool: who ran which job's attempt, from when until when."""

    pid: int
    job: str
    attempt: int
    start: float
    end: float


@pytest.fixture
def proxy(pg_url: str) -> Iterator[TcpProxy]:
    target = urlsplit(pg_url)
    assert target.hostname is not None and target.port is not None
    with TcpProxy(target.hostname, target.port) as running:
        yield running


def _through(pg_url: str, proxy: TcpProxy) -> str:
    parts = urlsplit(pg_url)
    netloc = parts.netloc.rsplit(":", 1)[0] + f":{proxy.port}"
    return urlunsplit(parts._replace(netloc=netloc))


async def _submit(db_url: str) -> list[str]:
    store = open_store(db_url)
    try:
        client = Client(store, app=partition_app.app)
        return [(await client.submit("held", {"n": n})).job.id for n in range(JOBS)]
    finally:
        await store.close()


def _runs(log_dir: Path, ended: dict[int, float]) -> list[Run]:
    """Every call so far; one without an `end` line runs until its process's entry in `ended`
    (when it was killed), else until now."""
    opened: dict[tuple[int, str, int], float] = {}
    runs = []
    for path in log_dir.glob("*.log"):
        for line in path.read_text(encoding="utf-8").splitlines():
            what, at, job, attempt, pid = line.split()
            key = (int(pid), job, int(attempt))
            if what == "start":
                opened[key] = float(at)
            else:
                runs.append(Run(*key, opened.pop(key), float(at)))
    now = time.time()
    runs += [Run(*key, start, ended.get(key[0], now)) for key, start in opened.items()]
    return runs


def _most_at_once(runs: list[Run]) -> int:
    edges = sorted([(r.start, 1) for r in runs] + [(r.end, -1) for r in runs])
    most = running = 0
    for _, step in edges:  # at a tie an end sorts first: back to back is not at once
        running += step
        most = max(most, running)
    return most


def _on_two_workers_at_once(runs: list[Run]) -> list[tuple[Run, Run]]:
    return [
        (a, b)
        for a in runs
        for b in runs
        if a.job == b.job and a.pid < b.pid and a.start < b.end and b.start < a.end
    ]


def _started_by(runs: list[Run], pid: int, after: float = 0.0) -> int:
    return sum(1 for r in runs if r.pid == pid and r.start > after)


def test_a_partitioned_worker_stops_its_tools_before_its_leases_can_be_taken(
    tmp_path: Path, workers: Workers, pg_url: str, proxy: TcpProxy
) -> None:
    log_dir = tmp_path / "calls"
    log_dir.mkdir()
    release = tmp_path / "release"
    killed: dict[int, float] = {}
    env = {
        "PARTITION_LOG_DIR": str(log_dir),
        "PARTITION_RELEASE": str(release),
        "STALWART_LEASE_SECONDS": str(LEASE),
        "STALWART_PG_CONNECT_TIMEOUT_SECONDS": "2",
    }
    app = "partition_app"
    ids = asyncio.run(_submit(pg_url))

    cut_off = workers.start(_through(pg_url, proxy), app, env=env, name="behind-proxy")
    wait_until(
        lambda: _started_by(_runs(log_dir, killed), cut_off.pid) == 2,
        60,
        what=f"worker A to fill both slots of the cap\n{workers.logs()}",
    )
    direct = workers.start(pg_url, app, env=env, name="direct")
    assert direct.wait_for_output("worker started", 60), workers.logs()

    proxy.cut()
    cut_at = time.time()
    # B takes the two slots over once A's leases expire in the database and are reaped.
    wait_until(
        lambda: _started_by(_runs(log_dir, killed), direct.pid) >= 2,
        90,
        what=f"worker B to take the steps over\n{workers.logs()}",
    )
    runs = _runs(log_dir, killed)
    # The cap held, and no step ran on two workers at once: A had stopped both calls itself.
    assert _most_at_once(runs) <= 2, (runs, workers.logs())
    assert _on_two_workers_at_once(runs) == [], workers.logs()
    given_up = [r for r in runs if r.pid == cut_off.pid]
    assert len(given_up) == 2 and all(cut_at < r.end for r in given_up), runs
    assert cut_off.wait_for_output("step_lease_given_up", 30), workers.logs()
    assert "worker_cut_off" in cut_off.output()

    # Healed, A reaches the database again and takes new work: alone, once B is gone.
    proxy.heal()
    assert cut_off.wait_for_output("worker_reconnected", 60), workers.logs()
    healed_at = time.time()
    direct.signal(signal.SIGKILL)
    direct.kill()
    killed[direct.pid] = time.time()
    release.touch()
    wait_until(
        lambda: query(pg_url, "SELECT count(*) FROM jobs WHERE status = 'completed'")[0][0] == JOBS,
        120,
        0.2,
        f"every job to complete\n{workers.logs()}",
    )
    runs = _runs(log_dir, killed)
    assert _started_by(runs, cut_off.pid, after=healed_at) >= JOBS - 2, runs
    assert _most_at_once(runs) <= 2, runs
    assert _on_two_workers_at_once(runs) == [], runs
    assert sorted(query(pg_url, "SELECT id FROM jobs")) == sorted((i,) for i in ids)
