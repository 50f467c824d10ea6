"""One corrupt job never stops a read or a pass over many jobs: the listing marks it, a claim
or the reaper quarantines it alone (escalated with `CorruptStateError`, `job_quarantined`
naming what failed), and the episode recorder's pending jobs pass over a quarantined one. The
rows are corrupted with raw SQL under the protocol.
See docs/decisions/0036-corrupt-rows-are-quarantined.md."""

from __future__ import annotations

import json

import pytest
from conformance import claim_all, expire, make_step, run_sql, submit

from stalwart.domain.records import JobRecord
from stalwart.errors import CorruptStateError
from stalwart.store.base import Store


async def _quarantine_events(store: Store, job_id: str) -> list[tuple[str, str]]:
    rows = await run_sql(
        store,
        "SELECT kind, reason FROM events WHERE job_id = ? "
        "AND kind IN ('job_escalated', 'job_quarantined') ORDER BY id",
        [job_id],
    )
    return [(str(k), str(r)) for k, r in rows]


async def _error(store: Store, job_id: str) -> dict[str, object]:
    [(status, error)] = await run_sql(
        store, "SELECT status, error FROM jobs WHERE id = ?", [job_id]
    )
    assert status == "escalated"
    out: dict[str, object] = json.loads(error)
    return out


@pytest.mark.parametrize(
    ("column", "value", "problem"),
    [
        ("input", "{not json", "input of job {id} is not valid JSON"),
        ("input", "[1, 2]", "input of job {id} is list, not an object"),
        ("result", '"done"', "result of job {id} is str, not an object"),
        ("status", "exploded", "status of job {id} is 'exploded', not a job status"),
    ],
)
async def test_a_corrupt_job_is_listed_marked_among_the_others(
    store: Store, column: str, value: str, problem: str
) -> None:
    jobs = [await submit(store) for _ in range(3)]
    bad = jobs[1]
    await run_sql(store, f"UPDATE jobs SET {column} = ? WHERE id = ?", [value, bad.id])

    listed = {j.id: j for j in await store.job_list(tenant_id=bad.tenant_id)}

    assert set(listed) == {j.id for j in jobs}
    assert listed[bad.id].corrupt == problem.format(id=bad.id)
    assert [listed[j.id].corrupt for j in jobs if j is not bad] == [None, None]
    assert all(listed[j.id].input == {"n": 1} for j in jobs if j is not bad)
    with pytest.raises(CorruptStateError) as raised:
        await store.job_get(bad.id)  # one job read on its own still fails closed
    assert raised.value.fields["what"] == f"{column} of job {bad.id}"


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        ('"x"', "is str, not an object"),
        ('{"id": "a", "tool": "t", "timeout_seconds": "soon"}', "no longer validates"),
    ],
)
async def test_a_step_spec_that_no_longer_validates_is_quarantined_at_claim(
    store: Store, spec: str, problem: str
) -> None:
    good, bad, other = [await submit(store) for _ in range(3)]
    await run_sql(store, "UPDATE steps SET spec = ? WHERE job_id = ?", [spec, bad.id])

    claims = await claim_all(store)

    assert sorted(c.job_id for c in claims) == sorted([good.id, other.id])
    error = await _error(store, bad.id)
    assert (error["exception_type"], error["code"]) == ("CorruptStateError", "corrupt_state")
    events = await _quarantine_events(store, bad.id)
    assert [kind for kind, _ in events] == ["job_escalated", "job_quarantined"]
    assert all(f"spec of step 'a' of job {bad.id} {problem}" in why for _, why in events)
    [letter] = await store.dead_letter_list()
    assert (letter.job_id, letter.step_key) == (bad.id, "a")


async def test_the_reaper_recovers_the_others_and_quarantines_a_corrupt_running_step(
    store: Store,
) -> None:
    good, bad = await submit(store), await submit(store)
    await claim_all(store, lease_seconds=0.05)
    await run_sql(store, "UPDATE steps SET spec = '{oops' WHERE job_id = ?", [bad.id])
    await expire()

    assert await store.leases_reap(actor="reaper") == 2

    [(good_step,)] = await run_sql(store, "SELECT status FROM steps WHERE job_id = ?", [good.id])
    [(bad_step,)] = await run_sql(store, "SELECT status FROM steps WHERE job_id = ?", [bad.id])
    assert (good_step, bad_step) == ("ready", "interrupted")  # never run again blindly
    assert (await _error(store, bad.id))["exception_type"] == "CorruptStateError"
    assert await store.leases_reap(actor="reaper") == 0


async def test_episodes_pass_over_a_quarantined_job_until_it_changes(store: Store) -> None:
    ended: list[JobRecord] = [await submit(store) for _ in range(3)]
    await run_sql(store, "UPDATE jobs SET status = 'completed', finished = updated")
    bad = ended[1]
    await run_sql(store, "UPDATE jobs SET result = '{oops' WHERE id = ?", [bad.id])
    with pytest.raises(CorruptStateError) as raised:
        await store.job_get(bad.id)

    await store.job_quarantine(bad.id, raised.value, actor="memory")

    pending = [job_id for _, job_id in await store.episodes_pending(0.0)]
    assert pending == [j.id for j in ended if j is not bad]
    [(kind, why)] = await _quarantine_events(store, bad.id)
    assert (kind, why) == ("job_quarantined", f"result of job {bad.id} is not valid JSON")
    [(status,)] = await run_sql(store, "SELECT status FROM jobs WHERE id = ?", [bad.id])
    assert status == "completed"  # a final status is kept; only the event is added
    # Changed since (repaired and touched): it is pending again.
    await run_sql(
        store, "UPDATE jobs SET result = NULL, updated = updated + 60 WHERE id = ?", [bad.id]
    )
    assert bad.id in [job_id for _, job_id in await store.episodes_pending(0.0)]


@pytest.mark.parametrize(
    ("spec", "problem"), [("{oops", "is not valid JSON"), ("[]", "is list, not an object")]
)
async def test_a_completion_stands_when_the_next_step_it_would_chain_is_corrupt(
    store: Store, spec: str, problem: str
) -> None:
    job = await submit(store, make_step("a"), make_step("b", deps=["a"]))
    [claim] = await claim_all(store)
    await run_sql(store, "UPDATE steps SET spec = ? WHERE job_id = ? AND key = 'b'", [spec, job.id])

    done = await store.step_complete(claim, {"n": 1}, worker_id="w1", claim_next=True)

    assert done.recorded and done.next_claim is None
    steps = dict(await run_sql(store, "SELECT key, status FROM steps WHERE job_id = ?", [job.id]))
    assert steps == {"a": "succeeded", "b": "ready"}
    assert (await _error(store, job.id))["details"] == {
        "corrupt": f"spec of step 'b' of job {job.id} {problem}"
    }
