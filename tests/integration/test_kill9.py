"""kill -9 under load: workers die mid-step, over and over, and nothing runs twice.

Three worker processes run 40 `settle` jobs (see apps/chaos_app.py) against a flaky HTTP
service while, about every second, the test SIGKILLs a random worker and starts a replacement
(or, now and then, freezes one with SIGSTOP past its lease and lets it go on later).
Afterwards every job must be completed, every succeeded step must have exactly one
`step_succeeded` event and a result from the attempt that held the lease, no tool may have
started a step after its success was recorded, and the service must have recorded exactly one
payment and one notification per job.

A second test runs a step whose tool SIGKILLs its own worker: it is dead-lettered after its
attempts instead of taking down workers forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import signal
import time
from collections import Counter, defaultdict
from pathlib import Path

import pytest
from examples.service import FlakyService

from stalwart.client import Client
from stalwart.store import open_store

from .apps import chaos_app
from .conftest import Worker, Workers, query

pytestmark = pytest.mark.slow

JOBS = 40
WORKERS = 3
CHAOS_SECONDS = 16.0
PAUSE_SHARE = 0.3
SETTLE_SECONDS = 40.0
FINAL = ("completed", "failed", "cancelled", "rejected", "dead_lettered", "escalated")


async def _submit(db_url: str) -> list[str]:
    store = open_store(db_url)
    try:
        await store.migrate()
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


def _statuses(db_url: str) -> Counter[str]:
    return Counter(dict(query(db_url, "SELECT status, count(*) FROM jobs GROUP BY status")))


def _all_final(db_url: str) -> bool:
    counts = _statuses(db_url)
    return sum(counts.values()) == JOBS and all(s in FINAL for s in counts)


def _calls(folder: Path) -> list[dict[str, object]]:
    out = []
    for file in folder.glob("calls-*.jsonl"):
        for line in file.read_text(encoding="utf-8").splitlines():
            if line.strip():
                # the last line of a killed process may be torn
                with contextlib.suppress(json.JSONDecodeError):
                    out.append(json.loads(line))
    return out


def test_kill9_chaos(tmp_path: Path, workers: Workers, db_url: str) -> None:
    effects_path = tmp_path / "effects.jsonl"
    call_logs = tmp_path / "calls"
    call_logs.mkdir()
    rng = random.Random(20240607)
    started = time.monotonic()

    with FlakyService(
        failure_rate=0.12, timeout_rate=0.06, slow_seconds=2.0, seed=11, effects_path=effects_path
    ) as service:
        job_ids = asyncio.run(_submit(db_url))
        env = {"CHAOS_SERVICE_URL": service.url, "CHAOS_LOG_DIR": str(call_logs)}

        def spawn() -> Worker:
            return workers.start(db_url, "chaos_app", env=env, concurrency=4)

        live = [spawn() for _ in range(WORKERS)]
        kills = pauses = 0
        paused: dict[int, float] = {}  # slot -> when to resume it
        paused_pids: set[int] = set()
        chaos_until = time.monotonic() + CHAOS_SECONDS
        while time.monotonic() < chaos_until and not _all_final(db_url):
            time.sleep(rng.uniform(0.4, 1.0))
            for slot, resume_at in list(paused.items()):
                if time.monotonic() >= resume_at:
                    live[slot].signal(signal.SIGCONT)
                    del paused[slot]
            slot = rng.randrange(WORKERS)
            if slot in paused:
                continue
            if rng.random() < PAUSE_SHARE:
                # Freeze it past its lease (a GC pause, a stalled VM), then let it go on.
                live[slot].signal(signal.SIGSTOP)
                paused[slot] = time.monotonic() + rng.uniform(2.5, 3.5)
                paused_pids.add(live[slot].pid)
                pauses += 1
                continue
            live[slot].kill()
            kills += 1
            live[slot] = spawn()
        for slot in paused:
            live[slot].signal(signal.SIGCONT)

        deadline = time.monotonic() + SETTLE_SECONDS
        while time.monotonic() < deadline and not _all_final(db_url):
            time.sleep(0.2)
        settled = _all_final(db_url)
        for worker in live:
            worker.stop()
        effects = [json.loads(line) for line in effects_path.read_text().splitlines() if line]
        replays = service.replays

    elapsed = time.monotonic() - started
    counts = _statuses(db_url)
    report = (
        f"{kills} kills, {pauses} pauses in {elapsed:.1f}s; jobs {dict(counts)}; {replays} replays"
    )
    print(report)
    assert settled, f"jobs did not all finish: {report}\n{workers.logs()}"
    assert kills >= 5, report

    # With 20 attempts per step every job completes; count and explain any that did not.
    unfinished = query(
        db_url, "SELECT id, status, error FROM jobs WHERE status != 'completed' ORDER BY id"
    )
    assert counts["completed"] == JOBS, f"{report}; not completed: {unfinished}"

    steps = query(
        db_url,
        "SELECT id, job_id, key, status, attempt, output, finished FROM steps ORDER BY id",
    )
    assert len(steps) == JOBS * 4
    assert {s[3] for s in steps} == {"succeeded"}, Counter(s[3] for s in steps)

    # Exactly one step_succeeded event per succeeded step.
    succeeded_events = Counter(
        r[0] for r in query(db_url, "SELECT step_id FROM events WHERE kind = 'step_succeeded'")
    )
    twice = {k: n for k, n in succeeded_events.items() if n != 1}
    assert not twice, f"steps with more than one step_succeeded event: {twice}"
    assert set(succeeded_events) == {s[0] for s in steps}

    # The recorded result is the one of the attempt that held the lease at the end.
    for _, job_id, key, _, attempt, output, _ in steps:
        assert json.loads(output)["attempt"] == attempt, (job_id, key, attempt, output)

    # The kills landed mid-step: leases expired and were recovered, steps ran again.
    reaped = query(
        db_url,
        "SELECT count(*) FROM events WHERE (reason LIKE 'lease expired%' OR reason LIKE "
        "'its worker died%') AND kind != 'step_failed'",
    )[0][0]
    assert reaped > 0, report
    interrupted = query(db_url, "SELECT count(*) FROM events WHERE kind = 'step_interrupted'")[0][0]
    retried = sum(1 for s in steps if s[4] > 1)
    assert retried > 0
    assert interrupted > 0, "no payment was interrupted: the reconcile path did not run"

    # From the tools' side: no step was started again once its success was recorded (except by
    # a worker that was frozen past its lease: it may start a claimed step late, but fencing
    # refuses its result).
    finished = {(s[1], s[2]): (s[4], s[6]) for s in steps}
    calls = _calls(call_logs)
    assert calls
    late = [
        c
        for c in calls
        if c["what"] in ("start", "reconcile")
        and c["pid"] not in paused_pids
        and (
            c["attempt"] > finished[(c["job"], c["step"])][0]  # type: ignore[index, operator]
            or c["at"] > finished[(c["job"], c["step"])][1]  # type: ignore[index, operator]
        )
    ]
    assert not late, f"tools ran after their step's success was recorded: {late[:5]}"
    starts = Counter((c["job"], c["step"]) for c in calls if c["what"] == "start")
    assert max(starts.values()) > 1, "no step ever ran twice: the chaos did not bite"
    reconciled = sum(1 for c in calls if c["what"] == "reconciled" and c.get("payment_id"))
    logs = workers.logs(tail=None)
    refused = logs.count("lease lost; result discarded") + logs.count("abandoning step")
    print(
        f"{reaped} leases recovered, {interrupted} payments interrupted ({reconciled} found "
        f"by reconcile), {retried} steps re-run, {refused} stale attempts refused or abandoned"
    )

    # From the service's side: one payment and one notification per job, under the step's key.
    keys = Counter((e["kind"], e["idempotency_key"]) for e in effects)
    assert all(n == 1 for n in keys.values()), [k for k, n in keys.items() if n > 1]
    by_kind: dict[str, dict[str, dict[str, object]]] = defaultdict(dict)
    for effect in effects:
        by_kind[effect["kind"]][effect["idempotency_key"]] = effect
    assert set(by_kind) == {"payment", "notification"}
    assert set(by_kind["payment"]) == {f"default:{j}:pay" for j in job_ids}
    assert set(by_kind["notification"]) == {f"default:{j}:notify" for j in job_ids}
    paid_invoices = Counter(e["body"]["invoice_id"] for e in by_kind["payment"].values())
    assert len(paid_invoices) == JOBS and set(paid_invoices.values()) == {1}
    outputs = {(s[1], s[2]): json.loads(s[5]) for s in steps}
    for job_id in job_ids:
        payment = by_kind["payment"][f"default:{job_id}:pay"]
        assert outputs[(job_id, "pay")]["payment_id"] == payment["id"]
        note = by_kind["notification"][f"default:{job_id}:notify"]
        assert note["body"]["message"] == f"paid {payment['id']}"


async def _submit_poison(db_url: str, idempotent: bool) -> str:
    store = open_store(db_url)
    try:
        await store.migrate()
        client = Client(store, app=chaos_app.app)
        return (await client.submit("poison", {"idempotent": idempotent})).job.id
    finally:
        await store.close()


@pytest.mark.parametrize("idempotent", [True, False], ids=["idempotent", "reconciled"])
def test_a_step_that_kills_its_worker_is_dead_lettered(
    tmp_path: Path, workers: Workers, db_url: str, idempotent: bool
) -> None:
    """A poison step is not redelivered forever: after its attempts it is dead-lettered."""
    call_logs = tmp_path / "calls"
    call_logs.mkdir()
    job_id = asyncio.run(_submit_poison(db_url, idempotent))
    env = {
        "CHAOS_SERVICE_URL": "http://127.0.0.1:9",
        "CHAOS_LOG_DIR": str(call_logs),
        "STALWART_LEASE_SECONDS": "0.6",
    }

    def job_status() -> str:
        return str(query(db_url, "SELECT status FROM jobs WHERE id = ?", (job_id,))[0][0])

    deaths = 0
    worker = workers.start(db_url, "chaos_app", env=env, concurrency=2)
    deadline = time.monotonic() + 120  # four worker starts: seconds each on a loaded machine
    while job_status() not in FINAL and time.monotonic() < deadline:
        if not worker.alive():
            deaths += 1
            worker.kill()  # reap it
            worker = workers.start(db_url, "chaos_app", env=env, concurrency=2)
        time.sleep(0.05)
    status = job_status()
    assert status == "dead_lettered", f"{status} after {deaths} deaths\n{workers.logs()}"
    assert worker.alive(), "the worker that dead-lettered the step must survive"
    assert deaths == 3
    assert worker.stop() == 0

    [(step_status, attempt)] = query(
        db_url, "SELECT status, attempt FROM steps WHERE job_id = ?", (job_id,)
    )
    assert (step_status, attempt) == ("dead_lettered", 3)
    starts = [c for c in _calls(call_logs) if c["what"] == "start"]
    assert sorted(c["attempt"] for c in starts) == [1, 2, 3]  # type: ignore[type-var]
    reconciles = sorted(c["attempt"] for c in _calls(call_logs) if c["what"] == "reconcile")
    assert reconciles == ([] if idempotent else [2, 3])  # type: ignore[comparison-overlap]
    [(reason,)] = query(
        db_url, "SELECT reason FROM dead_letters WHERE job_id = ? AND status = 'open'", (job_id,)
    )
    # Each restarted worker found the dead one's lease (same host, dead pid) and took it back
    # at once rather than waiting for it to expire.
    assert "its worker died on all 3 attempts" in reason
