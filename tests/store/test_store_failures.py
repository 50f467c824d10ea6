"""Conformance: a failed attempt and each decision the engine can take about it."""

from __future__ import annotations

from conformance import (
    ACTOR,
    WINDOW,
    claim_all,
    claim_one,
    decision,
    eventually,
    expire,
    failure,
    make_job,
    make_plan,
    make_step,
    step_events,
    steps_by_key,
    submit,
    transitions,
)

from stalwart.domain.failures import Outcome
from stalwart.store import Store


async def test_retry_waits_until_due_then_runs_again(store: Store) -> None:
    job = await submit(store)
    claim = await claim_one(store)

    assert await store.step_fail(
        claim, failure("transient"), decision(Outcome.RETRY, WINDOW), worker_id="w1"
    )

    step = (await steps_by_key(store, job.id))["a"]
    assert step.status == "retry_wait"
    [scheduled] = [e for e in await store.event_list(job.id) if e.kind == "step_retry_scheduled"]
    assert step.due >= scheduled.at + WINDOW - 0.01  # times come from the backend's clock
    assert step.error is not None and step.error["error_class"] == "transient"
    assert step.lease_owner is None
    assert await claim_all(store) == []
    [again] = await eventually(lambda: claim_all(store, "w2"), "the retry to come due")
    assert (again.key, again.attempt) == ("a", 2)
    assert transitions(await step_events(store, job.id, "a"))[-3:] == [
        ("running", "retry_wait"),
        ("retry_wait", "ready"),
        ("ready", "running"),
    ]
    assert (await store.job_get(job.id)).status == "executing"


async def test_skip_on_a_non_critical_step_lets_the_job_finish_degraded(store: Store) -> None:
    job = await submit(
        store,
        make_step("optional", critical=False),
        make_step("after", deps=["optional"]),
    )
    claim = await claim_one(store)

    assert await store.step_fail(
        claim, failure("non_retriable"), decision(Outcome.SKIP), worker_id="w1"
    )

    steps = await steps_by_key(store, job.id)
    assert steps["optional"].status == "skipped"
    assert steps["after"].status == "ready"
    assert transitions(await step_events(store, job.id, "optional"))[-2:] == [
        ("running", "failed"),
        ("failed", "skipped"),
    ]
    after = await claim_one(store)
    assert after.key == "after"
    assert after.outputs == {}
    await store.step_complete(after, {"ok": True}, worker_id="w1")
    finished = await store.job_get(job.id)
    assert finished.status == "completed"
    assert finished.degraded
    assert finished.result == {"after": {"ok": True}}


async def test_dead_letter_parks_the_job_with_an_open_dead_letter(store: Store) -> None:
    job = await submit(store, make_step("a"), make_step("b", deps=["a"]))
    claim = await claim_one(store)

    assert await store.step_fail(
        claim, failure("transient", "gave up"), decision(Outcome.DEAD_LETTER), worker_id="w1"
    )

    steps = await steps_by_key(store, job.id)
    assert steps["a"].status == "dead_lettered"
    assert steps["b"].status == "pending"
    parked = await store.job_get(job.id)
    assert parked.status == "dead_lettered"
    assert parked.error is not None and parked.error["message"] == "gave up"
    letters = await store.dead_letter_list(tenant_id=job.tenant_id)
    assert [(d.job_id, d.step_key, d.status) for d in letters] == [(job.id, "a", "open")]
    assert letters[0].error is not None and letters[0].error["message"] == "gave up"
    assert (await store.dead_letter_get(letters[0].id)).job_id == job.id
    assert (await store.dead_letter_get(job.id)).id == letters[0].id


async def test_escalate_parks_the_job_for_a_human(store: Store) -> None:
    job = await submit(store)
    claim = await claim_one(store)

    assert await store.step_fail(
        claim, failure("authorization", "denied"), decision(Outcome.ESCALATE), worker_id="w1"
    )

    assert (await store.job_get(job.id)).status == "escalated"
    assert (await steps_by_key(store, job.id))["a"].status == "failed"
    letter = await store.dead_letter_get(job.id)
    assert letter.status == "open"
    assert letter.error is not None and letter.error["error_class"] == "authorization"


async def test_fail_job_cancels_every_open_step(store: Store) -> None:
    job = await submit(store, make_step("a"), make_step("b", deps=["a"]), make_step("c"))
    claims = {c.key: c for c in await claim_all(store)}
    await store.step_release(
        [(claims["c"].step_id, claims["c"].lease_token)], worker_id="w1", reason="test"
    )

    assert await store.step_fail(
        claims["a"], failure("budget", "over budget"), decision(Outcome.FAIL_JOB), worker_id="w1"
    )

    failed = await store.job_get(job.id)
    assert failed.status == "failed"
    assert failed.error is not None
    assert failed.cancel_requested
    steps = await steps_by_key(store, job.id)
    assert steps["b"].status == "cancelled"
    assert steps["c"].status == "cancelled"
    # The failed step is final (failed, or cancelled with the job) and keeps its error.
    assert steps["a"].status in ("failed", "cancelled")
    assert steps["a"].error is not None and steps["a"].error["message"] == "over budget"
    assert await claim_all(store) == []


async def test_replan_applies_a_new_version_and_reuses_finished_work(store: Store) -> None:
    v1 = make_plan(
        make_step("fetch"),
        make_step("parse", deps=["fetch"], args={"raw": "${steps.fetch.output.raw}"}),
        make_step("send", deps=["parse"]),
    )
    job, _ = await store.job_create(make_job(max_replans=1), v1, actor=ACTOR)
    fetch = await claim_one(store)
    await store.step_complete(fetch, {"raw": "<x/>"}, worker_id="w1")
    parse = await claim_one(store)

    assert await store.step_fail(
        parse, failure("semantic", "bad parse"), decision(Outcome.REPLAN), worker_id="w1"
    )

    assert (await store.job_get(job.id)).status == "replanning"
    assert await claim_all(store) == []
    [claim] = await store.job_claim_replanning("planner-1", lease_seconds=30)
    assert claim.job.id == job.id
    assert v1.plan_hash() in claim.tried_hashes
    assert claim.feedback is not None and claim.feedback["step"] == "parse"
    assert await store.job_claim_replanning("planner-2", lease_seconds=30) == []

    v2 = make_plan(
        make_step("fetch"),
        make_step("parse2", deps=["fetch"], args={"raw": "${steps.fetch.output.raw}", "v": 2}),
        make_step("send", deps=["parse2"]),
        version=2,
    )
    replanned = await store.job_replan(claim, v2, actor="planner-1")

    assert replanned.status == "executing"
    assert replanned.plan_version == 2
    assert replanned.replans == 1
    steps = await steps_by_key(store, job.id)
    assert steps["fetch"].status == "succeeded"
    assert steps["fetch"].output == {"raw": "<x/>"}
    assert (steps["parse2"].status, steps["send"].status) == ("ready", "pending")
    old = {
        s.key: s for s in await store.step_list(job.id, all_versions=True) if s.plan_version == 1
    }
    assert (old["parse"].status, old["send"].status) == ("skipped", "skipped")
    assert [p.version for p in await store.plan_list(job.id)] == [1, 2]

    parse2 = await claim_one(store)
    assert (parse2.key, parse2.plan_version) == ("parse2", 2)
    assert parse2.outputs == {"fetch": {"raw": "<x/>"}}
    assert parse2.idempotency_key.endswith(":v2")
    await store.step_complete(parse2, {"ok": 1}, worker_id="w1")
    send = await claim_one(store)
    assert send.key == "send"
    await store.step_complete(send, {"sent": True}, worker_id="w1")
    done = await store.job_get(job.id)
    assert done.status == "completed"
    assert done.result == {"send": {"sent": True}}


async def test_a_stale_replan_claim_changes_nothing(store: Store) -> None:
    job = await submit(store)
    claim = await claim_one(store)
    await store.step_fail(claim, failure("semantic"), decision(Outcome.REPLAN), worker_id="w1")
    [stale] = await store.job_claim_replanning("planner-1", lease_seconds=0.05)
    await expire()
    [fresh] = await store.job_claim_replanning("planner-2", lease_seconds=30)
    assert fresh.lease_token != stale.lease_token

    after = await store.job_replan(stale, make_plan(make_step("b"), version=2), actor="planner-1")

    assert after.status == "replanning"
    assert after.plan_version == 1
    assert [p.version for p in await store.plan_list(job.id)] == [1]
    assert (
        await store.job_replan(fresh, make_plan(make_step("b"), version=2), actor="planner-2")
    ).plan_version == 2


async def test_escalate_from_a_replan_claim_parks_the_job(store: Store) -> None:
    job = await submit(store)
    claim = await claim_one(store)
    await store.step_fail(claim, failure("semantic"), decision(Outcome.REPLAN), worker_id="w1")
    [replan] = await store.job_claim_replanning("planner-1", lease_seconds=30)

    parked = await store.job_escalate(
        replan, actor="planner-1", reason="plan repeated", error=failure("critical", "loop")
    )

    # The step failure that sent the job to replanning stays its cause; the replan's own
    # failure is kept beside it.
    assert parked.status == "escalated"
    assert parked.error == failure("semantic").to_dict()
    letter = await store.dead_letter_get(job.id)
    assert letter.status == "open"
    assert (letter.step_id, letter.step_key) == (claim.step_id, "a")
    assert letter.error == parked.error
    assert letter.reason == "escalated: plan repeated; cause: boom"
    assert letter.context["step"]["id"] == "a" and letter.context["attempt"] == 1
    assert letter.context["escalation"] == failure("critical", "loop").to_dict()
    assert await store.job_claim_replanning("planner-2", lease_seconds=30) == []
    assert await claim_all(store) == []
