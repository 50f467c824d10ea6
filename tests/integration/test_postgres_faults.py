"""PostgreSQL under faults: hundreds of jobs, worker processes SIGKILLed at random moments, and
the database server itself restarted once mid-run.

Workers must ride out the restart (their pools reconnect, their wake-up listeners reconnect,
outcomes they could not record are written again while their lease lasts) and the run must end
as cleanly as one without faults: every job completed, no succeeded step recorded twice, one
payment and one notification per job at the service, nothing left `running` after the lease.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter
from pathlib import Path

import pytest
from examples.service import FlakyService
from tests.pgserver import PgServer

from stalwart.client import Client
from stalwart.store import open_store

from .apps import chaos_app
from .conftest import Worker, Workers, query

pytestmark = pytest.mark.slow

JOBS = 200
WORKERS = 4
CHAOS_SECONDS = 12.0
RESTART_AT = 4.0
SETTLE_SECONDS = 90.0
LEASE = 2.0


async def _submit(db_url: str) -> list[str]:
    store = open_store(db_url)
    try:
        client = Client(store, app=chaos_app.app)
        ids = []
        for i in range(JOBS):
            submitted = await client.submit(
                "settle", {"invoice_id": f"INV-{i:03d}-{100 + i}.25", "user_id": f"u-{i}"}
            )
            ids.append(submitted.job.id)
        return ids
    finally:
        await store.close()


def _open(db_url: str) -> int:
    return int(
        query(
            db_url,
            "SELECT count(*) FROM jobs WHERE status NOT IN "
            "('completed', 'failed', 'cancelled', 'rejected', 'dead_lettered', 'escalated')",
        )[0][0]
    )


def test_kill9_and_a_database_restart(
    tmp_path: Path, workers: Workers, pg_url: str, pg_server: PgServer
) -> None:
    db_url = pg_url
    effects_path = tmp_path / "effects.jsonl"
    call_logs = tmp_path / "calls"
    call_logs.mkdir()
    rng = random.Random(4242)

    with FlakyService(
        failure_rate=0.05, timeout_rate=0.02, slow_seconds=1.0, seed=5, effects_path=effects_path
    ) as service:
        job_ids = asyncio.run(_submit(db_url))
        env = {
            "CHAOS_SERVICE_URL": service.url,
            "CHAOS_LOG_DIR": str(call_logs),
            "STALWART_LEASE_SECONDS": str(LEASE),
            "STALWART_NOTIFY_POLL_INTERVAL_SECONDS": "0.2",
        }

        def spawn() -> Worker:
            return workers.start(db_url, "chaos_app", env=env, concurrency=8)

        live = [spawn() for _ in range(WORKERS)]
        kills = 0
        restarted = False
        started = time.monotonic()
        while time.monotonic() - started < CHAOS_SECONDS and _open(db_url):
            time.sleep(rng.uniform(0.3, 0.8))
            if not restarted and time.monotonic() - started >= RESTART_AT:
                pg_server.restart()
                restarted = True
                continue
            slot = rng.randrange(WORKERS)
            live[slot].kill()
            kills += 1
            live[slot] = spawn()

        deadline = time.monotonic() + SETTLE_SECONDS
        while time.monotonic() < deadline and _open(db_url):
            time.sleep(0.25)
        left = _open(db_url)
        time.sleep(LEASE + 0.5)
        stranded = query(db_url, "SELECT count(*) FROM steps WHERE status = 'running'")[0][0]
        for worker in live:
            worker.stop()
        effects = [json.loads(line) for line in effects_path.read_text().splitlines() if line]

    statuses = dict(query(db_url, "SELECT status, count(*) FROM jobs GROUP BY status"))
    report = f"{kills} kills, restart={restarted}; jobs {statuses}"
    assert restarted and kills >= 5, report
    assert left == 0, f"jobs did not all finish: {report}\n{workers.logs()}"
    assert statuses == {"completed": JOBS}, report
    assert stranded == 0, "steps left running after the lease time"

    steps = query(db_url, "SELECT id, status FROM steps")
    assert len(steps) == JOBS * 4 and {s[1] for s in steps} == {"succeeded"}
    succeeded = Counter(
        r[0] for r in query(db_url, "SELECT step_id FROM events WHERE kind = 'step_succeeded'")
    )
    assert set(succeeded) == {s[0] for s in steps}
    assert set(succeeded.values()) == {1}, "a step recorded its success twice"

    # One payment and one notification per job at the service, under the step's key.
    keys = Counter((e["kind"], e["idempotency_key"]) for e in effects)
    assert all(n == 1 for n in keys.values()), [k for k, n in keys.items() if n > 1]
    assert {k for k, key in keys if k == "payment"} == {"payment"}
    paid = {key for kind, key in keys if kind == "payment"}
    assert paid == {f"default:{j}:pay" for j in job_ids}
    notified = {key for kind, key in keys if kind == "notification"}
    assert notified == {f"default:{j}:notify" for j in job_ids}
    # The restart was felt and ridden out.
    logs = workers.logs(tail=None)
    assert "database" in logs.lower() or "reconnect" in logs.lower(), "no worker saw the restart"
