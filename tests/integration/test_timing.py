"""Workers keep time: a retry runs when its backoff is over and a rate-limited tool gets its
rate, not whatever the poll interval rounds them to, on both backends.

Workers run with the default poll intervals (0.5 s, and 1 s on PostgreSQL, which wakes on
notifications), so a worker that only looked again at its next poll shows up at once. Times are
read from the store's own events (the database's clock on PostgreSQL), never from the test
process, so load on the test process adds nothing to what is measured.
"""

from __future__ import annotations

import asyncio
import json
import statistics
from pathlib import Path

from tests.integration.apps import timing_app
from tests.integration.conftest import Workers, query, wait_until

from stalwart.client import Client
from stalwart.store import open_store

# The defaults, spelled out: FAST_WORKER_ENV polls every 0.1 s, which would hide a late wake-up.
DEFAULT_POLLS = {
    "STALWART_POLL_INTERVAL_SECONDS": "0.5",
    "STALWART_NOTIFY_POLL_INTERVAL_SECONDS": "1.0",
}
# How late the typical retry may be taken (the bound), and any one retry on a loaded
# machine: well under the shortest poll interval, so a wake-up left to the poll still fails.
SLACK_SECONDS = 0.05
STARVED_SECONDS = 0.25


async def _submit(db_url: str, workflow: str, count: int) -> None:
    store = open_store(db_url)
    try:
        await store.migrate()
        client = Client(store, app=timing_app.app)
        for n in range(count):
            await client.submit(workflow, {"n": n})
    finally:
        await store.close()


def _completed(db_url: str, workflow: str) -> int:
    return int(
        query(
            db_url,
            "SELECT count(*) FROM jobs WHERE workflow = ? AND status = 'completed'",
            (workflow,),
        )[0][0]
    )


def _step_moves(db_url: str, tool: str) -> dict[int, list[tuple[str, float, str | None]]]:
    """Each step's status changes (to, at, data) in order, for the steps of `tool`."""
    rows = query(
        db_url,
        "SELECT e.step_id, e.to_status, e.at, e.data FROM events e "
        "JOIN steps s ON s.id = e.step_id WHERE s.tool = ? AND e.to_status IS NOT NULL "
        "ORDER BY e.id",
        (tool,),
    )
    moves: dict[int, list[tuple[str, float, str | None]]] = {}
    for step_id, to_status, at, data in rows:
        moves.setdefault(int(step_id), []).append((str(to_status), float(at), data))
    return moves


def test_retries_run_when_their_backoff_is_over(
    tmp_path: Path, workers: Workers, db_url: str
) -> None:
    jobs = 3
    asyncio.run(_submit(db_url, "flaky", jobs))
    workers.start(db_url, "timing_app", env=DEFAULT_POLLS, concurrency=4)
    wait_until(lambda: _completed(db_url, "flaky") == jobs, 60, 0.1, "every flaky job")

    moves = _step_moves(db_url, "flaky")
    assert len(moves) == jobs
    late: list[str] = []
    latenesses: list[float] = []
    for step_id, history in moves.items():
        waits = [(at, json.loads(data)) for to, at, data in history if to == "retry_wait"]
        claims = [at for to, at, _ in history if to == "running"]
        assert len(waits) == 3 and len(claims) == 4, history
        for n, ((failed_at, data), claimed_at) in enumerate(
            zip(waits, claims[1:], strict=True), start=1
        ):
            # The backoff asked for is base·2^(n-1), exactly (jitter is off) ...
            assert data["delay_seconds"] == timing_app.BACKOFF.base_seconds * 2 ** (n - 1)
            # ... and the next attempt was claimed when it came due, not at a later poll.
            due = failed_at + data["delay_seconds"]
            lateness = claimed_at - due
            assert lateness >= -0.002, f"step {step_id} retry {n} ran {-lateness:.3f}s early"
            latenesses.append(lateness)
            if lateness > STARVED_SECONDS:
                late.append(f"step {step_id} retry {n}: {lateness:.3f}s late")
    # The retries are taken within 50 ms of their due time. One wake-up can be delayed further on
    # a loaded machine (a 2-core CI runner with the suite running beside it): that is the
    # scheduler, not a poll. So the typical retry is held to the target, and none may be late
    # by anything like a poll interval (0.5 s on SQLite, 1 s on PostgreSQL: before the fix,
    # retries were 0.1-0.4 s and 0.6-0.9 s late).
    typical = statistics.median(latenesses)
    assert typical <= SLACK_SECONDS, f"median lateness {typical:.3f}s: {sorted(latenesses)}"
    assert not late, "\n".join(late)


def test_a_ten_per_second_tool_gets_nine_per_second_across_two_workers(
    tmp_path: Path, workers: Workers, db_url: str
) -> None:
    jobs = 111  # one at once (a bucket of one), then ten a second: 11 s
    asyncio.run(_submit(db_url, "trickle", jobs))
    for _ in range(2):
        workers.start(db_url, "timing_app", env=DEFAULT_POLLS, concurrency=4)
    wait_until(lambda: _completed(db_url, "trickle") == jobs, 120, 0.2, "every trickle job")

    moves = _step_moves(db_url, "trickle")
    starts = sorted(at for history in moves.values() for to, at, _ in history if to == "running")
    assert len(starts) == jobs, workers.logs()
    assert query(db_url, "SELECT max(attempt) FROM steps")[0][0] == 1
    # Leave out the first start (the bucket's one token, taken as soon as a worker is up).
    steady = starts[1:]
    span = steady[-1] - steady[0]
    rate = (len(steady) - 1) / span
    assert span >= 10.0, f"{len(steady)} starts in {span:.2f}s: the limit let more through"
    assert 9.0 <= rate <= 10.5, f"observed {rate:.2f} starts/s against a limit of 10/s"
