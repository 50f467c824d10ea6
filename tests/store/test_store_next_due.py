"""Conformance: a claim says when a step it left behind may be taken (`Claims.next_due`, on the
database's clock), so a worker sleeps until then instead of until its next poll: a retry's due
time, a rate limit's next token; nothing when only a slot coming back can help."""

from __future__ import annotations

import asyncio

from conformance import claim_one, decision, failure, make_step, run_sql, submit

from stalwart.domain.failures import Outcome
from stalwart.domain.limits import LimitSpec, tool_key
from stalwart.store import Store

T = tool_key("t")


async def test_an_empty_queue_has_nothing_due(store: Store) -> None:
    claims = await store.step_claim("w1", limit=4, lease_seconds=30)
    assert claims == [] and claims.next_due is None


async def test_a_retry_not_due_yet_is_reported_at_its_due_time(store: Store) -> None:
    job = await submit(store, make_step("a", max_attempts=3))
    claim = await claim_one(store)
    assert await store.step_fail(
        claim, failure(), decision(Outcome.RETRY, delay_seconds=5.0), worker_id="w1"
    )
    [(due,)] = await run_sql(store, "SELECT due FROM steps WHERE job_id = ?", (job.id,))

    claims = await store.step_claim("w1", limit=4, lease_seconds=30)

    assert claims == []
    assert claims.next_due == due
    assert 4.0 < claims.next_due - claims.now <= 5.0


async def test_a_rate_limit_reports_its_next_token(store: Store) -> None:
    await store.limits_configure([LimitSpec(T, rate=10.0, burst=1)])
    await submit(store, *(make_step(k, tool="t") for k in "abc"))

    first = await store.step_claim("w1", limit=4, lease_seconds=30)
    # The one token went to the first step; the next comes a tenth of a second later.
    assert len(first) == 1 and first.next_due is not None
    assert abs(first.next_due - (first.now + 0.1)) < 1e-6
    held = await store.step_claim("w2", limit=4, lease_seconds=30)
    assert held == [] and held.next_due is not None
    assert abs(held.next_due - first.next_due) < 1e-6

    # The token is there once the database's clock reaches that time, and not before.
    deadline = asyncio.get_running_loop().time() + 30
    while not (second := await store.step_claim("w2", limit=4, lease_seconds=30)):
        assert second.now < held.next_due
        assert asyncio.get_running_loop().time() < deadline, "the token never came"
        await asyncio.sleep(0.01)
    assert len(second) == 1 and second.now >= held.next_due - 1e-6


async def test_only_a_slot_coming_back_reports_nothing_due(store: Store) -> None:
    await store.limits_configure([LimitSpec(T, concurrency=1)])
    await submit(store, *(make_step(k, tool="t") for k in "ab"))

    claims = await store.step_claim("w1", limit=4, lease_seconds=30)

    # The other step waits for the slot: the end of the running one wakes the worker.
    assert len(claims) == 1 and claims.next_due is None


async def test_a_full_batch_reports_nothing_due(store: Store) -> None:
    await submit(store, *(make_step(k) for k in "abc"))
    claims = await store.step_claim("w1", limit=2, lease_seconds=30)
    assert len(claims) == 2 and claims.next_due is None
