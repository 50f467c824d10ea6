"""Conformance: migrations, job creation (dedup, queue depth), reading and listing jobs."""

from __future__ import annotations

import asyncio

import pytest
from conformance import (
    ACTOR,
    OTHER_TENANT,
    TENANT,
    job_transitions,
    make_job,
    make_plan,
    make_step,
    steps_by_key,
    submit,
)

from stalwart.errors import NotFoundError, QueueFull
from stalwart.store import Store


async def test_migrate_applies_once_and_then_nothing(fresh_store: Store) -> None:
    before = await fresh_store.migration_status()
    assert not before.current
    pending = [version for version, _ in before.pending]

    assert await fresh_store.migrate() == pending
    assert await fresh_store.migrate() == []

    after = await fresh_store.migration_status()
    assert after.current
    assert after.pending == []
    assert [version for version, _, _ in after.applied] == pending


async def test_job_create_goes_from_intake_to_executing(store: Store) -> None:
    plan = make_plan(make_step("a"), make_step("b", deps=["a"]), make_step("c"))
    job, created = await store.job_create(make_job(job_input={"x": 1}), plan, actor="api")

    assert created
    assert job.status == "executing"
    assert job.tenant_id == TENANT
    assert job.input == {"x": 1}
    assert job.plan_version == 1
    assert job.template_hash == plan.template_hash
    events = await store.event_list(job.id)
    assert job_transitions(events) == [
        ("intake", "validating"),
        ("validating", "planning"),
        ("planning", "executing"),
    ]
    kinds = [e.kind for e in events]
    assert kinds.index("job_planning_started") < kinds.index("plan_created")
    assert kinds.index("plan_created") < kinds.index("job_execution_started")
    assert all(e.actor == "api" for e in events)

    steps = await steps_by_key(store, job.id)
    assert {k: s.status for k, s in steps.items()} == {"a": "ready", "b": "pending", "c": "ready"}
    assert all(s.attempt == 0 and s.plan_version == 1 for s in steps.values())

    plans = await store.plan_list(job.id)
    assert [(p.version, p.plan_hash, p.template_hash) for p in plans] == [
        (1, plan.plan_hash(), plan.template_hash)
    ]


async def test_duplicate_key_inside_window_returns_the_same_job(store: Store) -> None:
    plan = make_plan(make_step("a"))
    first, created = await store.job_create(make_job(idempotency_key="k1"), plan, actor=ACTOR)
    again, created_again = await store.job_create(
        make_job(idempotency_key="k1", job_input={"other": True}), plan, actor=ACTOR
    )

    assert created and not created_again
    assert again.id == first.id
    assert again.input == first.input
    assert len(await store.job_list(tenant_id=TENANT)) == 1


async def test_same_key_in_another_tenant_is_a_new_job(store: Store) -> None:
    plan = make_plan(make_step("a"))
    mine, _ = await store.job_create(make_job(idempotency_key="k1"), plan, actor=ACTOR)
    theirs, created = await store.job_create(
        make_job(tenant=OTHER_TENANT, idempotency_key="k1"), plan, actor=ACTOR
    )

    assert created
    assert theirs.id != mine.id
    assert theirs.tenant_id == OTHER_TENANT


async def test_same_key_after_the_window_is_a_new_job(store: Store) -> None:
    plan = make_plan(make_step("a"))
    first, _ = await store.job_create(
        make_job(idempotency_key="k1", dedup_window_seconds=0.01), plan, actor=ACTOR
    )
    await asyncio.sleep(0.05)
    second, created = await store.job_create(
        make_job(idempotency_key="k1", dedup_window_seconds=60), plan, actor=ACTOR
    )

    assert created
    assert second.id != first.id
    # The new job now owns the key for its own window.
    third, created_third = await store.job_create(make_job(idempotency_key="k1"), plan, actor=ACTOR)
    assert not created_third
    assert third.id == second.id


async def test_queue_full_refuses_and_stores_nothing(store: Store) -> None:
    limits = {"max_queue_depth": 2, "queue_full_retry_after": 7.0}
    first = await submit(store, **limits)
    await submit(store, **limits)
    refused = make_job(idempotency_key="late", **limits)

    with pytest.raises(QueueFull) as caught:
        await store.job_create(refused, make_plan(make_step("a")), actor=ACTOR)

    assert caught.value.retry_after == 7.0
    assert len(await store.job_list(tenant_id=TENANT)) == 2
    with pytest.raises(NotFoundError):
        await store.job_get(refused.id)
    # Other tenants have their own queue.
    await submit(store, tenant=OTHER_TENANT, **limits)
    # A finished job frees a place, and the refused job's key was never taken.
    await store.job_cancel(first.id, actor=ACTOR)
    retried, created = await store.job_create(
        make_job(idempotency_key="late", **limits), make_plan(make_step("a")), actor=ACTOR
    )
    assert created
    assert retried.id != refused.id


async def test_job_get_is_scoped_to_its_tenant(store: Store) -> None:
    job = await submit(store)

    assert (await store.job_get(job.id, tenant_id=TENANT)).id == job.id
    assert (await store.job_get(job.id)).id == job.id
    with pytest.raises(NotFoundError):
        await store.job_get(job.id, tenant_id=OTHER_TENANT)
    with pytest.raises(NotFoundError):
        await store.job_get("job_missing")
    with pytest.raises(NotFoundError):
        await store.step_list(job.id, tenant_id=OTHER_TENANT)
    with pytest.raises(NotFoundError):
        await store.plan_list(job.id, tenant_id=OTHER_TENANT)
    with pytest.raises(NotFoundError):
        await store.event_list(job.id, tenant_id=OTHER_TENANT)
    with pytest.raises(NotFoundError):
        await store.job_cancel(job.id, tenant_id=OTHER_TENANT, actor=ACTOR)
    assert (await store.job_get(job.id)).status == "executing"


async def test_job_list_filters_and_pages_newest_first(store: Store) -> None:
    ids = []
    for i in range(5):
        job = await submit(store, job_id=f"job_{i:03d}", workflow="even" if i % 2 == 0 else "odd")
        ids.append(job.id)
    await submit(store, tenant=OTHER_TENANT, job_id="job_other")
    await store.job_cancel(ids[1], actor=ACTOR)

    newest_first = list(reversed(ids))
    assert [j.id for j in await store.job_list(tenant_id=TENANT)] == newest_first
    assert len(await store.job_list()) == 6
    assert [j.id for j in await store.job_list(tenant_id=OTHER_TENANT)] == ["job_other"]
    assert [j.id for j in await store.job_list(tenant_id=TENANT, workflow="odd")] == [
        ids[3],
        ids[1],
    ]
    assert [j.id for j in await store.job_list(tenant_id=TENANT, statuses=["cancelled"])] == [
        ids[1]
    ]
    executing = await store.job_list(tenant_id=TENANT, statuses=["executing", "completed"])
    assert [j.id for j in executing] == [ids[4], ids[3], ids[2], ids[0]]

    pages, cursor = [], None
    while True:
        page = await store.job_list(tenant_id=TENANT, limit=2, before=cursor)
        if not page:
            break
        assert len(page) <= 2
        pages.extend(j.id for j in page)
        cursor = page[-1].id
    assert pages == newest_first

    # A cursor is looked up within the tenant: another tenant's job id pages like an unknown
    # one (nothing), so a list cannot tell whether that id exists.
    assert await store.job_list(tenant_id=OTHER_TENANT, before=ids[4]) == []
    assert await store.job_list(tenant_id=OTHER_TENANT, before="job_missing") == []
    assert [j.id for j in await store.job_list(before=ids[0])] == []
    assert [j.id for j in await store.job_list(tenant_id=TENANT, before=ids[1])] == [ids[0]]
