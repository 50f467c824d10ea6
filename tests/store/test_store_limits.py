"""Conformance: limits shared by every worker (concurrency caps, rate limits, 429 pauses and
circuit breakers), enforced while claiming. A held-back step stays ready with no attempt used."""

from __future__ import annotations

from conformance import (
    OTHER_TENANT,
    WINDOW,
    claim_all,
    decision,
    eventually,
    expire,
    failure,
    limit_state,
    make_step,
    steps_by_key,
    submit,
)

from stalwart.domain.failures import Outcome, decide
from stalwart.domain.limits import Breaker, LimitSpec, tenant_key, tool_key
from stalwart.domain.plans import PlanStep
from stalwart.domain.records import Claim, StepError
from stalwart.domain.retry import RetryPolicy
from stalwart.settings import Settings
from stalwart.store import Store, open_store

T = tool_key("t")


def tool_steps(*keys: str, tool: str = "t") -> list[PlanStep]:
    """Steps of one tool, with attempts to spare."""
    return [make_step(k, tool=tool, max_attempts=5) for k in keys]


async def waiting_untouched(store: Store, job_ids: list[str], claimed: list[Claim]) -> None:
    """Every step not in `claimed` is still ready with no attempt used."""
    taken = {c.step_id for c in claimed}
    for job_id in job_ids:
        for step in (await steps_by_key(store, job_id)).values():
            if step.id not in taken:
                assert (step.status, step.attempt, step.error) == ("ready", 0, None), step


async def test_cap_claims_only_up_to_the_cap_and_frees_a_slot_on_success(store: Store) -> None:
    await store.limits_configure([LimitSpec(T, concurrency=2)])
    one = await submit(store, *tool_steps("a", "b", "c"))
    two = await submit(store, *tool_steps("d", "e"))

    claims = await store.step_claim("w1", limit=10, lease_seconds=30)

    assert len(claims) == 2
    assert all(c.tool == "t" and c.limit_keys == (T,) for c in claims)
    await waiting_untouched(store, [one.id, two.id], claims)
    state = await limit_state(store, T)
    assert (state.concurrency, state.in_use) == (2, 2)
    assert await store.step_claim("w2", limit=10, lease_seconds=30) == []
    await waiting_untouched(store, [one.id, two.id], claims)

    assert (await store.step_complete(claims[0], {"ok": 1}, worker_id="w1")).recorded
    assert (await limit_state(store, T)).in_use == 1

    more = await store.step_claim("w2", limit=10, lease_seconds=30)
    assert len(more) == 1
    assert more[0].tool == "t"
    assert (await limit_state(store, T)).in_use == 2
    await waiting_untouched(store, [one.id, two.id], [*claims, *more])


async def test_a_full_cap_does_not_hold_back_other_tools_in_the_same_claim(store: Store) -> None:
    await store.limits_configure([LimitSpec(T, concurrency=2)])
    capped = await submit(store, *tool_steps("a", "b", "c", "d", "e"), priority=5)
    free = await submit(store, *tool_steps("x", "y", tool="u"), priority=0)

    claims = await store.step_claim("w1", limit=10, lease_seconds=30)

    assert sorted(c.tool or "" for c in claims) == ["t", "t", "u", "u"]
    assert {c.job_id for c in claims if c.tool == "u"} == {free.id}
    assert all(c.limit_keys == () for c in claims if c.tool == "u")
    await waiting_untouched(store, [capped.id], claims)


async def test_a_full_cap_does_not_use_up_a_small_claim_limit(store: Store) -> None:
    # A worker with one free slot claims with limit=1: capped steps ahead in priority order
    # that cannot run must not stop it from taking a ready step of an unlimited tool.
    await store.limits_configure([LimitSpec(T, concurrency=2)])
    capped = await submit(store, *tool_steps("a", "b", "c", "d", "e"), priority=5)
    free = await submit(store, *tool_steps("x", "y", tool="u"), priority=0)
    held = await store.step_claim("w1", limit=2, lease_seconds=30)
    assert [c.tool for c in held] == ["t", "t"]

    one = await store.step_claim("w2", limit=1, lease_seconds=30)
    two = await store.step_claim("w3", limit=1, lease_seconds=30)

    assert [(c.job_id, c.tool) for c in [*one, *two]] == [(free.id, "u"), (free.id, "u")]
    await waiting_untouched(store, [capped.id], held)


async def test_a_failed_attempt_gives_its_slot_back(store: Store) -> None:
    await store.limits_configure([LimitSpec(T, concurrency=1)])
    job = await submit(store, *tool_steps("a", "b"))
    [first] = await store.step_claim("w1", limit=10, lease_seconds=30)
    assert (await limit_state(store, T)).in_use == 1

    assert await store.step_fail(first, failure(), decision(Outcome.RETRY), worker_id="w1")

    assert (await limit_state(store, T)).in_use == 0
    assert (await steps_by_key(store, job.id))[first.key].status == "retry_wait"
    again = await store.step_claim("w2", limit=10, lease_seconds=30)
    assert len(again) == 1
    assert (await limit_state(store, T)).in_use == 1


async def test_released_reaped_and_reclaimed_leases_give_their_slot_back(store: Store) -> None:
    await store.limits_configure([LimitSpec(T, concurrency=1)])
    job = await submit(store, *tool_steps("a", "b", "c"))

    [released] = await store.step_claim("w1", limit=10, lease_seconds=30)
    await store.step_release(
        [(released.step_id, released.lease_token)], worker_id="w1", reason="draining"
    )
    assert (await limit_state(store, T)).in_use == 0

    [reaped] = await store.step_claim("w2", limit=10, lease_seconds=0.05)
    assert (await limit_state(store, T)).in_use == 1
    assert await store.step_claim("w9", limit=10, lease_seconds=30) == []
    await expire()
    assert await store.leases_reap(actor="reaper") == 1
    assert (await limit_state(store, T)).in_use == 0
    assert (await steps_by_key(store, job.id))[reaped.key].status == "ready"

    [reclaimed] = await store.step_claim("w3", limit=10, lease_seconds=30)
    assert await store.step_claim("w9", limit=10, lease_seconds=30) == []
    assert await store.leases_reclaim(["w3"], actor="w3-restarted") == 1
    assert (await limit_state(store, T)).in_use == 0
    assert (await steps_by_key(store, job.id))[reclaimed.key].status == "ready"

    last = await store.step_claim("w4", limit=10, lease_seconds=30)
    assert len(last) == 1
    assert (await limit_state(store, T)).in_use == 1
    running = [s for s in (await steps_by_key(store, job.id)).values() if s.status == "running"]
    assert [s.lease_owner for s in running] == ["w4"]


async def test_tenant_cap_holds_back_that_tenant_only(store: Store) -> None:
    await store.limits_configure([LimitSpec(tenant_key("acme"), concurrency=1)])
    first = await submit(store, make_step("a"), tenant="acme")
    second = await submit(store, make_step("a"), tenant="acme")
    other = await submit(store, make_step("a"), tenant=OTHER_TENANT)

    claims = await store.step_claim("w1", limit=10, lease_seconds=30)

    assert sorted(c.tenant_id for c in claims) == ["acme", OTHER_TENANT]
    assert [c.job_id for c in claims if c.tenant_id == "acme"] == [first.id]
    assert next(c for c in claims if c.tenant_id == "acme").limit_keys == (tenant_key("acme"),)
    assert {c.job_id for c in claims if c.tenant_id == OTHER_TENANT} == {other.id}
    await waiting_untouched(store, [second.id], claims)
    assert (await limit_state(store, tenant_key("acme"))).in_use == 1
    assert await claim_all(store, "w2") == []


async def test_rate_limit_admits_a_burst_then_refills(store: Store) -> None:
    # A token every WINDOW seconds: none comes back between two claims, however slow the machine.
    await store.limits_configure([LimitSpec(T, rate=1 / WINDOW, burst=2)])
    job = await submit(store, *tool_steps("a", "b", "c", "d", "e", "f"))

    burst = await store.step_claim("w1", limit=10, lease_seconds=30)
    assert len(burst) == 2
    assert await store.step_claim("w1", limit=10, lease_seconds=30) == []
    await waiting_untouched(store, [job.id], burst)
    state = await limit_state(store, T)
    assert (state.rate, state.burst) == (1 / WINDOW, 2)
    assert state.tokens is not None and state.tokens < 1

    refilled = await eventually(
        lambda: store.step_claim("w1", limit=10, lease_seconds=30), "a refilled token"
    )

    assert len(refilled) == 1  # one token came back, not the burst
    await waiting_untouched(store, [job.id], [*burst, *refilled])


async def test_a_429_retry_after_refunds_the_attempt_and_pauses_the_tool(store: Store) -> None:
    job = await submit(store, *tool_steps("a", "b", "c"))
    other = await submit(store, *tool_steps("x", tool="u"))
    [claim] = await store.step_claim("w1", limit=1, lease_seconds=30)
    assert (claim.job_id, claim.tool, claim.attempt) == (job.id, "t", 1)
    error = StepError("transient", "slow down", code="http_429", retry_after=WINDOW)
    verdict = decide(
        error,
        attempt=claim.attempt,
        policy=RetryPolicy(max_attempts=5, base_seconds=0.01, jitter=False),
        critical=True,
        replans=0,
        max_replans=1,
    )
    assert verdict.outcome is Outcome.RETRY and verdict.refund_attempt

    assert await store.step_fail(claim, error, verdict, worker_id="w1")

    step = (await steps_by_key(store, job.id))[claim.key]
    assert (step.status, step.attempt) == ("retry_wait", 0)
    state = await limit_state(store, T)
    assert state.paused_until is not None
    assert state.pause_reason is not None and "429" in state.pause_reason
    assert "limit_paused" in [e.kind for e in await store.event_list(job.id)]
    during = await store.step_claim("w2", limit=10, lease_seconds=30)
    assert [(c.job_id, c.tool) for c in during] == [(other.id, "u")]
    assert {s.status for k, s in (await steps_by_key(store, job.id)).items() if k != claim.key} == {
        "ready"
    }

    async def resumed() -> bool:
        return (await limit_state(store, T)).paused_until is None

    await eventually(resumed, "the pause to end")
    after = await store.step_claim("w2", limit=10, lease_seconds=30)

    assert sorted(c.key for c in after) == ["a", "b", "c"]
    assert next(c for c in after if c.key == claim.key).attempt == 1


async def open_breaker(store: Store, cooldown: float) -> tuple[str, list[Claim]]:
    """A job of four steps of tool t whose breaker two transient failures opened."""
    await store.limits_configure(
        [LimitSpec(T, breaker=Breaker(failures=2, window=60, cooldown=cooldown))]
    )
    job = await submit(store, *tool_steps("a", "b", "c", "d"))
    first, second = await store.step_claim("w1", limit=2, lease_seconds=30)
    assert await store.step_fail(first, failure(), decision(Outcome.RETRY), worker_id="w1")
    state = await limit_state(store, T)
    assert (state.breaker_state, state.breaker_count) == ("closed", 1)
    assert await store.step_fail(second, failure(), decision(Outcome.RETRY), worker_id="w1")
    assert (await limit_state(store, T)).breaker_state == "open"
    assert "breaker_open" in [e.kind for e in await store.event_list(job.id)]
    return job.id, [first, second]


async def test_breaker_opens_lets_one_probe_through_and_closes_on_success(store: Store) -> None:
    job_id, _ = await open_breaker(store, cooldown=WINDOW)
    assert await store.step_claim("w2", limit=10, lease_seconds=30) == []
    assert {s.attempt for s in (await steps_by_key(store, job_id)).values()} == {0, 1}

    probes = await eventually(
        lambda: store.step_claim("w2", limit=10, lease_seconds=30), "the cool-down to end"
    )

    assert len(probes) == 1
    assert (await limit_state(store, T)).breaker_state == "half_open"
    assert await store.step_claim("w3", limit=10, lease_seconds=30) == []
    assert (await store.step_complete(probes[0], {"ok": True}, worker_id="w2")).recorded
    state = await limit_state(store, T)
    assert (state.breaker_state, state.breaker_count) == ("closed", 0)
    kinds = [e.kind for e in await store.event_list(job_id)]
    assert kinds.index("breaker_open") < kinds.index("breaker_closed")
    rest = await store.step_claim("w3", limit=10, lease_seconds=30)
    assert len(rest) == 3


async def test_a_failed_probe_opens_the_breaker_again(store: Store) -> None:
    job_id, _ = await open_breaker(store, cooldown=WINDOW)
    [probe] = await eventually(
        lambda: store.step_claim("w2", limit=10, lease_seconds=30), "the cool-down to end"
    )
    assert (await limit_state(store, T)).breaker_state == "half_open"

    assert await store.step_fail(probe, failure(), decision(Outcome.RETRY), worker_id="w2")

    assert (await limit_state(store, T)).breaker_state == "open"
    assert [e.kind for e in await store.event_list(job_id)].count("breaker_open") == 2
    assert await store.step_claim("w3", limit=10, lease_seconds=30) == []
    again = await eventually(
        lambda: store.step_claim("w3", limit=10, lease_seconds=30), "the second cool-down"
    )
    assert len(again) == 1
    assert (await limit_state(store, T)).breaker_state == "half_open"


async def test_a_lost_probe_opens_the_breaker_again(store: Store) -> None:
    # A probe whose worker vanished told us nothing: the breaker must not stay half-open (which
    # would hold the tool back for good); it opens again and a later probe follows.
    job_id, _ = await open_breaker(store, cooldown=WINDOW)
    [probe] = await eventually(
        lambda: store.step_claim("w2", limit=10, lease_seconds=0.05), "the cool-down to end"
    )
    assert (await limit_state(store, T)).breaker_state == "half_open"
    await expire()

    assert await store.leases_reap(actor="reaper") == 1

    assert (await limit_state(store, T)).breaker_state == "open"
    assert (await steps_by_key(store, job_id))[probe.key].status == "ready"
    assert await store.step_claim("w3", limit=10, lease_seconds=30) == []  # open again
    again = await eventually(
        lambda: store.step_claim("w3", limit=10, lease_seconds=30), "the second cool-down"
    )
    assert len(again) == 1
    assert (await limit_state(store, T)).breaker_state == "half_open"


async def test_an_exhausted_rate_does_not_hold_back_other_tools(store: Store) -> None:
    await store.limits_configure([LimitSpec(T, rate=0.5, burst=2)])
    limited = await submit(store, *tool_steps("a", "b", "c", "d"), priority=5)
    free = await submit(store, *tool_steps("x", "y", tool="u"), priority=0)

    claims = await store.step_claim("w1", limit=10, lease_seconds=30)

    assert sorted(c.tool or "" for c in claims) == ["t", "t", "u", "u"]
    assert {c.job_id for c in claims if c.tool == "u"} == {free.id}
    await waiting_untouched(store, [limited.id], claims)
    assert len(await store.step_claim("w1", limit=10, lease_seconds=30)) == 0


async def test_a_step_held_back_by_its_tenant_keeps_no_tool_slot(store: Store) -> None:
    # The tool's slot is taken first; the tenant's cap then refuses the step: that claim is
    # undone whole, so the tool slot must be free again.
    await store.limits_configure(
        [LimitSpec(T, concurrency=5), LimitSpec(tenant_key("acme"), concurrency=1)]
    )
    job = await submit(store, *tool_steps("a", "b", "c"), tenant="acme")

    claims = await store.step_claim("w1", limit=10, lease_seconds=30)

    assert len(claims) == 1
    assert claims[0].limit_keys == (T, tenant_key("acme"))
    assert (await limit_state(store, T)).in_use == 1
    assert (await limit_state(store, tenant_key("acme"))).in_use == 1
    await waiting_untouched(store, [job.id], claims)
    assert (await store.step_complete(claims[0], {}, worker_id="w1")).recorded
    assert (await limit_state(store, T)).in_use == 0
    assert len(await store.step_claim("w1", limit=10, lease_seconds=30)) == 1


async def test_changing_a_cap_keeps_running_steps_and_never_admits_past_it(store: Store) -> None:
    await store.limits_configure([LimitSpec(T, concurrency=2)])
    job = await submit(store, *tool_steps("a", "b", "c", "d", "e"))
    first, second = await store.step_claim("w1", limit=10, lease_seconds=30)

    await store.limits_configure([LimitSpec(T, concurrency=1)])

    state = await limit_state(store, T)
    assert (state.concurrency, state.in_use) == (1, 2)
    assert (await store.step_complete(first, {}, worker_id="w1")).recorded
    assert (await limit_state(store, T)).in_use == 1
    assert await store.step_claim("w2", limit=10, lease_seconds=30) == []
    assert (await store.step_complete(second, {}, worker_id="w1")).recorded
    [third] = await store.step_claim("w2", limit=10, lease_seconds=30)
    assert (await limit_state(store, T)).in_use == 1

    await store.limits_configure([LimitSpec(T, concurrency=3)])

    more = await store.step_claim("w3", limit=10, lease_seconds=30)
    assert len(more) == 2
    assert (await limit_state(store, T)).in_use == 3
    await waiting_untouched(store, [job.id], [first, second, third, *more])
    # what was still ready is still ready: exactly nothing, all five ran or run.
    statuses = sorted(s.status for s in (await steps_by_key(store, job.id)).values())
    assert statuses == ["running", "running", "running", "succeeded", "succeeded"]


async def test_a_chained_claim_respects_a_cap(store: Store) -> None:
    await store.limits_configure([LimitSpec(T, concurrency=1)])
    holder = await submit(store, *tool_steps("c"), priority=5)
    chain = await submit(store, make_step("a", tool="u"), make_step("b", tool="t", deps=["a"]))
    claims = {c.job_id: c for c in await store.step_claim("w1", limit=10, lease_seconds=30)}
    assert set(claims) == {holder.id, chain.id}

    done = await store.step_complete(claims[chain.id], {}, worker_id="w1", claim_next=True)

    assert done.recorded and done.next_claim is None
    assert (await steps_by_key(store, chain.id))["b"].status == "ready"
    assert (await limit_state(store, T)).in_use == 1
    assert await store.step_claim("w2", limit=10, lease_seconds=30) == []
    await store.step_complete(claims[holder.id], {}, worker_id="w1")
    [b] = await store.step_claim("w2", limit=10, lease_seconds=30)
    assert (b.job_id, b.key, b.limit_keys) == (chain.id, "b", (T,))


async def test_a_chained_claim_respects_a_cap_set_by_another_process(store: Store) -> None:
    # Two worker processes: `other` claimed its step before the cap existed; this process then
    # declared a cap of 1 and took the only slot. Chaining `other`'s next step of the capped
    # tool must not run it past the cap.
    other = open_store(store.url, Settings(database_url=store.url, sqlite_synchronous="OFF"))
    try:
        chain = await submit(store, make_step("a", tool="u"), make_step("b", tool="t", deps=["a"]))
        [a] = await other.step_claim("w-other", limit=10, lease_seconds=30)
        await store.limits_configure([LimitSpec(T, concurrency=1)])
        holder = await submit(store, *tool_steps("c"))
        [c] = await store.step_claim("w1", limit=10, lease_seconds=30)
        assert (c.job_id, (await limit_state(store, T)).in_use) == (holder.id, 1)

        done = await other.step_complete(a, {}, worker_id="w-other", claim_next=True)

        assert done.recorded
        running = [s for s in await store.step_list(chain.id) if s.status == "running"]
        assert done.next_claim is None and running == []
        assert (await limit_state(store, T)).in_use == 1
    finally:
        await other.close()


async def test_a_chained_claim_respects_a_429_pause(store: Store) -> None:
    # One process: its claim saw no limits at all; then a 429 paused tool t. Completing another
    # job's step with claim_next must not chain straight into a step of the paused tool.
    slow = await submit(store, *tool_steps("x"), priority=5)
    chain = await submit(store, make_step("a", tool="u"), make_step("b", tool="t", deps=["a"]))
    claims = {c.job_id: c for c in await store.step_claim("w1", limit=10, lease_seconds=30)}
    error = StepError("transient", "slow down", code="http_429", retry_after=5.0)
    verdict = decide(
        error,
        attempt=1,
        policy=RetryPolicy(max_attempts=5),
        critical=True,
        replans=0,
        max_replans=1,
    )
    assert await store.step_fail(claims[slow.id], error, verdict, worker_id="w1")
    assert (await limit_state(store, T)).paused_until is not None

    done = await store.step_complete(claims[chain.id], {}, worker_id="w1", claim_next=True)

    assert done.recorded
    assert done.next_claim is None
    assert (await steps_by_key(store, chain.id))["b"].status == "ready"
    assert await store.step_claim("w1", limit=10, lease_seconds=30) == []
