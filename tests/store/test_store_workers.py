"""Conformance: the worker registry, recovering a restarted worker's leases at once, and
`work_due`, the one read an idle worker makes."""

from __future__ import annotations

import asyncio

from conformance import (
    WINDOW,
    claim_one,
    decision,
    eventually,
    failure,
    make_step,
    step_events,
    steps_by_key,
    submit,
    transitions,
)

from stalwart.domain.failures import Outcome
from stalwart.store import Store
from stalwart.store.base import WorkDue, WorkerInfo


def info(worker_id: str, **fields: object) -> WorkerInfo:
    values: dict = {"host": "host-1", "pid": 4242, "concurrency": 4, "tools": ["b", "a"]}
    values.update(fields)
    return WorkerInfo(id=worker_id, version="1.2.3", **values)


async def test_a_registered_worker_is_live_and_lists_the_steps_it_holds(store: Store) -> None:
    await store.worker_register(info("w-1"))

    [worker] = await store.worker_list(live_seconds=30)

    assert (worker.id, worker.host, worker.pid, worker.concurrency) == ("w-1", "host-1", 4242, 4)
    assert (worker.tools, worker.version) == (["a", "b"], "1.2.3")
    assert (worker.status, worker.live, worker.stopped, worker.holding) == (
        "running",
        True,
        None,
        [],
    )
    job = await submit(store, make_step("a", tool="fetch"))
    claim = await claim_one(store, "w-1")
    [worker] = await store.worker_list(live_seconds=30)
    [held] = worker.holding
    assert (held["step_id"], held["job_id"], held["step"], held["tool"]) == (
        claim.step_id,
        job.id,
        "a",
        "fetch",
    )
    assert abs(held["lease_expires"] - claim.lease_expires) < 0.01

    await store.worker_stopped("w-1")

    [worker] = await store.worker_list(live_seconds=30)
    assert (worker.status, worker.live) == ("stopped", False)
    assert worker.stopped is not None
    assert await store.worker_list(live_seconds=30, include_stopped=False) == []


async def test_a_worker_without_a_recent_heartbeat_is_dead(store: Store) -> None:
    # Alive means a heartbeat within `live_seconds`: WINDOW, which no stall passes between two
    # statements; "old" beat longer ago than that.
    await store.worker_register(info("old"))
    await asyncio.sleep(WINDOW + 0.1)
    await store.worker_register(info("new", pid=7))

    old, new = sorted(await store.worker_list(live_seconds=WINDOW), key=lambda w: w.id != "old")

    assert (old.id, old.status, old.live) == ("old", "dead", False)
    assert (new.id, new.status, new.live) == ("new", "running", True)
    assert [w.id for w in await store.worker_list(live_seconds=30)] == ["new", "old"]
    await store.worker_beat("old")
    assert {w.id: w.live for w in await store.worker_list(live_seconds=WINDOW)} == {
        "old": True,
        "new": True,
    }
    # Registering a known id again starts it afresh.
    await store.worker_stopped("old")
    await store.worker_register(info("old", pid=99))
    old = next(w for w in await store.worker_list(live_seconds=30) if w.id == "old")
    assert (old.pid, old.status, old.live, old.stopped) == (99, "running", True, None)


async def test_reclaim_recovers_one_workers_leases_at_once(store: Store) -> None:
    job = await submit(store, make_step("a"), make_step("b"))
    gone = await claim_one(store, "w-gone", lease_seconds=30)
    kept = await claim_one(store, "w-alive", lease_seconds=30)

    assert await store.leases_reclaim(["w-gone"], actor="w-gone-restarted") == 1

    steps = await steps_by_key(store, job.id)
    recovered = steps[gone.key]
    assert (recovered.status, recovered.lease_owner, recovered.attempt) == ("ready", None, 1)
    event = [e for e in await step_events(store, job.id, gone.key) if e.to_status == "ready"][-1]
    assert event.from_status == "running"
    assert "worker" in event.reason and "idempotent" in event.reason
    assert event.actor == "w-gone-restarted"
    other = steps[kept.key]
    assert (other.status, other.lease_owner, other.lease_token) == (
        "running",
        "w-alive",
        kept.lease_token,
    )
    assert await store.leases_reclaim(["w-gone"], actor="again") == 0
    assert await store.leases_reclaim([], actor="none") == 0
    assert not (await store.step_complete(gone, {}, worker_id="w-gone")).recorded
    again = await claim_one(store, "w-new")
    assert (again.key, again.attempt) == (gone.key, 2)
    assert transitions(await step_events(store, job.id, gone.key))[-2:] == [
        ("running", "ready"),
        ("ready", "running"),
    ]


async def test_work_due_reports_ready_steps_and_expired_leases(store: Store) -> None:
    empty = await store.work_due()
    assert (empty.next_step_due, empty.steps_due, empty.reaping, empty.replanning) == (
        None,
        False,
        False,
        False,
    )

    await submit(store)
    ready = await store.work_due()
    assert ready.steps_due
    assert ready.next_step_due is not None and ready.next_step_due <= ready.now
    assert not ready.leases_expired

    await claim_one(store, lease_seconds=WINDOW)
    running = await store.work_due()
    assert (running.next_step_due, running.steps_due, running.leases_expired) == (
        None,
        False,
        False,
    )

    async def lease_expired() -> WorkDue | None:
        due = await store.work_due()
        return due if due.leases_expired else None

    expired = await eventually(lease_expired, "the lease to expire")
    assert expired.reaping
    assert not expired.steps_due


async def test_work_due_waits_for_a_retry_in_the_future(store: Store) -> None:
    job = await submit(store)
    claim = await claim_one(store)
    assert await store.step_fail(
        claim, failure(), decision(Outcome.RETRY, delay_seconds=30), worker_id="w1"
    )
    assert (await steps_by_key(store, job.id))["a"].status == "retry_wait"

    due = await store.work_due()

    assert due.next_step_due is not None
    assert 25 < due.next_step_due - due.now <= 30
    assert not due.steps_due
    assert not due.reaping
