"""Conformance: expired leases, heartbeats and released leases."""

from __future__ import annotations

import asyncio

from conformance import (
    ACTOR,
    claim_all,
    claim_one,
    expire,
    make_step,
    steps_by_key,
    submit,
)

from stalwart.store import Store


async def test_reap_returns_an_idempotent_step_to_ready(store: Store) -> None:
    job = await submit(store, make_step("a"), make_step("b"))
    short = await claim_one(store, lease_seconds=0.05)
    await claim_one(store, lease_seconds=30)

    await expire()
    assert await store.leases_reap(actor="reaper") == 1

    steps = await steps_by_key(store, job.id)
    reaped = steps[short.key]
    assert (reaped.status, reaped.attempt, reaped.lease_owner) == ("ready", 1, None)
    held = steps["b" if short.key == "a" else "a"]
    assert (held.status, held.lease_owner) == ("running", "w1")
    assert await store.leases_reap(actor="reaper") == 0
    again = await claim_one(store, "w2")
    assert (again.key, again.attempt) == (short.key, 2)


async def test_reap_dead_letters_a_critical_step_out_of_attempts(store: Store) -> None:
    job = await submit(store, make_step("a", max_attempts=1))
    await claim_one(store, lease_seconds=0.05)
    await expire()

    assert await store.leases_reap(actor="reaper") == 1

    assert (await steps_by_key(store, job.id))["a"].status == "dead_lettered"
    assert (await store.job_get(job.id)).status == "dead_lettered"
    assert (await store.dead_letter_get(job.id)).status == "open"
    assert await claim_all(store) == []


async def test_reap_skips_a_non_critical_step_out_of_attempts(store: Store) -> None:
    job = await submit(store, make_step("a", max_attempts=1, critical=False))
    await claim_one(store, lease_seconds=0.05)
    await expire()

    await store.leases_reap(actor="reaper")

    assert (await steps_by_key(store, job.id))["a"].status == "skipped"
    finished = await store.job_get(job.id)
    assert (finished.status, finished.degraded) == ("completed", True)


async def test_reap_interrupts_a_non_idempotent_step_and_asks_a_human(store: Store) -> None:
    job = await submit(store, make_step("charge", idempotent=False, args={"amount": 9}))
    await claim_one(store, lease_seconds=0.05)
    await expire()

    assert await store.leases_reap(actor="reaper") == 1

    assert (await steps_by_key(store, job.id))["charge"].status == "interrupted"
    assert (await store.job_get(job.id)).status == "waiting_approval"
    assert await claim_all(store) == []
    [review] = await store.review_list(tenant_id=job.tenant_id, statuses=["pending"])
    assert (review.kind, review.step_key) == ("interrupted", "charge")
    assert review.context["args"] == {"amount": 9}

    await store.review_decide(review.id, approve=True, reviewer="ops")

    assert (await steps_by_key(store, job.id))["charge"].status == "ready"
    assert (await store.job_get(job.id)).status == "executing"
    again = await claim_one(store)
    assert (again.key, again.attempt, again.reconcile_pending) == ("charge", 2, False)


async def test_rejecting_an_interrupted_step_fails_it_for_good(store: Store) -> None:
    job = await submit(store, make_step("charge", idempotent=False))
    await claim_one(store, lease_seconds=0.05)
    await expire()
    await store.leases_reap(actor="reaper")
    [review] = await store.review_list(statuses=["pending"])

    await store.review_decide(review.id, approve=False, reviewer="ops")

    assert (await steps_by_key(store, job.id))["charge"].status == "dead_lettered"
    assert (await store.job_get(job.id)).status == "dead_lettered"
    assert await claim_all(store) == []


async def test_reap_reconciles_a_non_idempotent_step_that_can(store: Store) -> None:
    job = await submit(store, make_step("charge", idempotent=False, has_reconcile=True))
    await claim_one(store, lease_seconds=0.05)
    await expire()

    await store.leases_reap(actor="reaper")

    assert (await steps_by_key(store, job.id))["charge"].status == "ready"
    assert await store.review_list(statuses=["pending"]) == []
    again = await claim_one(store)
    assert (again.attempt, again.reconcile_pending) == (2, True)
    await store.step_complete(again, {"found": True}, worker_id="w1")
    assert not (await steps_by_key(store, job.id))["charge"].reconcile_pending


async def test_heartbeat_extends_the_lease(store: Store) -> None:
    job = await submit(store)
    claim = await claim_one(store, lease_seconds=0.1)
    await asyncio.sleep(0.05)

    beat = await store.step_heartbeat("w1", [(claim.step_id, claim.lease_token)], lease_seconds=30)

    assert beat.lost == set()
    assert beat.cancelled == set()
    await asyncio.sleep(0.1)  # past the original expiry
    assert await store.leases_reap(actor="reaper") == 0
    step = (await steps_by_key(store, job.id))["a"]
    assert (step.status, step.lease_owner) == ("running", "w1")
    assert step.lease_expires is not None and step.lease_expires > claim.lease_expires
    assert (await store.step_complete(claim, {}, worker_id="w1")).recorded


async def test_heartbeat_reports_lost_leases(store: Store) -> None:
    await submit(store, make_step("a"), make_step("b"))
    first = await claim_one(store, lease_seconds=0.05)
    held = await claim_one(store, lease_seconds=30)
    await expire()
    await store.leases_reap(actor="reaper")
    await claim_one(store, "w2")  # someone else now holds the step

    beat = await store.step_heartbeat(
        "w1",
        [(first.step_id, first.lease_token), (held.step_id, held.lease_token)],
        lease_seconds=30,
    )

    assert beat.lost == {first.step_id}
    assert await store.step_heartbeat("w1", [], lease_seconds=30) == type(beat)()


async def test_heartbeat_reports_steps_whose_job_was_cancelled(store: Store) -> None:
    job = await submit(store)
    claim = await claim_one(store)

    cancelled = await store.job_cancel(job.id, actor=ACTOR, reason="user asked")

    assert cancelled.status == "cancelled"
    assert cancelled.cancel_requested
    beat = await store.step_heartbeat("w1", [(claim.step_id, claim.lease_token)], lease_seconds=30)
    assert beat.cancelled == {claim.step_id}


async def test_release_gives_the_attempt_back(store: Store) -> None:
    job = await submit(store)
    claim = await claim_one(store)
    assert claim.attempt == 1

    await store.step_release([(claim.step_id, claim.lease_token)], worker_id="w1", reason="drain")

    step = (await steps_by_key(store, job.id))["a"]
    assert (step.status, step.attempt, step.lease_owner) == ("ready", 0, None)
    assert not (await store.step_complete(claim, {}, worker_id="w1")).recorded
    again = await claim_one(store, "w2")
    assert again.attempt == 1
    assert again.lease_token != claim.lease_token


async def test_release_with_a_stale_token_changes_nothing(store: Store) -> None:
    job = await submit(store)
    claim = await claim_one(store)

    await store.step_release(
        [(claim.step_id, claim.lease_token + 1000)], worker_id="w1", reason="drain"
    )

    step = (await steps_by_key(store, job.id))["a"]
    assert (step.status, step.attempt, step.lease_owner) == ("running", 1, "w1")


async def test_rejecting_an_interrupted_optional_step_skips_it(store: Store) -> None:
    job = await submit(store, make_step("notify", idempotent=False, critical=False))
    await claim_one(store, lease_seconds=0.05)
    await expire()
    await store.leases_reap(actor="reaper")
    [review] = await store.review_list(statuses=["pending"])

    await store.review_decide(review.id, approve=False, reviewer="ops")

    assert (await steps_by_key(store, job.id))["notify"].status == "skipped"
    finished = await store.job_get(job.id)
    assert (finished.status, finished.degraded) == ("completed", True)
