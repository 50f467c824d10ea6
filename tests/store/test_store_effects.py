"""Conformance: a tool's effects (its writes to the user's own tables, `ctx.on_commit`) apply in
the step's completion transaction: exactly once with the success, or not at all."""

from __future__ import annotations

import pytest
from conformance import claim_one, expire, run_sql, steps_by_key, submit

from stalwart.errors import EffectFailedError
from stalwart.store import Store

INSERT = "INSERT INTO side (job, step) VALUES (?, ?)"


async def side_rows(store: Store) -> list[tuple[str, str]]:
    """Every row of `side`, duplicates kept, in a stable order."""
    return sorted((r[0], r[1]) for r in await run_sql(store, "SELECT job, step FROM side"))


@pytest.fixture
async def side(store: Store) -> Store:
    """The store, with the user's table `side` that effects write to."""
    await run_sql(store, "CREATE TABLE side (job TEXT NOT NULL, step TEXT NOT NULL)")
    return store


async def test_effects_apply_exactly_once_with_the_success(side: Store) -> None:
    store = side
    job = await submit(store)
    claim = await claim_one(store)

    done = await store.step_complete(
        claim,
        {"ok": True},
        worker_id="w1",
        effects=[(INSERT, (job.id, "a")), (INSERT, (job.id, "a-second"))],
    )

    assert done.recorded
    assert await side_rows(store) == [(job.id, "a"), (job.id, "a-second")]
    assert (await steps_by_key(store, job.id))["a"].status == "succeeded"
    assert (await store.job_get(job.id)).status == "completed"
    again = await store.step_complete(
        claim, {"ok": True}, worker_id="w1", effects=[(INSERT, (job.id, "a"))]
    )
    assert not again.recorded
    assert await side_rows(store) == [(job.id, "a"), (job.id, "a-second")]


async def test_a_lost_lease_applies_no_effects(side: Store) -> None:
    store = side
    job = await submit(store)
    stale = await claim_one(store, "w1", lease_seconds=0.05)
    await expire()
    assert await store.leases_reap(actor="reaper") == 1
    fresh = await claim_one(store, "w2")
    assert fresh.lease_token != stale.lease_token

    lost = await store.step_complete(
        stale, {"by": "w1"}, worker_id="w1", effects=[(INSERT, (job.id, "stale"))]
    )

    assert not lost.recorded
    assert await side_rows(store) == []
    step = (await steps_by_key(store, job.id))["a"]
    assert (step.status, step.lease_owner, step.output) == ("running", "w2", None)
    won = await store.step_complete(
        fresh, {"by": "w2"}, worker_id="w2", effects=[(INSERT, (job.id, "fresh"))]
    )
    assert won.recorded
    assert await side_rows(store) == [(job.id, "fresh")]
    assert (await steps_by_key(store, job.id))["a"].output == {"by": "w2"}


async def test_a_failing_effect_records_nothing_of_the_completion(side: Store) -> None:
    store = side
    job = await submit(store)
    claim = await claim_one(store)
    events_before = await store.event_list(job.id)

    with pytest.raises(EffectFailedError) as raised:
        await store.step_complete(
            claim,
            {"ok": True},
            worker_id="w1",
            effects=[(INSERT, (job.id, "first")), ("INSERT INTO no_such_table VALUES (?)", (1,))],
        )

    assert raised.value.fields["effect"] == 2
    step = (await steps_by_key(store, job.id))["a"]
    assert (step.status, step.output, step.lease_owner, step.lease_token) == (
        "running",
        None,
        "w1",
        claim.lease_token,
    )
    assert await side_rows(store) == []
    assert (await store.job_get(job.id)).status == "executing"
    assert await store.event_list(job.id) == events_before
    # The lease is still held: the worker can record the attempt another way.
    assert (await store.step_complete(claim, {"ok": True}, worker_id="w1")).recorded
    assert await side_rows(store) == []
