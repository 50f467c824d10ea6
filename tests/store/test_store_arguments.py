"""Conformance: each attempt's arguments, resolved at claim, are stored on the step (decision
0037); a step waiting for approval and an interrupted step show what they run (or ran) with,
never the template."""

from __future__ import annotations

from typing import Any

from conformance import claim_one, expire, make_job, make_plan, make_step, steps_by_key

from stalwart.domain.plans import PlanStep
from stalwart.domain.records import JobRecord
from stalwart.store import Store


async def submit_with(store: Store, job_input: dict[str, Any], *steps: PlanStep) -> JobRecord:
    """A job with this input whose plan holds `steps`."""
    job, _ = await store.job_create(make_job(job_input=job_input), make_plan(*steps), actor="test")
    return job


async def test_a_claim_stores_the_arguments_it_resolved(store: Store) -> None:
    job = await submit_with(
        store,
        {"document": "inv-7"},
        make_step("extract", args={"document": "${input.document}", "pages": 2}),
        make_step(
            "pay",
            deps=["extract"],
            args={
                "amount": "${steps.extract.output.amount}",
                "memo": "invoice ${input.document}: ${steps.extract.output.amount}",
            },
        ),
    )
    before = await steps_by_key(store, job.id)
    assert before["extract"].args is None and before["pay"].args is None

    extract = await claim_one(store)
    assert extract.args == {"document": "inv-7", "pages": 2}
    assert (await steps_by_key(store, job.id))["extract"].args == extract.args

    done = await store.step_complete(
        extract, {"amount": 42.5}, worker_id="w1", claim_next=True, lease_seconds=30
    )
    pay = done.next_claim
    assert pay is not None and pay.key == "pay"
    resolved = {"amount": 42.5, "memo": "invoice inv-7: 42.5"}
    assert pay.args == resolved
    after = await steps_by_key(store, job.id)
    assert after["pay"].args == resolved
    assert after["pay"].spec["args"]["amount"] == "${steps.extract.output.amount}"
    assert after["pay"].to_dict()["args"] == resolved


async def test_an_unresolvable_reference_stores_no_arguments(store: Store) -> None:
    job = await submit_with(store, {"n": 1}, make_step("a", args={"x": "${input.missing}"}))

    claim = await claim_one(store)

    # The executor resolves again and fails the attempt as invalid_arguments, naming the path.
    assert claim.args is None
    assert (await steps_by_key(store, job.id))["a"].args is None


async def test_a_step_waiting_for_approval_shows_what_it_will_run_with(store: Store) -> None:
    job = await submit_with(
        store,
        {"email": "ada@example.com"},
        make_step("extract"),
        make_step(
            "pay",
            deps=["extract"],
            requires_approval=True,
            args={"to": "${input.email}", "amount": "${steps.extract.output.amount}"},
        ),
    )
    extract = await claim_one(store)
    await store.step_complete(extract, {"amount": 12.5}, worker_id="w1", claim_next=True)

    [review] = await store.review_list(statuses=["pending"])
    resolved = {"to": "ada@example.com", "amount": 12.5}
    assert review.arguments == resolved
    assert review.context["args"] == resolved
    pay = (await steps_by_key(store, job.id))["pay"]
    assert (pay.status, pay.args) == ("awaiting_approval", resolved)


async def test_an_interrupted_steps_review_shows_what_it_ran_with(store: Store) -> None:
    job = await submit_with(
        store, {"n": 9}, make_step("charge", idempotent=False, args={"amount": "${input.n}"})
    )
    await claim_one(store, lease_seconds=0.05)
    await expire()
    await store.leases_reap(actor="reaper")

    [review] = await store.review_list(tenant_id=job.tenant_id, statuses=["pending"])
    assert review.kind == "interrupted"
    assert review.arguments == {"amount": 9}
