"""Conformance: every parked job says why, on the job and its dead letter (issue 14, item 8): a
step whose workers all died, a reviewer's refusal of an interrupted step, a review past its
SLA (whose error goes once a late approval resumes the job), and a planning failure with no
step before it."""

from __future__ import annotations

from conformance import claim_all, claim_one, expire, make_job, make_step, submit

from stalwart.domain.records import StepError
from stalwart.store import Store


async def test_a_step_whose_workers_all_died_dead_letters_saying_so(store: Store) -> None:
    job = await submit(store, make_step("a", max_attempts=1))
    claim = await claim_one(store, lease_seconds=0.05)
    await expire()

    await store.leases_reap(actor="reaper")

    parked = await store.job_get(job.id)
    assert parked.status == "dead_lettered"
    assert parked.error is not None and parked.error["code"] == "worker_lost"
    assert "step a" in parked.error["message"] and "lease expired" in parked.error["message"]
    letter = await store.dead_letter_get(job.id)
    assert (letter.step_id, letter.step_key) == (claim.step_id, "a")
    assert letter.error == parked.error


async def test_rejecting_an_interrupted_step_dead_letters_with_the_rejection(
    store: Store,
) -> None:
    job = await submit(store, make_step("charge", idempotent=False))
    await claim_one(store, lease_seconds=0.05)
    await expire()
    await store.leases_reap(actor="reaper")
    [review] = await store.review_list(statuses=["pending"])

    await store.review_decide(review.id, approve=False, reviewer="ops", comment="already paid")

    parked = await store.job_get(job.id)
    assert parked.status == "dead_lettered"
    assert parked.error is not None and parked.error["error_class"] == "rejected"
    assert "ops" in parked.error["message"] and "already paid" in parked.error["message"]
    assert (await store.dead_letter_get(job.id)).error == parked.error


async def test_a_review_past_its_sla_is_the_jobs_error_until_approved(store: Store) -> None:
    job = await submit(store, make_step("pay", requires_approval=True), review_sla_seconds=0.05)
    assert await claim_all(store) == []
    await expire()

    [review] = await store.reviews_escalate_overdue(actor="sla")

    parked = await store.job_get(job.id)
    assert parked.status == "escalated"
    assert parked.error is not None and parked.error["code"] == "review_overdue"
    assert parked.error["details"]["review_id"] == review.id
    letter = await store.dead_letter_get(job.id)
    assert letter.step_key == "pay" and letter.error == parked.error

    await store.review_decide(review.id, approve=True, reviewer="lead")

    resumed = await store.job_get(job.id)
    assert (resumed.status, resumed.error) == ("executing", None)


async def test_a_first_plan_that_fails_is_the_jobs_error(store: Store) -> None:
    job, _ = await store.job_create(make_job(), None, actor="api")
    [claim] = await store.job_claim_replanning("planner", lease_seconds=30)
    invalid = StepError("critical", "planning produced an invalid plan: no step", "plan_invalid")

    parked = await store.job_escalate(claim, actor="planner", reason=invalid.message, error=invalid)

    assert parked.status == "escalated"
    assert parked.error == invalid.to_dict()
    letter = await store.dead_letter_get(job.id)
    assert (letter.step_key, letter.error) == (None, invalid.to_dict())
    assert "escalation" not in letter.context
