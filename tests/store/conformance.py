"""Builders for the store conformance suite.

Plans and jobs are made straight from the domain models, so the suite depends on the `Store`
protocol alone: never on the planner, the engine or a worker.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import psycopg

from stalwart.domain.failures import Decision, Outcome
from stalwart.domain.limits import LimitRecord
from stalwart.domain.plans import Plan, PlanStep, ReviewSpec
from stalwart.domain.records import Claim, EventRecord, JobRecord, StepError, StepRecord
from stalwart.domain.retry import RetryPolicy
from stalwart.store import NewJob, Store
from stalwart.types import canonical_hash, new_id

T = TypeVar("T")

TENANT = "acme"
OTHER_TENANT = "globex"
ACTOR = "test"


def make_step(
    key: str,
    *,
    deps: Sequence[str] = (),
    kind: str = "tool",
    tool: str | None = "noop",
    args: dict[str, Any] | None = None,
    critical: bool = True,
    idempotent: bool = True,
    has_reconcile: bool = False,
    requires_approval: bool | dict[str, Any] = False,
    review: ReviewSpec | None = None,
    max_attempts: int = 3,
    description: str = "",
) -> PlanStep:
    """A plan step; `deps` must name every step the args reference (the planner's job)."""
    return PlanStep.model_validate(
        {
            "id": key,
            "kind": kind,
            "tool": None if kind == "human" else tool,
            "description": description,
            "args": args or {},
            "depends_on": list(deps),
            "timeout_seconds": 10.0,
            "retry": RetryPolicy(max_attempts=max_attempts, base_seconds=0.01, jitter=False),
            "requires_approval": requires_approval,
            "review": review,
            "critical": critical,
            "success": None,
            "idempotent": idempotent,
            "has_reconcile": has_reconcile,
        }
    )


def agent_step(
    key: str, tools: Sequence[str] = ("lookup_vendor", "send_payment"), **fields: Any
) -> PlanStep:
    """An `agent` step offered `tools` (any other `AgentSpec` field in `fields`)."""
    spec = make_step(key).model_dump()
    spec.update(
        kind="agent",
        tool=None,
        agent={"prompt": f"Do {key}.", "tools": list(tools), **fields},
    )
    return PlanStep.model_validate(spec)


def make_plan(*steps: PlanStep, version: int = 1, template_name: str = "conformance") -> Plan:
    """A plan of these steps, with a template hash derived from their ids."""
    return Plan(
        version=version,
        template_name=template_name,
        template_hash=canonical_hash([template_name, [s.id for s in steps]]),
        steps=list(steps),
    )


def make_job(
    *,
    tenant: str = TENANT,
    workflow: str = "wf",
    job_input: dict[str, Any] | None = None,
    job_id: str | None = None,
    **limits: Any,
) -> NewJob:
    """A validated job; `limits` are any other `NewJob` fields (max_replans, on_reject...)."""
    return NewJob(
        id=job_id or new_id("job"),
        tenant_id=tenant,
        workflow=workflow,
        input=job_input if job_input is not None else {"n": 1},
        **limits,
    )


async def submit(store: Store, *steps: PlanStep, **job_fields: Any) -> JobRecord:
    """Create a job whose first plan holds `steps` (one step "a" when none are given)."""
    plan = make_plan(*(steps or (make_step("a"),)))
    job, created = await store.job_create(make_job(**job_fields), plan, actor=ACTOR)
    assert created
    return job


async def claim_one(store: Store, worker: str = "w1", *, lease_seconds: float = 30.0) -> Claim:
    """Claim exactly one step."""
    claims = await store.step_claim(worker, limit=1, lease_seconds=lease_seconds)
    assert len(claims) == 1, claims
    return claims[0]


async def claim_all(
    store: Store, worker: str = "w1", *, lease_seconds: float = 30.0
) -> list[Claim]:
    """Claim every due step."""
    return await store.step_claim(worker, limit=100, lease_seconds=lease_seconds)


async def steps_by_key(
    store: Store, job_id: str, *, all_versions: bool = False
) -> dict[str, StepRecord]:
    """A job's steps keyed by step key (of the current plan version unless `all_versions`,
    where a later version's step replaces an earlier one with the same key)."""
    return {s.key: s for s in await store.step_list(job_id, all_versions=all_versions)}


async def step_events(store: Store, job_id: str, key: str) -> list[EventRecord]:
    """The events of one step, in order."""
    return [e for e in await store.event_list(job_id) if e.step_key == key]


def transitions(events: Sequence[EventRecord]) -> list[tuple[str | None, str | None]]:
    """(from, to) of the status-changing events."""
    return [(e.from_status, e.to_status) for e in events if e.to_status is not None]


def job_transitions(events: Sequence[EventRecord]) -> list[tuple[str | None, str | None]]:
    """(from, to) of the job's own status changes."""
    return transitions([e for e in events if e.step_id is None])


def failure(error_class: str = "transient", message: str = "boom") -> StepError:
    """A step error of this class."""
    return StepError(error_class, message, code=f"{error_class}_code")


def decision(outcome: Outcome, delay_seconds: float = 0.0) -> Decision:
    """A decision with a reason naming the outcome."""
    return Decision(outcome, f"decided: {outcome.value}", delay_seconds)


async def expire(seconds: float = 0.08) -> None:
    """Let short leases, deadlines and SLAs pass (the backend's clock, not a fake one)."""
    await asyncio.sleep(seconds)


# A span no stall of a loaded machine passes between two statements of a test: what a test
# checks has not happened yet (a cool-down, a pause, a token's refill) lasts this long.
WINDOW = 2.0


async def eventually(check: Callable[[], Awaitable[T]], what: str, within: float = 60.0) -> T:
    """Poll `check` until it returns something truthy, and return that: for what happens once
    the backend's clock passes a time (the end of a `WINDOW`), instead of a fixed sleep."""
    deadline = time.monotonic() + within
    while not (result := await check()):
        assert time.monotonic() < deadline, f"timed out after {within}s waiting for {what}"
        await asyncio.sleep(0.02)
    return result


async def limit_state(store: Store, key: str) -> LimitRecord:
    """The live state of one limited key, as `limit_list` shows it."""
    found = {r.key: r for r in await store.limit_list()}
    assert key in found, sorted(found)
    return found[key]


async def run_sql(store: Store, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    """Run one statement on the store's own database, outside the `Store` protocol (for the
    user's tables that a tool's effects write); `?` placeholders on either backend. Returns the
    rows of a query, [] otherwise."""
    if store.url.startswith("sqlite"):
        con = sqlite3.connect(store.url.removeprefix("sqlite:///"), timeout=5)
        try:
            with con:
                cursor = con.execute(sql, tuple(params))
                return cursor.fetchall() if cursor.description else []
        finally:
            con.close()
    async with await psycopg.AsyncConnection.connect(store.url, autocommit=True) as pg:
        cursor = await pg.execute(sql.replace("?", "%s"), tuple(params))
        return await cursor.fetchall() if cursor.description else []
