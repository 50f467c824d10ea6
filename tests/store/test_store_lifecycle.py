"""Conformance: cancel, redrive, wall-time and step budgets, and work that finishes while its
job is parked."""

from __future__ import annotations

import pytest
from conformance import (
    ACTOR,
    claim_all,
    claim_one,
    decision,
    expire,
    failure,
    make_step,
    steps_by_key,
    submit,
)

from stalwart.domain.failures import Outcome
from stalwart.errors import InvalidTransitionError, NotRedrivableError
from stalwart.store import Store


async def test_cancel_closes_open_steps_and_reviews(store: Store) -> None:
    job = await submit(
        store,
        make_step("a"),
        make_step("b", deps=["a"]),
        make_step("gate", requires_approval=True),
    )
    claims = await claim_all(store)
    assert [c.key for c in claims] == ["a"]  # gate parked
    [review] = await store.review_list(statuses=["pending"])

    cancelled = await store.job_cancel(job.id, actor="user", reason="changed my mind")

    assert (cancelled.status, cancelled.cancel_requested) == ("cancelled", True)
    assert cancelled.finished is not None
    steps = await steps_by_key(store, job.id)
    assert (steps["b"].status, steps["gate"].status) == ("cancelled", "cancelled")
    assert steps["a"].status == "running"  # told at its next heartbeat
    assert (await store.review_get(review.id)).status == "cancelled"
    # The running step may still report; nothing it did reopens the job.
    done = await store.step_complete(claims[0], {"late": True}, worker_id="w1")
    assert done.job_status == "cancelled"
    assert (await steps_by_key(store, job.id))["b"].status == "cancelled"
    assert (await store.job_get(job.id)).status == "cancelled"
    assert await claim_all(store) == []


async def test_cancelling_a_finished_job_is_refused(store: Store) -> None:
    job = await submit(store)
    await store.step_complete(await claim_one(store), {"ok": 1}, worker_id="w1")
    assert (await store.job_get(job.id)).status == "completed"

    with pytest.raises(InvalidTransitionError):
        await store.job_cancel(job.id, actor=ACTOR)

    after = await store.job_get(job.id)
    assert (after.status, after.cancel_requested) == ("completed", False)
    cancelled = await submit(store)
    await store.job_cancel(cancelled.id, actor=ACTOR)
    with pytest.raises(InvalidTransitionError):
        await store.job_cancel(cancelled.id, actor=ACTOR)


async def test_redrive_resumes_from_the_failed_step(store: Store) -> None:
    job = await submit(store, make_step("a"), make_step("b", deps=["a"], max_attempts=1))
    a = await claim_one(store)
    await store.step_complete(a, {"v": 1}, worker_id="w1")
    b = await claim_one(store)
    await store.step_fail(b, failure(), decision(Outcome.DEAD_LETTER), worker_id="w1")
    letter = await store.dead_letter_get(job.id)
    assert letter.status == "open"

    redriven = await store.job_redrive(job.id, actor="ops", reason="fixed upstream")

    assert redriven.status == "executing"
    assert redriven.error is None
    steps = await steps_by_key(store, job.id)
    assert (steps["b"].status, steps["b"].attempt) == ("ready", 0)
    assert (steps["a"].status, steps["a"].output, steps["a"].attempt) == ("succeeded", {"v": 1}, 1)
    assert (await store.dead_letter_get(letter.id)).status == "redriven"
    assert await store.dead_letter_list(statuses=["open"]) == []
    [again] = await claim_all(store)
    assert (again.key, again.attempt) == ("b", 1)
    assert again.outputs == {}
    await store.step_complete(again, {"v": 2}, worker_id="w1")
    assert (await store.job_get(job.id)).status == "completed"
    assert (await steps_by_key(store, job.id))["a"].attempt == 1  # never ran again


async def test_redrive_resumes_an_escalated_job(store: Store) -> None:
    job = await submit(store)
    claim = await claim_one(store)
    await store.step_fail(
        claim, failure("authorization"), decision(Outcome.ESCALATE), worker_id="w1"
    )

    assert (await store.job_redrive(job.id, actor="ops")).status == "executing"
    assert (await claim_one(store)).attempt == 1


async def test_only_parked_jobs_can_be_redriven(store: Store) -> None:
    running = await submit(store)
    finished = await submit(store)
    for claim in await claim_all(store):
        if claim.job_id == finished.id:
            await store.step_complete(claim, {}, worker_id="w1")

    for job_id in (running.id, finished.id):
        with pytest.raises(NotRedrivableError):
            await store.job_redrive(job_id, actor="ops")
    assert (await store.job_get(finished.id)).status == "completed"
    assert (await store.job_get(running.id)).status == "executing"


async def test_expire_fails_jobs_past_their_deadline(store: Store) -> None:
    late = await submit(store, make_step("a"), make_step("b", deps=["a"]), max_wall_seconds=0.05)
    on_time = await submit(store, max_wall_seconds=3600)

    await expire()
    assert await store.jobs_expire(actor="clock") == [late.id]

    failed = await store.job_get(late.id)
    assert failed.status == "failed"
    assert failed.error is not None and failed.error["error_class"] == "budget"
    steps = await steps_by_key(store, late.id)
    assert (steps["a"].status, steps["b"].status) == ("cancelled", "cancelled")
    assert (await store.job_get(on_time.id)).status == "executing"
    assert await store.jobs_expire(actor="clock") == []
    assert [c.job_id for c in await claim_all(store)] == [on_time.id]


async def test_a_claim_past_the_deadline_fails_the_job(store: Store) -> None:
    job = await submit(store, max_wall_seconds=0.05)
    await expire()

    assert await claim_all(store) == []

    assert (await store.job_get(job.id)).status == "failed"
    assert (await steps_by_key(store, job.id))["a"].status == "cancelled"


async def test_max_steps_fails_the_job_instead_of_running_more(store: Store) -> None:
    job = await submit(store, make_step("a"), make_step("b", deps=["a"]), max_steps=1)
    a = await claim_one(store)
    await store.step_complete(a, {}, worker_id="w1")

    assert await claim_all(store) == []

    failed = await store.job_get(job.id)
    assert failed.status == "failed"
    assert failed.steps_executed == 1
    assert failed.error is not None and failed.error["code"] == "budget_exceeded"
    assert (await steps_by_key(store, job.id))["b"].status == "cancelled"


async def test_max_steps_holds_within_one_batch_claim(store: Store) -> None:
    job = await submit(store, make_step("a"), make_step("b"), make_step("c"), max_steps=1)

    claims = await claim_all(store)

    assert len(claims) == 1
    steps = await steps_by_key(store, job.id)
    assert sorted(s.status for s in steps.values()) == ["cancelled", "cancelled", "running"]
    assert (await store.job_get(job.id)).steps_executed == 1


async def test_work_finished_while_the_job_was_parked_counts_after_redrive(store: Store) -> None:
    job = await submit(
        store,
        make_step("a", max_attempts=1),
        make_step("slow"),
        make_step("after", deps=["slow"]),
    )
    claims = {c.key: c for c in await claim_all(store)}
    await store.step_fail(claims["a"], failure(), decision(Outcome.DEAD_LETTER), worker_id="w1")
    assert (await store.job_get(job.id)).status == "dead_lettered"
    # The sibling finishes while the job waits for an operator.
    assert (await store.step_complete(claims["slow"], {"v": 1}, worker_id="w2")).recorded
    assert await claim_all(store) == []

    await store.job_redrive(job.id, actor="ops")

    for _ in range(2):
        for claim in await claim_all(store):
            await store.step_complete(claim, {"key": claim.key}, worker_id="w1")
    finished = await store.job_get(job.id)
    assert finished.status == "completed"
    assert finished.result == {"a": {"key": "a"}, "after": {"key": "after"}}


async def test_a_lease_that_expires_while_the_job_is_parked_is_recovered(store: Store) -> None:
    job = await submit(store, make_step("a"), make_step("slow"), make_step("after", deps=["slow"]))
    claims = {c.key: c for c in await claim_all(store, lease_seconds=0.05)}
    await store.step_fail(claims["a"], failure(), decision(Outcome.ESCALATE), worker_id="w1")
    await expire()
    await store.leases_reap(actor="reaper")
    assert await claim_all(store) == []

    await store.job_redrive(job.id, actor="ops")

    for _ in range(3):
        for claim in await claim_all(store):
            await store.step_complete(claim, {"key": claim.key}, worker_id="w1")
    assert (await store.job_get(job.id)).status == "completed"
