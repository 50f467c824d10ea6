"""Conformance: the event log, and stored state that fails closed when it is malformed."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import pytest
from conformance import ACTOR, claim_one, make_step, submit

from stalwart.errors import CorruptStateError
from stalwart.store import Store


async def test_events_page_by_id_in_order(store: Store) -> None:
    started = time.time()
    job = await submit(store, make_step("a"), make_step("b", deps=["a"]))
    other = await submit(store)
    a = await claim_one(store)
    assert a.job_id == job.id
    await store.step_complete(a, {"v": 1}, worker_id="w1")

    events = await store.event_list(job.id)

    assert len(events) >= 8
    assert [e.id for e in events] == sorted({e.id for e in events})
    assert all(e.job_id == job.id and e.tenant_id == job.tenant_id for e in events)
    assert all(e.actor for e in events)
    assert all(started - 1 <= e.at <= time.time() + 1 for e in events)
    assert [e.at for e in events] == sorted(e.at for e in events)
    assert {e.actor for e in events} == {ACTOR, "w1"}

    first = await store.event_list(job.id, limit=3)
    rest = await store.event_list(job.id, after_id=first[-1].id)
    assert [e.id for e in first + rest] == [e.id for e in events]
    assert await store.event_list(job.id, after_id=events[-1].id) == []
    assert all(e.job_id == other.id for e in await store.event_list(other.id))


async def test_a_step_transition_event_names_the_step(store: Store) -> None:
    job = await submit(store)
    claim = await claim_one(store)

    [started] = [e for e in await store.event_list(job.id) if e.kind == "step_started"]

    assert (started.step_id, started.step_key) == (claim.step_id, "a")
    assert (started.from_status, started.to_status, started.actor) == ("ready", "running", "w1")


async def test_malformed_stored_state_fails_closed(
    store: Store, corrupt_job_input: Callable[[str], Awaitable[None]]
) -> None:
    job = await submit(store)
    healthy = await submit(store)

    await corrupt_job_input(job.id)

    with pytest.raises(CorruptStateError):
        await store.job_get(job.id)
    with pytest.raises(CorruptStateError):
        await store.job_get(job.id, tenant_id=job.tenant_id)
    assert (await store.job_get(healthy.id)).input == {"n": 1}
