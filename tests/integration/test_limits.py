"""Shared limits across worker processes, on both backends: a concurrency cap that never
over-admits under a race, and a rate limit that holds within 10% across three workers."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.integration.apps import limits_app
from tests.integration.conftest import Workers, query, wait_until

from stalwart.client import Client
from stalwart.store import open_store


async def _submit(db_url: str, workflow: str, count: int) -> None:
    store = open_store(db_url)
    try:
        await store.migrate()
        client = Client(store, app=limits_app.app)
        for n in range(count):
            await client.submit(workflow, {"n": n})
    finally:
        await store.close()


def _calls(log_dir: Path) -> list[tuple[str, float]]:
    out = []
    for path in log_dir.glob("*.log"):
        for line in path.read_text(encoding="utf-8").splitlines():
            what, at, _job = line.split()
            out.append((what, float(at)))
    return sorted(out, key=lambda c: c[1])


def _completed(db_url: str, workflow: str) -> int:
    return int(
        query(
            db_url,
            "SELECT count(*) FROM jobs WHERE workflow = ? AND status = 'completed'",
            (workflow,),
        )[0][0]
    )


def test_a_cap_of_two_is_never_exceeded_by_racing_workers(
    tmp_path: Path, workers: Workers, db_url: str
) -> None:
    log_dir = tmp_path / "calls"
    log_dir.mkdir()
    jobs = 40
    asyncio.run(_submit(db_url, "capped", jobs))
    env = {"LIMITS_LOG_DIR": str(log_dir), "STALWART_NOTIFY_POLL_INTERVAL_SECONDS": "0.1"}
    for _ in range(4):
        workers.start(db_url, "limits_app", env=env, concurrency=8)
    wait_until(lambda: _completed(db_url, "capped") == jobs, 60, 0.1, "every capped job")

    running = peak = 0
    for what, _at in _calls(log_dir):
        running += 1 if what == "start" else -1
        peak = max(peak, running)
    starts = sum(1 for what, _ in _calls(log_dir) if what == "start")
    assert starts == jobs, f"{starts} starts for {jobs} jobs\n{workers.logs()}"
    assert peak == 2, f"observed {peak} capped steps at once (cap 2)"
    # Nothing is left holding a slot once everything finished.
    assert query(db_url, "SELECT count(*) FROM limit_slots WHERE step_id IS NOT NULL")[0][0] == 0
    # Held-back steps waited: no attempt was used up by the cap.
    assert query(db_url, "SELECT max(attempt) FROM steps")[0][0] == 1


def test_a_rate_limit_holds_within_ten_percent_across_three_workers(
    tmp_path: Path, workers: Workers, db_url: str
) -> None:
    log_dir = tmp_path / "calls"
    log_dir.mkdir()
    jobs = 43
    asyncio.run(_submit(db_url, "metered", jobs))
    env = {"LIMITS_LOG_DIR": str(log_dir), "STALWART_NOTIFY_POLL_INTERVAL_SECONDS": "0.1"}
    for _ in range(3):
        workers.start(db_url, "limits_app", env=env, concurrency=4)
    wait_until(lambda: _completed(db_url, "metered") == jobs, 60, 0.1, "every metered job")

    starts = [at for what, at in _calls(log_dir) if what == "start"]
    assert len(starts) == jobs, workers.logs()
    # The bucket starts full (3 tokens); after that, starts follow the refill rate.
    steady = starts[3:]
    rate = (len(steady) - 1) / (steady[-1] - steady[0])
    assert 9.0 <= rate <= 11.0, f"observed {rate:.2f} starts/s against a limit of 10/s"
    assert query(db_url, "SELECT max(attempt) FROM steps")[0][0] == 1
