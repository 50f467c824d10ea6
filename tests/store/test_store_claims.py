"""Conformance: claiming steps, fencing tokens, completing steps and finishing jobs."""

from __future__ import annotations

from conformance import (
    ACTOR,
    claim_all,
    claim_one,
    decision,
    expire,
    failure,
    job_transitions,
    make_step,
    step_events,
    steps_by_key,
    submit,
    transitions,
)

from stalwart.domain.failures import Outcome
from stalwart.store import Store


async def test_claim_takes_higher_priority_first_then_older_due(store: Store) -> None:
    old_low = await submit(store, priority=0)
    new_low = await submit(store, priority=0)
    high = await submit(store, priority=5)

    order = [(await claim_one(store)).job_id for _ in range(3)]

    assert order == [high.id, old_low.id, new_low.id]
    assert await claim_all(store) == []


async def test_claim_respects_limit(store: Store) -> None:
    await submit(store, make_step("a"), make_step("b"), make_step("c"))

    first = await store.step_claim("w1", limit=2, lease_seconds=30)
    rest = await store.step_claim("w2", limit=5, lease_seconds=30)

    assert len(first) == 2
    assert len(rest) == 1
    assert {c.key for c in first} | {c.key for c in rest} == {"a", "b", "c"}
    assert await store.step_claim("w3", limit=5, lease_seconds=30) == []


async def test_claim_marks_the_step_running_under_a_new_lease(store: Store) -> None:
    job = await submit(store, make_step("a", args={"q": "${input.n}"}), job_input={"n": 7})
    before = (await steps_by_key(store, job.id))["a"]

    claim = await claim_one(store, "worker-1", lease_seconds=30)

    step = (await steps_by_key(store, job.id))["a"]
    assert step.status == "running"
    assert step.attempt == claim.attempt == 1
    assert step.lease_owner == "worker-1"
    assert step.lease_token == claim.lease_token
    assert claim.lease_token != before.lease_token
    [started] = [e for e in await store.event_list(job.id) if e.kind == "step_started"]
    assert abs(claim.lease_expires - (started.at + 30)) < 1  # the backend's clock
    assert (claim.job_id, claim.tenant_id, claim.key, claim.plan_version) == (
        job.id,
        job.tenant_id,
        "a",
        1,
    )
    assert claim.job_input == {"n": 7}
    assert claim.spec["args"] == {"q": "${input.n}"}
    assert claim.idempotency_key == f"{job.tenant_id}:{job.id}:a"
    assert not claim.reconcile_pending
    assert transitions(await step_events(store, job.id, "a"))[-1] == ("ready", "running")
    assert await claim_all(store, "worker-2") == []


async def test_steps_of_parked_or_cancelled_jobs_are_not_claimed(store: Store) -> None:
    for outcome, parked in (
        (Outcome.DEAD_LETTER, "dead_lettered"),
        (Outcome.ESCALATE, "escalated"),
    ):
        job = await submit(store, make_step("a"), make_step("b"))
        claims = {c.key: c for c in await claim_all(store)}
        # Give b back so that it is ready, then park the job through a's failure.
        b = claims["b"]
        await store.step_release([(b.step_id, b.lease_token)], worker_id="w1", reason="test")
        assert (await steps_by_key(store, job.id))["b"].status == "ready"
        assert await store.step_fail(claims["a"], failure(), decision(outcome), worker_id="w1")
        assert (await store.job_get(job.id)).status == parked
    cancelled = await submit(store, make_step("a"))
    await store.job_cancel(cancelled.id, actor=ACTOR)

    assert await claim_all(store) == []


async def test_stale_lease_cannot_complete_or_fail(store: Store) -> None:
    job = await submit(store)
    first = await claim_one(store, "w1", lease_seconds=0.05)
    await expire()
    assert await store.leases_reap(actor="reaper") == 1
    second = await claim_one(store, "w2")
    assert second.attempt == 2
    assert second.lease_token != first.lease_token

    stale = await store.step_complete(first, {"by": "w1"}, worker_id="w1")
    assert not stale.recorded
    assert not await store.step_fail(
        first, failure("non_retriable"), decision(Outcome.DEAD_LETTER), worker_id="w1"
    )
    step = (await steps_by_key(store, job.id))["a"]
    assert (step.status, step.lease_owner, step.attempt, step.output) == ("running", "w2", 2, None)
    assert (await store.job_get(job.id)).status == "executing"

    done = await store.step_complete(second, {"by": "w2"}, worker_id="w2")
    assert done.recorded
    assert (await steps_by_key(store, job.id))["a"].output == {"by": "w2"}
    assert (await store.job_get(job.id)).result == {"a": {"by": "w2"}}
    # A completed step can never be completed (or failed) again, even by its own lease.
    assert not (await store.step_complete(second, {"by": "again"}, worker_id="w2")).recorded
    assert not await store.step_fail(second, failure(), decision(Outcome.RETRY), worker_id="w2")
    assert (await steps_by_key(store, job.id))["a"].output == {"by": "w2"}


async def test_complete_fans_out_and_in_and_finishes_the_job(store: Store) -> None:
    job = await submit(
        store,
        make_step("a"),
        make_step("b", deps=["a"], args={"x": "${steps.a.output.v}"}),
        make_step("c", deps=["a"]),
        make_step(
            "d",
            deps=["b", "c"],
            args={"b": "${steps.b.output.v}", "c": "${steps.c.output.v}"},
        ),
        job_input={"q": "hi"},
    )
    a = await claim_one(store)
    first = await store.step_complete(a, {"v": 1}, worker_id="w1")
    assert first.recorded
    assert first.next_claim is None
    assert first.job_status == "executing"
    steps = await steps_by_key(store, job.id)
    assert (steps["a"].status, steps["a"].output) == ("succeeded", {"v": 1})
    assert (steps["b"].status, steps["c"].status, steps["d"].status) == (
        "ready",
        "ready",
        "pending",
    )

    b, c = sorted(await claim_all(store), key=lambda claim: claim.key)
    assert b.outputs == {"a": {"v": 1}}
    await store.step_complete(b, {"v": 2}, worker_id="w1")
    assert (await steps_by_key(store, job.id))["d"].status == "pending"

    done_c = await store.step_complete(c, {"v": 3}, worker_id="w1", claim_next=True)
    d = done_c.next_claim
    assert d is not None
    assert d.key == "d"
    assert d.outputs == {"b": {"v": 2}, "c": {"v": 3}}
    assert d.job_input == {"q": "hi"}
    step_d = (await steps_by_key(store, job.id))["d"]
    assert (step_d.status, step_d.lease_owner, step_d.lease_token) == (
        "running",
        "w1",
        d.lease_token,
    )
    assert await claim_all(store, "w2") == []

    last = await store.step_complete(d, {"total": 5}, worker_id="w1")
    assert last.job_status == "completed"
    finished = await store.job_get(job.id)
    assert finished.status == "completed"
    assert finished.result == {"d": {"total": 5}}
    assert not finished.degraded
    assert finished.finished is not None
    events = await store.event_list(job.id)
    assert job_transitions(events)[-2:] == [
        ("executing", "evaluating"),
        ("evaluating", "completed"),
    ]
    # a's success is recorded before the steps it released.
    kinds = [(e.kind, e.step_key) for e in events]
    assert kinds.index(("step_succeeded", "a")) < kinds.index(("step_ready", "b"))
    assert kinds.index(("step_succeeded", "c")) < kinds.index(("step_ready", "d"))
    assert kinds.index(("step_ready", "d")) < kinds.index(("step_started", "d"))
    assert [e.id for e in events] == sorted(e.id for e in events)


async def test_result_holds_every_leaf_output(store: Store) -> None:
    job = await submit(store, make_step("a"), make_step("b", deps=["a"]), make_step("c"))
    for _ in range(2):
        for claim in await claim_all(store):
            await store.step_complete(claim, {"key": claim.key}, worker_id="w1")

    finished = await store.job_get(job.id)
    assert finished.status == "completed"
    assert finished.result == {"b": {"key": "b"}, "c": {"key": "c"}}
