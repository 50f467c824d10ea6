"""Conformance: API keys (tenant-scoped, unique active names, revocable, only a digest stored),
server secrets shared by every process, and the operator dashboard's figures, exactly."""

from __future__ import annotations

import asyncio
import time

import pytest
from conformance import (
    OTHER_TENANT,
    TENANT,
    claim_all,
    claim_one,
    decision,
    expire,
    failure,
    make_step,
    run_sql,
    submit,
)

from stalwart.domain.access import KeyRecord, Role, digest, matches, new_key, parse_token
from stalwart.domain.budgets import BudgetLine, CallResult, CallScope, NewCall
from stalwart.domain.failures import Outcome
from stalwart.errors import NotFoundError, UsageError
from stalwart.store import Store
from stalwart.store.sql.access import percentile
from stalwart.types import new_id

# -- keys -----------------------------------------------------------------------------------------


async def _create(
    store: Store, name: str, tenant: str = TENANT, role: Role = Role.SUBMITTER
) -> tuple[KeyRecord, str]:
    """Store a new key: its record and its token."""
    stored, token = new_key(new_id("key"), tenant, name, role, now=time.time(), created_by="t")
    return await store.key_create(stored), token


async def test_a_key_is_created_read_and_listed_within_its_tenant(store: Store) -> None:
    alice, _ = await _create(store, "alice", role=Role.REVIEWER)
    bob, _ = await _create(store, "bob")
    theirs, _ = await _create(store, "alice", tenant=OTHER_TENANT, role=Role.ADMIN)

    assert (alice.tenant_id, alice.name, alice.role, alice.created_by) == (
        TENANT,
        "alice",
        "reviewer",
        "t",
    )
    assert alice.active and alice.last_used is None and alice.revoked is None
    assert alice.id.startswith("key_")
    found = await store.key_get(alice.id)
    assert found is not None and found[0] == alice
    assert await store.key_get("key_nope") is None
    assert [k.id for k in await store.key_list(tenant_id=TENANT)] == [alice.id, bob.id]
    assert [k.id for k in await store.key_list(tenant_id=OTHER_TENANT)] == [theirs.id]
    assert [k.id for k in await store.key_list()] == [alice.id, bob.id, theirs.id]
    assert await store.key_list(tenant_id="nobody") == []


async def test_an_active_name_is_unique_within_a_tenant(store: Store) -> None:
    await _create(store, "ci")

    with pytest.raises(UsageError) as refused:
        await _create(store, "ci", role=Role.ADMIN)
    assert refused.value.fields["field"] == "name"
    assert "ci" in refused.value.message
    assert len(await store.key_list(tenant_id=TENANT)) == 1
    # Another tenant may use the name.
    await _create(store, "ci", tenant=OTHER_TENANT)


async def test_revoke_by_id_or_name_hides_the_key_and_frees_its_name(store: Store) -> None:
    first, _ = await _create(store, "ci")
    second, _ = await _create(store, "deploy")

    revoked = await store.key_revoke(first.id, actor="ops")
    assert revoked.id == first.id and not revoked.active
    assert revoked.revoked is not None and revoked.revoked_by == "ops"
    by_name = await store.key_revoke("deploy", tenant_id=TENANT, actor="ops")
    assert by_name.id == second.id and not by_name.active

    assert await store.key_list(tenant_id=TENANT) == []
    listed = await store.key_list(tenant_id=TENANT, include_revoked=True)
    assert [(k.id, k.active) for k in listed] == [(first.id, False), (second.id, False)]
    stored = await store.key_get(first.id)
    assert stored is not None and stored[0].revoked is not None, "the row stays for the audit"

    again, _ = await _create(store, "ci")
    assert again.id != first.id and again.active
    assert [k.id for k in await store.key_list(tenant_id=TENANT)] == [again.id]


async def test_revoking_no_active_key_is_not_found(store: Store) -> None:
    key, _ = await _create(store, "ci")
    await store.key_revoke(key.id, actor="ops")

    for target, tenant in (
        (key.id, None),  # already revoked
        ("ci", TENANT),  # its name, now free
        ("key_nope", None),
        ("nobody", None),
    ):
        with pytest.raises(NotFoundError):
            await store.key_revoke(target, tenant_id=tenant, actor="ops")
    theirs, _ = await _create(store, "theirs", tenant=OTHER_TENANT)
    with pytest.raises(NotFoundError):
        await store.key_revoke("theirs", tenant_id=TENANT, actor="ops")
    with pytest.raises(NotFoundError):
        await store.key_revoke(theirs.id, tenant_id=TENANT, actor="ops")
    assert [k.id for k in await store.key_list(tenant_id=OTHER_TENANT)] == [theirs.id]


async def test_a_name_two_tenants_use_needs_the_tenant_to_revoke(store: Store) -> None:
    ours, _ = await _create(store, "ci")
    theirs, _ = await _create(store, "ci", tenant=OTHER_TENANT)

    with pytest.raises(UsageError) as ambiguous:
        await store.key_revoke("ci", actor="ops")
    assert ambiguous.value.fields["field"] == "tenant"
    assert not isinstance(ambiguous.value, NotFoundError)
    assert (await store.key_revoke("ci", tenant_id=OTHER_TENANT, actor="ops")).id == theirs.id
    assert [k.id for k in await store.key_list()] == [ours.id]


async def test_only_a_digest_of_the_secret_is_stored(store: Store) -> None:
    key, token = await _create(store, "ci")
    parsed = parse_token(token)
    assert parsed is not None
    key_id, secret = parsed
    assert key_id == key.id

    found = await store.key_get(key.id)
    assert found is not None
    stored = found[1]
    assert stored == digest(key_id, secret)
    assert secret not in stored and token not in stored
    assert matches(stored, key_id, secret)
    assert not matches(stored, key_id, secret + "x")
    assert not matches(stored, key_id, secret[:-1])
    assert not matches(stored, "key_other", secret)
    rows = await run_sql(store, "SELECT * FROM api_keys WHERE id = ?", (key.id,))
    assert len(rows) == 1
    assert not any(secret in str(value) for value in rows[0])


async def test_touch_records_the_last_use(store: Store) -> None:
    key, _ = await _create(store, "ci")
    await store.key_touch(key.id)
    found = await store.key_get(key.id)
    assert found is not None and found[0].last_used is not None
    assert found[0].last_used >= key.created


# -- secrets --------------------------------------------------------------------------------------


async def test_a_secret_is_made_once_and_shared(store: Store) -> None:
    first = await store.secret_get("ui_session")
    assert len(first) >= 32
    assert await store.secret_get("ui_session") == first
    assert await store.secret_get("other") != first

    together = await asyncio.gather(*(store.secret_get("fresh") for _ in range(8)))
    assert len(set(together)) == 1
    assert await store.secret_get("fresh") == together[0]


# -- the dashboard --------------------------------------------------------------------------------


def test_percentile_is_nearest_rank() -> None:
    assert percentile([], 95) is None
    assert percentile([3.0], 95) == 3.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.0
    assert percentile([float(n) for n in range(1, 101)], 95) == 95.0
    assert percentile([float(n) for n in range(20, 0, -1)], 95) == 19.0


async def _completed(store: Store, tenant: str = TENANT) -> float:
    """A job run to completion; its seconds from submission to finish."""
    job = await submit(store, tenant=tenant)
    await store.step_complete(await claim_one(store), {"ok": True}, worker_id="w1")
    done = await store.job_get(job.id)
    assert done.status == "completed" and done.finished is not None
    return done.finished - done.created


async def _failed(store: Store, outcome: Outcome, tenant: str = TENANT) -> str:
    job = await submit(store, tenant=tenant)
    await store.step_fail(
        await claim_one(store), failure("transient"), decision(outcome, 3600), worker_id="w1"
    )
    return job.id


async def _spend(store: Store, tenant: str, job_id: str, nanos: int) -> None:
    """One settled model call of `nanos`, and one cache hit that costs nothing."""
    scope = CallScope(
        tenant, job_id, "a", 1, "extraction", (BudgetLine(f"job:{job_id}", tenant, "job"),)
    )
    call_id = await store.llm_reserve(NewCall(scope, 1, "p", "m", None, nanos, 100, 60), actor="t")
    await store.llm_settle(call_id, CallResult("ok", 10, 5, cost_nanos=nanos), actor="t")
    await store.llm_record(
        NewCall(scope, 2, "p", "m", None, 0, 0, 60), CallResult("cached", cache_hit=True), actor="t"
    )


async def test_the_dashboard_counts_exactly(store: Store) -> None:
    durations = [await _completed(store) for _ in range(3)]
    failed = await _failed(store, Outcome.FAIL_JOB)
    dead = await _failed(store, Outcome.DEAD_LETTER)
    cancelled = await submit(store)
    await store.job_cancel(cancelled.id, actor="t")
    retrying = await _failed(store, Outcome.RETRY)
    # globex: a completed job, a dead letter and spend of its own.
    await _completed(store, OTHER_TENANT)
    await _failed(store, Outcome.DEAD_LETTER, OTHER_TENANT)
    # Two approvals waiting, one past its SLA.
    overdue = await submit(store, make_step("a", requires_approval=True), review_sla_seconds=0.01)
    await submit(store, make_step("a", requires_approval=True))
    assert await claim_all(store) == []
    running = await submit(store)
    await claim_one(store)
    ready = [await submit(store), await submit(store)]
    await submit(store, tenant=OTHER_TENANT)
    await _spend(store, TENANT, running.id, 1_500)
    await _spend(store, TENANT, ready[0].id, 2_000)
    await _spend(store, OTHER_TENANT, "job_elsewhere", 700)
    await expire(0.05)

    acme = await store.dashboard(tenant_id=TENANT)

    assert acme.jobs_by_status == {
        "completed": 3,
        "failed": 1,
        "dead_lettered": 1,
        "cancelled": 1,
        "executing": 4,
        "waiting_approval": 2,
    }
    assert (acme.finished, acme.succeeded, acme.success_rate) == (4, 3, 0.75)
    assert acme.p95_job_seconds == pytest.approx(max(durations), abs=1e-6)
    assert (acme.steps_ready, acme.steps_retrying, acme.steps_running) == (2, 1, 1)
    assert acme.queue_depth == 3
    assert acme.jobs_planning == 0
    assert (acme.approvals_waiting, acme.approvals_overdue) == (2, 1)
    reviews = await store.review_list(tenant_id=TENANT)
    assert {r.job_id for r in reviews} >= {overdue.id}
    assert acme.oldest_approval == pytest.approx(min(r.created for r in reviews), abs=1e-6)
    assert acme.oldest_approval_seconds is not None and acme.oldest_approval_seconds >= 0.05
    assert acme.dead_letters_open == 1
    assert acme.cost_today_nanos == 3_500
    assert acme.window_seconds == 86400.0
    assert abs(acme.now - time.time()) < 5
    assert {failed, dead, retrying} <= {j.id for j in await store.job_list(tenant_id=TENANT)}

    globex = await store.dashboard(tenant_id=OTHER_TENANT)
    assert globex.jobs_by_status == {"completed": 1, "dead_lettered": 1, "executing": 1}
    assert (globex.finished, globex.succeeded, globex.success_rate) == (1, 1, 1.0)
    assert (globex.steps_ready, globex.steps_retrying, globex.steps_running) == (1, 0, 0)
    assert (globex.approvals_waiting, globex.approvals_overdue) == (0, 0)
    assert globex.oldest_approval is None and globex.oldest_approval_seconds is None
    assert (globex.dead_letters_open, globex.cost_today_nanos) == (1, 700)

    everyone = await store.dashboard()
    assert everyone.jobs_by_status["completed"] == 4
    assert everyone.jobs_by_status["executing"] == 5
    assert (everyone.finished, everyone.succeeded) == (5, 4)
    assert everyone.queue_depth == 4
    assert (everyone.dead_letters_open, everyone.cost_today_nanos) == (2, 4_200)
    assert (everyone.approvals_waiting, everyone.approvals_overdue) == (2, 1)

    nobody = await store.dashboard(tenant_id="nobody")
    assert nobody.jobs_by_status == {}
    assert (nobody.finished, nobody.success_rate, nobody.p95_job_seconds) == (0, None, None)
    assert (nobody.queue_depth, nobody.approvals_waiting, nobody.dead_letters_open) == (0, 0, 0)
    assert nobody.cost_today_nanos == 0


async def test_the_dashboard_window_leaves_out_older_jobs(store: Store) -> None:
    await _completed(store)
    await expire(0.3)

    assert (await store.dashboard(tenant_id=TENANT, window_seconds=0.2)).finished == 0
    recent = await store.dashboard(tenant_id=TENANT, window_seconds=60)
    assert (recent.finished, recent.succeeded) == (1, 1)
    assert recent.jobs_by_status == {"completed": 1}
