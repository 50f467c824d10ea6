"""Recovery corners: corrupt rows are quarantined per job, replans never reuse an output whose
inputs changed, and an approval does not resume a job parked by a failed step."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from conformance import (
    ACTOR,
    claim_one,
    decision,
    failure,
    make_plan,
    make_step,
    steps_by_key,
    submit,
)

from stalwart.domain.failures import Outcome
from stalwart.store.base import Store


async def test_a_corrupt_job_is_quarantined_and_the_queue_moves_on(
    store: Store, corrupt_job_input: Callable[[str], Awaitable[None]]
) -> None:
    bad = await submit(store)
    good = await submit(store)
    await corrupt_job_input(bad.id)

    claims = await store.step_claim("w1", limit=10, lease_seconds=30)

    assert [c.job_id for c in claims] == [good.id]
    letters = await store.dead_letter_list()
    assert [d.job_id for d in letters] == [bad.id]
    assert "corrupt" in letters[0].reason
    assert await store.step_claim("w1", limit=10, lease_seconds=30) == []


async def test_replan_reruns_a_step_whose_upstream_runs_again(store: Store) -> None:
    a = make_step("a", args={"n": 1})
    b = make_step("b", deps=["a"], args={"n": "${steps.a.output.n}"})
    c = make_step("c", deps=["b"])
    job = await submit(store, a, b, c, max_replans=1)
    for output in ({"n": 1}, {"n": 2}):
        claim = await claim_one(store)
        await store.step_complete(claim, output, worker_id="w1")
    claim = await claim_one(store)
    await store.step_fail(claim, failure("semantic"), decision(Outcome.REPLAN), worker_id="w1")

    (replan,) = await store.job_claim_replanning("w1", lease_seconds=30)
    a2 = make_step("a", args={"n": 5})  # changed: runs again, and so must b, which reads it
    await store.job_replan(replan, make_plan(a2, b, c, version=2), actor=ACTOR)

    steps = await steps_by_key(store, job.id)
    assert steps["a"].status == "ready"
    assert steps["b"].status == "pending" and steps["b"].output is None


async def test_approval_does_not_resume_a_job_parked_by_a_failed_step(store: Store) -> None:
    gated = make_step("gated", requires_approval=True)
    other = make_step("other")
    job = await submit(store, gated, other)
    (claim,) = await store.step_claim("w1", limit=10, lease_seconds=30)
    assert claim.key == "other"  # "gated" parked for approval instead of running
    await store.step_fail(
        claim, failure("authorization"), decision(Outcome.ESCALATE), worker_id="w1"
    )
    assert (await store.job_get(job.id)).status == "escalated"

    (review,) = await store.review_list(statuses=["pending"])
    await store.review_decide(review.id, approve=True, reviewer="alice")

    assert (await store.job_get(job.id)).status == "escalated"
    redriven = await store.job_redrive(job.id, actor=ACTOR)
    assert redriven.status == "executing"
