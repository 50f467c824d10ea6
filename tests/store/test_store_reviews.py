"""Conformance: approval gates, human steps, review decisions and overdue reviews."""

from __future__ import annotations

import pytest
from conformance import (
    OTHER_TENANT,
    claim_all,
    claim_one,
    expire,
    make_step,
    steps_by_key,
    submit,
)

from stalwart.domain.plans import ReviewOption, ReviewSpec
from stalwart.errors import NotFoundError, ReviewAlreadyDecidedError
from stalwart.store import Store


async def _park(store: Store, **job_fields: object) -> tuple[str, str]:
    """A job whose only step needs approval, parked: (job id, review id)."""
    job = await submit(
        store,
        make_step("pay", requires_approval=True, args={"to": "${input.email}", "amount": 3}),
        job_input={"email": "a@example.com"},
        **job_fields,
    )
    assert await claim_all(store) == []
    [review] = await store.review_list(tenant_id=job.tenant_id, statuses=["pending"])
    assert review.job_id == job.id
    return job.id, review.id


async def test_a_step_that_requires_approval_parks_at_claim_time(store: Store) -> None:
    job_id, review_id = await _park(store)

    step = (await steps_by_key(store, job_id))["pay"]
    assert step.status == "awaiting_approval"
    assert step.attempt == 0
    assert (await store.job_get(job_id)).status == "waiting_approval"
    review = await store.review_get(review_id)
    assert (review.kind, review.status, review.step_key, review.step_id) == (
        "approval",
        "pending",
        "pay",
        step.id,
    )
    assert review.reason
    assert review.asked
    assert [o["name"] for o in review.options] == ["approve", "reject"]
    assert review.context["args"] == {"to": "a@example.com", "amount": 3}
    assert review.sla_deadline > review.created
    assert review.decided is None


async def test_approval_makes_the_step_ready_and_it_runs_without_parking_again(
    store: Store,
) -> None:
    job_id, review_id = await _park(store)

    decided = await store.review_decide(review_id, approve=True, reviewer="alice", comment="ok")

    assert (decided.status, decided.decision, decided.decided_by, decided.comment) == (
        "approved",
        "approved",
        "alice",
        "ok",
    )
    assert decided.decided is not None
    assert (await steps_by_key(store, job_id))["pay"].status == "ready"
    assert (await store.job_get(job_id)).status == "executing"
    claim = await claim_one(store)
    assert (claim.key, claim.attempt) == ("pay", 1)
    await store.step_complete(claim, {"paid": True}, worker_id="w1")
    assert (await store.job_get(job_id)).status == "completed"
    assert [e.actor for e in await store.event_list(job_id) if e.kind == "review_approved"] == [
        "alice"
    ]


async def test_reject_fails_the_job_when_on_reject_is_fail(store: Store) -> None:
    job_id, review_id = await _park(store, on_reject="fail")

    await store.review_decide(review_id, approve=False, reviewer="bob", comment="no")

    assert (await store.job_get(job_id)).status == "rejected"
    assert (await steps_by_key(store, job_id))["pay"].status == "rejected"
    assert (await store.review_get(review_id)).status == "rejected"
    assert await claim_all(store) == []


async def test_reject_replans_when_on_reject_is_replan(store: Store) -> None:
    job_id, review_id = await _park(store, on_reject="replan", max_replans=1)

    await store.review_decide(review_id, approve=False, reviewer="bob", comment="too much")

    assert (await store.job_get(job_id)).status == "replanning"
    [claim] = await store.job_claim_replanning("planner", lease_seconds=30)
    assert claim.job.id == job_id
    assert claim.feedback is not None and claim.feedback["comment"] == "too much"


async def test_reject_with_no_replans_left_rejects_the_job(store: Store) -> None:
    job_id, review_id = await _park(store, on_reject="replan", max_replans=0)

    await store.review_decide(review_id, approve=False, reviewer="bob")

    assert (await store.job_get(job_id)).status == "rejected"


async def test_a_review_is_decided_once_and_only_by_its_tenant(store: Store) -> None:
    _, review_id = await _park(store)

    with pytest.raises(NotFoundError):
        await store.review_decide(review_id, approve=True, reviewer="x", tenant_id=OTHER_TENANT)
    with pytest.raises(NotFoundError):
        await store.review_get(review_id, tenant_id=OTHER_TENANT)
    assert (await store.review_get(review_id)).status == "pending"
    await store.review_decide(review_id, approve=True, reviewer="alice")
    with pytest.raises(ReviewAlreadyDecidedError):
        await store.review_decide(review_id, approve=False, reviewer="bob")
    assert (await store.review_get(review_id)).decided_by == "alice"
    with pytest.raises(NotFoundError):
        await store.review_decide("rev_missing", approve=True, reviewer="alice")


async def test_conditional_approval_reads_a_previous_steps_output(store: Store) -> None:
    rule = {"steps.quote.output.amount": {"gt": 100}}
    steps = (
        make_step("quote"),
        make_step(
            "pay",
            deps=["quote"],
            requires_approval=rule,
            args={"amount": "${steps.quote.output.amount}"},
        ),
    )
    small = await submit(store, *steps)
    large = await submit(store, *steps)
    for claim in await claim_all(store):
        amount = 5 if claim.job_id == small.id else 500
        await store.step_complete(claim, {"amount": amount}, worker_id="w1")

    [runs] = await claim_all(store)

    assert (runs.job_id, runs.key) == (small.id, "pay")
    assert (await steps_by_key(store, large.id))["pay"].status == "awaiting_approval"
    [review] = await store.review_list(statuses=["pending"])
    assert review.job_id == large.id
    assert review.context["args"] == {"amount": 500}


async def test_a_human_step_parks_and_its_claim_carries_the_decision(store: Store) -> None:
    review = ReviewSpec(
        reason="sign-off",
        asked="Sign the contract?",
        options=[ReviewOption(name="approve", impact="signed")],
    )
    job = await submit(store, make_step("sign", kind="human", review=review))
    assert await claim_all(store) == []
    [pending] = await store.review_list(tenant_id=job.tenant_id, statuses=["pending"])
    assert (pending.kind, pending.reason, pending.asked) == (
        "human",
        "sign-off",
        "Sign the contract?",
    )
    assert pending.options == [{"name": "approve", "impact": "signed"}]

    await store.review_decide(pending.id, approve=True, reviewer="carol", comment="signed")

    claim = await claim_one(store)
    assert claim.kind == "human"
    assert claim.review is not None
    assert (claim.review["decision"], claim.review["reviewer"], claim.review["comment"]) == (
        "approved",
        "carol",
        "signed",
    )


async def test_an_overdue_review_escalates_once(store: Store) -> None:
    job_id, review_id = await _park(store, review_sla_seconds=0.05)
    on_time_job, on_time = await _park(store, tenant=OTHER_TENANT, review_sla_seconds=3600)

    await expire()
    escalated = await store.reviews_escalate_overdue(actor="sla")

    assert [(r.id, r.status) for r in escalated] == [(review_id, "escalated")]
    assert escalated[0].escalated is not None
    assert (await store.job_get(job_id)).status == "escalated"
    assert await store.reviews_escalate_overdue(actor="sla") == []
    assert (await store.review_get(on_time)).status == "pending"
    assert (await store.job_get(on_time_job)).status == "waiting_approval"

    await store.review_decide(review_id, approve=True, reviewer="lead")

    assert (await store.job_get(job_id)).status == "executing"
    assert (await steps_by_key(store, job_id))["pay"].status == "ready"
    assert await store.dead_letter_list(statuses=["open"]) == []
    assert (await claim_one(store)).job_id == job_id


async def test_a_steps_own_sla_overrides_the_jobs(store: Store) -> None:
    job = await submit(
        store,
        make_step("pay", requires_approval=True, review=ReviewSpec(sla_seconds=0.05)),
        review_sla_seconds=3600,
    )
    assert await claim_all(store) == []

    await expire()

    assert [r.job_id for r in await store.reviews_escalate_overdue(actor="sla")] == [job.id]


async def test_work_finished_while_a_review_was_escalated_counts_after_approval(
    store: Store,
) -> None:
    job = await submit(
        store,
        make_step("gate", requires_approval=True),
        make_step("slow"),
        make_step("after", deps=["slow"]),
        review_sla_seconds=0.05,
    )
    [slow] = await claim_all(store)
    await expire()
    [review] = await store.reviews_escalate_overdue(actor="sla")
    assert (await store.job_get(job.id)).status == "escalated"
    await store.step_complete(slow, {"v": 1}, worker_id="w1")

    await store.review_decide(review.id, approve=True, reviewer="lead")

    for _ in range(2):
        for claim in await claim_all(store):
            await store.step_complete(claim, {"key": claim.key}, worker_id="w1")
    finished = await store.job_get(job.id)
    assert finished.status == "completed"
    assert set(finished.result or {}) == {"gate", "after"}
