"""Fencing: a worker paused past its lease cannot overwrite the newer attempt's result.

Worker A runs the first attempt of `hold` (apps/fence_app.py), which waits for a release file
while A keeps heartbeating. Right after one of A's heartbeats the test SIGSTOPs A. Worker B
reaps the expired lease, runs attempt 2 and completes the job. Then the test releases the tool
and SIGCONTs A. Resumed, A finds by its own clock that the lease is gone and cancels the tool
(decision 0032), but this tool ignores cancellation: it returns its (stale) result, and the
store must refuse it.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path

from stalwart.client import Client
from stalwart.store import open_store

from .apps import fence_app
from .conftest import Workers, query, wait_until

LEASE = "1.5"


async def _submit(db_url: str) -> str:
    store = open_store(db_url)
    try:
        await store.migrate()
        return (await Client(store, app=fence_app.app).submit("fence", {})).job.id
    finally:
        await store.close()


def _hold(db_url: str) -> tuple[str, int, int, float | None, str | None]:
    rows = query(
        db_url,
        "SELECT status, attempt, lease_token, lease_expires, output FROM steps WHERE key = 'hold'",
    )
    return rows[0]  # type: ignore[return-value]


def test_paused_worker_cannot_overwrite_newer_attempt(
    tmp_path: Path, workers: Workers, db_url: str
) -> None:
    fence = tmp_path / "fence"
    fence.mkdir()
    env = {"FENCE_DIR": str(fence), "STALWART_LEASE_SECONDS": LEASE, "FENCE_IGNORE_CANCEL": "1"}
    job_id = asyncio.run(_submit(db_url))

    a = workers.start(db_url, "fence_app", env=env, name="a")
    wait_until(lambda: (fence / "started").exists(), 60, 0.02, "worker A to start the tool")
    assert (fence / "started").read_text() == str(a.pid)
    status, attempt, token, claimed_expiry, _ = _hold(db_url)
    assert (status, attempt, token) == ("running", 1, 1)

    # A live worker keeps a long step's lease: outlive the first lease, then catch a heartbeat.
    time.sleep(float(LEASE) + 0.3)
    status, attempt, token, expiry, _ = _hold(db_url)
    assert (status, attempt, token) == ("running", 1, 1), "a heartbeating worker lost its lease"
    assert expiry is not None and claimed_expiry is not None and expiry > claimed_expiry
    deadline = time.monotonic() + 5
    while _hold(db_url)[3] == expiry and time.monotonic() < deadline:
        time.sleep(0.005)
    a.signal(signal.SIGSTOP)  # right after a heartbeat, so A's next one is far off when resumed
    stopped_at = time.monotonic()

    b = workers.start(db_url, "fence_app", env=env, name="b")
    wait_until(
        lambda: (
            query(db_url, "SELECT status FROM jobs WHERE id = ?", (job_id,))[0][0] == "completed"
        ),
        60,
        0.05,
        "worker B to reclaim the step and complete the job",
    )
    assert time.monotonic() - stopped_at > float(LEASE)
    status, attempt, token, _, output = _hold(db_url)
    assert (status, attempt, token) == ("succeeded", 2, 2)
    assert output is not None
    assert json.loads(output) == {"by": "attempt-2", "pid": b.pid, "attempt": 2}

    # Resume A with its tool released: it finishes attempt 1 and tries to record it.
    (fence / "release").write_text("go")
    a.signal(signal.SIGCONT)
    # A learns it lost the lease from its own clock (it gives the step up), from its next
    # heartbeat (and abandons the step) or from the store refusing its completion (they race);
    # either way its late result must not land.
    wait_until(
        lambda: "lease lost;" in a.output() or "step_lease_given_up" in a.output(),
        60,
        what=f"worker A to learn it lost the lease\n{a.output()}",
    )
    assert (fence / "returned").read_text() == str(a.pid)

    status, attempt, token, _, output = _hold(db_url)
    assert (status, attempt, token) == ("succeeded", 2, 2)
    assert json.loads(output or "null")["by"] == "attempt-2"
    result = json.loads(query(db_url, "SELECT result FROM jobs WHERE id = ?", (job_id,))[0][0])
    assert result == {"echo": {"echoed": "attempt-2"}}

    events = query(
        db_url,
        "SELECT kind, actor, reason, data FROM events WHERE job_id = ? AND step_key = 'hold' "
        "ORDER BY id",
        (job_id,),
    )
    kinds = [e[0] for e in events]
    assert kinds.count("step_succeeded") == 1
    started = [(e[1], json.loads(e[3])["attempt"]) for e in events if e[0] == "step_started"]
    assert [n for _, n in started] == [1, 2]
    assert started[0][0] != started[1][0]  # two different workers
    assert any(e[0] == "step_ready" and e[2].startswith("lease expired") for e in events)
    succeeded = next(e for e in events if e[0] == "step_succeeded")
    assert succeeded[1] == started[1][0] and json.loads(succeeded[3])["attempt"] == 2

    assert a.stop() == 0, a.output()
    assert b.stop() == 0, b.output()


def test_sigterm_drains_then_releases_the_lease(
    tmp_path: Path, workers: Workers, db_url: str
) -> None:
    """SIGTERM: no new claims; a step still running after drain_seconds is released (the
    attempt refunded) and the process exits 0; the next worker runs it."""
    fence = tmp_path / "fence"
    fence.mkdir()
    env = {"FENCE_DIR": str(fence), "STALWART_DRAIN_SECONDS": "0.5"}
    job_id = asyncio.run(_submit(db_url))

    a = workers.start(db_url, "fence_app", env=env, name="a")
    wait_until(lambda: (fence / "started").exists(), 20, 0.02, "worker A to start the tool")
    a.signal(signal.SIGTERM)
    assert a.proc.wait(timeout=15) == 0, a.output()
    status, attempt, _, expiry, _ = _hold(db_url)
    assert (status, attempt, expiry) == ("ready", 0, None)
    [(reason,)] = query(
        db_url,
        "SELECT reason FROM events WHERE job_id = ? AND step_key = 'hold' AND kind = 'step_ready' "
        "AND from_status = 'running'",
        (job_id,),
    )
    assert reason.startswith("worker stopped before the step finished")
    assert not (fence / "returned").exists()

    (fence / "release").write_text("go")
    b = workers.start(db_url, "fence_app", env=env, name="b")
    wait_until(
        lambda: (
            query(db_url, "SELECT status FROM jobs WHERE id = ?", (job_id,))[0][0] == "completed"
        ),
        20,
        0.05,
        "worker B to run the released step",
    )
    status, attempt, _, _, output = _hold(db_url)
    # The refunded attempt counts again as the first: the tool, seeing attempt 1, waits for the
    # release file, which now exists.
    assert (status, attempt) == ("succeeded", 1)
    assert json.loads(output or "null")["pid"] == b.pid
    assert b.stop() == 0
