"""Conformance: the LLM gateway's tables. Reservations are all or nothing and never pass a
limit, settlement moves reserved to spent, a budget warns once, a dead worker's reservation is
released, the cache is per tenant, and a job planned by a model waits in `planning`."""

from __future__ import annotations

import asyncio

import pytest
from conformance import (
    WINDOW,
    claim_one,
    eventually,
    expire,
    make_job,
    make_plan,
    make_step,
    submit,
)

from stalwart.domain.budgets import (
    BudgetLine,
    CallResult,
    CallScope,
    NewCall,
    job_budget_key,
)
from stalwart.errors import BudgetExceeded
from stalwart.store import Store

USD = 1_000_000_000


def scope(job: str = "j1", *, tenant: str = "acme", usd: float | None = 1.0, tokens=None):
    lines = (
        BudgetLine(
            job_budget_key(job), tenant, "job", None if usd is None else int(usd * USD), tokens
        ),
        BudgetLine(f"tenant:{tenant}:day:2026-11-22", tenant, "tenant_day", None),
    )
    return CallScope(tenant, job, "extract", 1, "extraction", lines)


def new_call(s: CallScope, nanos: int, tokens: int = 100, expires_in: float = 60.0) -> NewCall:
    return NewCall(s, 1, "scripted", "m", "small", nanos, tokens, expires_in)


async def budgets(store: Store) -> dict[str, tuple[int, int, int, int, bool]]:
    return {
        b.key: (b.spent_nanos, b.reserved_nanos, b.spent_tokens, b.reserved_tokens, b.warned)
        for b in await store.budget_list()
    }


async def test_reserve_then_settle_moves_reserved_to_spent(store: Store) -> None:
    s = scope()
    call_id = await store.llm_reserve(new_call(s, USD // 10, 500), actor="t")
    held = await budgets(store)
    assert held["job:j1"] == (0, USD // 10, 0, 500, False)
    assert held["tenant:acme:day:2026-11-22"][1] == USD // 10

    result = CallResult("ok", input_tokens=120, output_tokens=30, cost_nanos=USD // 100)
    assert await store.llm_settle(call_id, result, actor="t") == []
    after = await budgets(store)
    assert after["job:j1"] == (USD // 100, 0, 150, 0, False)
    assert after["tenant:acme:day:2026-11-22"][:2] == (USD // 100, 0)
    # Settling twice changes nothing.
    await store.llm_settle(call_id, result, actor="t")
    assert await budgets(store) == after

    [row] = await store.llm_call_list("j1")
    assert (row.outcome, row.cost_nanos, row.input_tokens, row.output_tokens) == (
        "ok",
        USD // 100,
        120,
        30,
    )
    assert (row.tenant_id, row.step_key, row.attempt, row.tier) == ("acme", "extract", 1, "small")
    assert row.budget_keys == sorted(line.key for line in s.budgets)
    assert await store.llm_call_list("j1", tenant_id="other") == []


async def test_a_reservation_over_the_limit_is_refused_and_writes_nothing(store: Store) -> None:
    s = scope(usd=0.10)
    first = await store.llm_reserve(new_call(s, 6 * USD // 100), actor="t")
    before = await budgets(store)
    with pytest.raises(BudgetExceeded) as refused:
        await store.llm_reserve(new_call(s, 5 * USD // 100), actor="t")
    assert refused.value.budget == "job:j1"
    assert "the provider was not called" in refused.value.message
    assert await budgets(store) == before
    assert [c.id for c in await store.llm_call_list("j1")] == [first]
    # Exactly at the limit is allowed.
    await store.llm_reserve(new_call(s, 4 * USD // 100), actor="t")


async def test_token_limits_refuse_too(store: Store) -> None:
    s = scope(usd=None, tokens=1000)
    await store.llm_reserve(new_call(s, 0, 800), actor="t")
    with pytest.raises(BudgetExceeded) as refused:
        await store.llm_reserve(new_call(s, 0, 300), actor="t")
    assert refused.value.details["unit"] == "tokens"


async def test_concurrent_reservations_never_pass_the_limit(store: Store) -> None:
    s = scope(usd=0.10)

    async def one() -> bool:
        try:
            await store.llm_reserve(new_call(s, USD // 100), actor="t")
            return True
        except BudgetExceeded:
            return False

    taken = await asyncio.gather(*(one() for _ in range(25)))
    assert sum(taken) == 10
    assert (await budgets(store))["job:j1"][1] == USD // 10


async def test_a_budget_warns_once_with_an_event(store: Store) -> None:
    job = await submit(store, make_step("a"))
    s = scope(job.id, usd=0.10)
    warned = []
    for cost in (5, 4, 1):  # 50%, 90%, 100%: only the crossing of 80% warns
        call_id = await store.llm_reserve(new_call(s, cost * USD // 100), actor="t")
        warned.append(
            await store.llm_settle(
                call_id, CallResult("ok", cost_nanos=cost * USD // 100), actor="t"
            )
        )
    assert [len(w) for w in warned] == [0, 1, 0]
    warning = warned[1][0]
    assert (warning.key, warning.unit, warning.scope) == (f"job:{job.id}", "usd", "job")
    assert warning.ratio == pytest.approx(0.9)
    events = [e for e in await store.event_list(job.id) if e.kind == "budget_warning"]
    assert len(events) == 1 and events[0].data["key"] == f"job:{job.id}"


async def test_a_dead_workers_reservation_is_released(store: Store) -> None:
    s = scope()
    call_id = await store.llm_reserve(new_call(s, USD // 10, expires_in=WINDOW), actor="t")
    assert await store.llm_reservations_release(actor="reaper") == 0  # not expired yet

    async def expired() -> bool:
        return (await store.work_due()).reservations_expired

    await eventually(expired, "the reservation to expire")
    assert await store.llm_reservations_release(actor="reaper") == 1
    assert (await budgets(store))["job:j1"][1] == 0
    [row] = await store.llm_call_list("j1")
    assert row.outcome == "abandoned"
    # The call comes back late after all: its spend is added, the reservation not freed twice.
    await store.llm_settle(call_id, CallResult("ok", cost_nanos=USD // 100), actor="t")
    assert (await budgets(store))["job:j1"][:2] == (USD // 100, 0)


async def _reserve_for(store: Store, job: str, key: str, attempt: int, nanos: int) -> int:
    """Reserve a call of step `key`, attempt `attempt`, of `job` (expiring in ten minutes)."""
    s = scope(job)
    step_scope = CallScope(s.tenant_id, job, key, attempt, "extraction", s.budgets)
    return await store.llm_reserve(new_call(step_scope, nanos, 300, expires_in=600), actor="t")


@pytest.mark.parametrize("taken_back_by", ["reaper", "restart"])
async def test_a_reaped_or_reclaimed_step_charges_its_open_calls_their_worst_case(
    store: Store, taken_back_by: str
) -> None:
    job = await submit(store, make_step("a"), make_step("b"))
    lost = await claim_one(store, "w-dead", lease_seconds=0.05)
    kept = await claim_one(store, "w-alive", lease_seconds=30)
    in_flight = await _reserve_for(store, job.id, lost.key, lost.attempt, USD // 10)
    other = await _reserve_for(store, job.id, kept.key, kept.attempt, USD // 20)

    if taken_back_by == "reaper":
        await expire()
        assert await store.leases_reap(actor="reaper") == 1
    else:
        assert await store.leases_reclaim(["w-dead"], actor="w-dead") == 1

    # At once, not after the row's expiry: the worst case moves from reserved to spent (the
    # request may have reached the provider), and only the lost attempt's call is settled.
    after = await budgets(store)
    assert after[f"job:{job.id}"][:4] == (USD // 10, USD // 20, 300, 300)
    rows = {r.id: r for r in await store.llm_call_list(job.id)}
    assert (rows[in_flight].outcome, rows[in_flight].cost_nanos) == ("cancelled", USD // 10)
    assert "worst case" in (rows[in_flight].error or "")
    assert rows[other].outcome == "reserved"
    # Its worker comes back late with the real figures: nothing changes (the worst case bounds
    # them), and nothing is released twice.
    await store.llm_settle(in_flight, CallResult("ok", cost_nanos=USD // 100), actor="t")
    assert await budgets(store) == after
    assert await store.llm_reservations_release(actor="reaper") == 0


async def test_refused_and_cached_calls_are_recorded_without_reserving(store: Store) -> None:
    s = scope()
    await store.llm_record(new_call(s, 0), CallResult("cached", cache_hit=True), actor="t")
    await store.llm_record(new_call(s, 0), CallResult("refused", error="over"), actor="t")
    rows = await store.llm_call_list("j1")
    assert [(r.outcome, r.cache_hit, r.reserved_nanos) for r in rows] == [
        ("cached", True, 0),
        ("refused", False, 0),
    ]
    assert await budgets(store) == {}


async def test_the_cache_is_per_tenant_and_expires(store: Store) -> None:
    answer = {"text": '{"a": 1}', "input_tokens": 3, "output_tokens": 2}
    await store.llm_cache_put(
        "acme", "k1", provider="p", model="m", response=answer, ttl_seconds=None, actor="t"
    )
    assert await store.llm_cache_get("acme", "k1") == answer
    assert await store.llm_cache_get("globex", "k1") is None
    assert await store.llm_cache_get("acme", "k2") is None
    await store.llm_cache_put(
        "acme", "k3", provider="p", model="m", response=answer, ttl_seconds=WINDOW, actor="t"
    )
    assert await store.llm_cache_get("acme", "k3") == answer

    async def gone() -> bool:
        return await store.llm_cache_get("acme", "k3") is None

    await eventually(gone, "the cached answer to expire")


async def test_a_job_without_a_plan_waits_in_planning_for_a_worker(store: Store) -> None:
    job, created = await store.job_create(make_job(), None, actor="t")
    assert created and (job.status, job.plan_version) == ("planning", 0)
    assert (await store.work_due()).replanning
    [claim] = await store.job_claim_replanning("w1", lease_seconds=30)
    assert claim.job.id == job.id and claim.tried_hashes == frozenset()
    done = await store.job_replan(claim, make_plan(make_step("a")), actor="w1")
    assert (done.status, done.plan_version, done.replans) == ("executing", 1, 0)
    kinds = [(e.from_status, e.to_status) for e in await store.event_list(job.id) if e.to_status]
    assert ("planning", "executing") in kinds


async def test_a_refusal_warns_for_the_refusing_budget_once(store: Store) -> None:
    job = await submit(store, make_step("a"))
    s = scope(job.id, usd=0.10)
    await store.llm_reserve(new_call(s, 7 * USD // 100), actor="t")  # 70% held, nothing spent
    heard = []
    for _ in range(2):
        with pytest.raises(BudgetExceeded) as refused:
            await store.llm_reserve(new_call(s, 5 * USD // 100), actor="t")
        _, warned = await store.llm_record(
            new_call(s, 0), CallResult("refused"), actor="t", refused_by=refused.value.budget
        )
        heard.append(warned)
    assert [len(w) for w in heard] == [1, 0]
    assert heard[0][0].key == f"job:{job.id}" and heard[0][0].ratio == pytest.approx(0.7)
    events = [e for e in await store.event_list(job.id) if e.kind == "budget_warning"]
    assert len(events) == 1 and "refused" in events[0].reason


async def test_a_cancelled_call_is_charged_its_reservation_and_an_abandoned_one_nothing(
    store: Store,
) -> None:
    s = scope()
    sent = await store.llm_reserve(new_call(s, USD // 10, 500), actor="t")
    unsent = await store.llm_reserve(new_call(s, USD // 20, 300), actor="t")
    # The request may have reached the provider: the worst case held is spent, whatever the
    # figures say (the provider reported none).
    await store.llm_settle(sent, CallResult("cancelled", error_class="cancelled"), actor="t")
    await store.llm_settle(unsent, CallResult("abandoned", error_class="cancelled"), actor="t")
    assert (await budgets(store))["job:j1"] == (USD // 10, 0, 500, 0, False)
    rows = {c.id: c for c in await store.llm_call_list("j1")}
    assert (rows[sent].outcome, rows[sent].cost_nanos) == ("cancelled", USD // 10)
    assert (rows[unsent].outcome, rows[unsent].cost_nanos) == ("abandoned", 0)
