"""The run loop, in-process: `Worker`s on a real database (a SQLite file in tmp_path, or a fresh
PostgreSQL database: every test runs on both), with fast settings.

Draining, cancellation, degraded completion, escalation, replanning (its bounds, and steps in
flight while it happens), reconciling an interrupted non-idempotent tool (or asking a human),
review SLAs, redrive, and schema pinning. A worker that "dies" is simulated by claiming a step
through the store under a short lease and never finishing it.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from pydantic import BaseModel

from stalwart import (
    App,
    AuthorizationError,
    RetryPolicy,
    Settings,
    ToolContext,
    TransientError,
)
from stalwart.domain.records import JobRecord
from stalwart.store import Store
from stalwart.worker.worker import Worker

FAST = {
    # Heartbeats every second: a loaded machine can stall a worker well past half a second, and
    # a lease lost to that would be reaped and the step run again.
    "lease_seconds": 3.0,
    "poll_interval_seconds": 0.02,
    "reaper_interval_seconds": 0.05,
    "drain_seconds": 5.0,
}
NO_WAIT = RetryPolicy(max_attempts=2, base_seconds=0, cap_seconds=0)


class Args(BaseModel):
    value: str = "x"


class Out(BaseModel):
    value: str


class Score(BaseModel):
    score: float


@pytest.fixture
async def make_app(db_url: str) -> AsyncIterator[Callable[..., App]]:
    """Apps on one database (the backend under test); their stores are closed at teardown."""
    stores: list[Store] = []

    def make(**kwargs: Any) -> App:
        hook = kwargs.pop("on_review_escalated", None)
        app = App(Settings(database_url=db_url, **{**FAST, **kwargs}), on_review_escalated=hook)
        stores.append(app.store())
        return app

    yield make
    for store in stores:
        await store.close()


def steps_template(name: str, *steps: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "steps": list(steps)}


@asynccontextmanager
async def running(app: App, **kwargs: Any) -> AsyncIterator[Worker]:
    """Run a worker in the background for the duration of the block; stop and join it after."""
    await app.store().migrate()
    worker = app.worker(worker_id=kwargs.pop("worker_id", "w-test"), **kwargs)
    task = asyncio.create_task(worker.run())
    try:
        yield worker
    finally:
        worker.stop()
        await asyncio.wait_for(task, 60)


async def eventually(check: Callable[[], Awaitable[Any]], within: float = 60.0) -> Any:
    """Poll an async check until it returns something truthy."""
    deadline = time.monotonic() + within
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {within}s")
        await asyncio.sleep(0.02)


async def job_in(app: App, job_id: str, *statuses: str, within: float = 60.0) -> JobRecord:
    async def check() -> JobRecord | None:
        job = await app.client().get(job_id)
        return job if job.status in statuses else None

    try:
        return await eventually(check, within)  # type: ignore[no-any-return]
    except AssertionError:
        job = await app.client().get(job_id)
        raise AssertionError(f"job is {job.status} ({job.error}), expected {statuses}") from None


async def submit(app: App, workflow: str = "flow", data: dict[str, Any] | None = None) -> str:
    await app.store().migrate()
    return (await app.client().submit(workflow, data or {})).job.id


async def step(app: App, job_id: str, key: str) -> Any:
    return next(s for s in await app.client().steps(job_id) if s.key == key)


async def events(app: App, job_id: str, kind: str | None = None) -> list[Any]:
    return [e for e in await app.client().events(job_id) if kind is None or e.kind == kind]


# -- draining -------------------------------------------------------------------------------------


async def test_stop_lets_a_running_step_finish(make_app: Callable[..., App]) -> None:
    app = make_app()
    started, finished = asyncio.Event(), asyncio.Event()

    @app.tool(timeout=10, idempotent=True)
    async def slow(args: Args, ctx: ToolContext) -> Out:
        started.set()
        await asyncio.sleep(0.3)
        finished.set()
        return Out(value="done")

    app.workflow(
        "flow", input=Args, templates=[steps_template("t", {"id": "slow", "tool": "slow"})]
    )
    job_id = await submit(app)
    async with running(app) as worker:
        await asyncio.wait_for(started.wait(), 60)
        worker.stop()  # SIGTERM does this
    assert finished.is_set()
    assert (await app.client().get(job_id)).status == "completed"
    assert (await step(app, job_id, "slow")).attempt == 1


async def test_drain_timeout_releases_the_lease_and_refunds_the_attempt(
    make_app: Callable[..., App],
) -> None:
    app = make_app(drain_seconds=0.05)
    started, release = asyncio.Event(), asyncio.Event()
    calls: list[int] = []

    @app.tool(timeout=30, idempotent=True)
    async def stuck(args: Args, ctx: ToolContext) -> Out:
        calls.append(ctx.attempt)
        started.set()
        await release.wait()
        return Out(value=f"attempt {ctx.attempt}")

    app.workflow(
        "flow", input=Args, templates=[steps_template("t", {"id": "stuck", "tool": "stuck"})]
    )
    job_id = await submit(app)
    async with running(app, worker_id="w-drained") as worker:
        await asyncio.wait_for(started.wait(), 60)
        worker.stop()
    s = await step(app, job_id, "stuck")
    assert (s.status, s.attempt, s.lease_owner) == ("ready", 0, None)
    released = [e for e in await events(app, job_id, "step_ready") if e.actor == "w-drained"]
    assert len(released) == 1
    assert released[0].reason.startswith("worker stopped before the step finished")

    release.set()
    async with running(app, worker_id="w-next"):
        await job_in(app, job_id, "completed")
    s = await step(app, job_id, "stuck")
    assert (s.attempt, s.output) == (1, {"value": "attempt 1"})  # the drained run was refunded
    assert calls == [1, 1]


# -- cancellation ---------------------------------------------------------------------------------


async def test_cancel_reaches_a_running_tool_within_one_heartbeat(
    make_app: Callable[..., App], monkeypatch: pytest.MonkeyPatch
) -> None:
    app = make_app(lease_seconds=1.5)  # a heartbeat every 0.5 s
    started = asyncio.Event()
    beats: list[tuple[float, bool]] = []  # each heartbeat: when it began, if it told of a cancel
    seen: list[bool] = []  # the tool saw the cancellation

    @app.tool(timeout=120, idempotent=True)
    async def long(args: Args, ctx: ToolContext) -> Out:
        started.set()
        for _chunk in range(20_000):  # long work in small chunks, checking between them
            await asyncio.sleep(0.005)
            if ctx.cancelled:
                seen.append(True)
                ctx.raise_if_cancelled()
        return Out(value="not reached")

    app.workflow(
        "flow",
        input=Args,
        templates=[
            steps_template(
                "t",
                {"id": "long", "tool": "long"},
                {"id": "after", "tool": "long", "depends_on": ["long"]},
            )
        ],
    )
    job_id = await submit(app)
    async with running(app) as worker:
        beat = worker.store.step_heartbeat

        async def counted(*args: Any, **kwargs: Any) -> Any:
            began = time.monotonic()
            result = await beat(*args, **kwargs)
            beats.append((began, bool(result.cancelled)))
            return result

        monkeypatch.setattr(worker.store, "step_heartbeat", counted)
        await asyncio.wait_for(started.wait(), 60)
        # Past one lease: the heartbeats keep it.
        await eventually(lambda: _async(len(beats) > 1 and beats[-1][0] - beats[0][0] > 1.5))
        assert (await step(app, job_id, "long")).attempt == 1
        await app.client().cancel(job_id, reason="changed my mind")
        cancelled_at = time.monotonic()
        await eventually(lambda: _async(bool(seen)))
        # The first heartbeat that began after the cancellation told the tool (one in flight
        # meanwhile may have told it already), not the end of the tool or of its lease.
        told = next(n for n, (_, cancelled) in enumerate(beats) if cancelled)
        first_after = next(n for n, (began, _) in enumerate(beats) if began > cancelled_at)
        assert told <= first_after, beats
        s = await eventually(lambda: _step_in(app, job_id, "long", "cancelled"))
    assert s.attempt == 1
    job = await app.client().get(job_id)
    assert job.status == "cancelled" and job.cancel_requested
    assert (await step(app, job_id, "after")).status == "cancelled"


async def _async(value: Any) -> Any:
    return value


async def _step_in(app: App, job_id: str, key: str, status: str) -> Any:
    s = await step(app, job_id, key)
    return s if s.status == status else None


# -- failure handling by error class --------------------------------------------------------------


async def test_non_critical_step_out_of_retries_completes_degraded(
    make_app: Callable[..., App],
) -> None:
    app = make_app()
    calls: Counter[str] = Counter()

    @app.tool(timeout=5, idempotent=True)
    async def ok(args: Args, ctx: ToolContext) -> Out:
        calls[ctx.step_id] += 1
        return Out(value=args.value)

    @app.tool(timeout=5, idempotent=True, retry=NO_WAIT)
    async def flaky(args: Args, ctx: ToolContext) -> Out:
        calls[ctx.step_id] += 1
        raise TransientError("upstream 503", code="http_503")

    app.workflow(
        "flow",
        input=Args,
        templates=[
            steps_template(
                "t",
                {"id": "first", "tool": "ok"},
                {"id": "extra", "tool": "flaky", "critical": False, "depends_on": ["first"]},
                {"id": "last", "tool": "ok", "depends_on": ["extra"]},
            )
        ],
    )
    job_id = await submit(app)
    async with running(app):
        job = await job_in(app, job_id, "completed", "dead_lettered", "escalated")
    assert job.status == "completed" and job.degraded
    assert job.result == {"last": {"value": "x"}}
    extra = await step(app, job_id, "extra")
    assert (extra.status, extra.attempt) == ("skipped", 2)
    assert calls == {"first": 1, "extra": 2, "last": 1}
    assert await app.client().dead_letters() == []


async def test_authorization_error_escalates_with_a_dead_letter(
    make_app: Callable[..., App],
) -> None:
    app = make_app()
    calls: list[int] = []

    @app.tool(timeout=5, idempotent=True, retry=RetryPolicy(max_attempts=5, base_seconds=0))
    async def guarded(args: Args, ctx: ToolContext) -> Out:
        calls.append(ctx.attempt)
        raise AuthorizationError("token lacks scope payments:write", code="http_403")

    app.workflow(
        "flow", input=Args, templates=[steps_template("t", {"id": "pay", "tool": "guarded"})]
    )
    job_id = await submit(app)
    async with running(app):
        job = await job_in(app, job_id, "escalated", "dead_lettered", "completed")
    assert job.status == "escalated"
    assert job.error is not None and job.error["error_class"] == "authorization"
    assert calls == [1]  # never retried blindly
    letters = await app.client().dead_letters()
    assert [(d.job_id, d.step_key, d.status) for d in letters] == [(job_id, "pay", "open")]
    assert "authorization" in letters[0].reason
    assert (await step(app, job_id, "pay")).status == "failed"


async def test_a_step_finishing_while_its_job_is_parked_resumes_on_redrive(
    make_app: Callable[..., App],
) -> None:
    """`x` escalates the job while `y` is still running; `y` finishes while the job is parked;
    after a redrive its dependent `z` runs and the job completes."""
    app = make_app()
    denied = {"x": True}
    calls: Counter[str] = Counter()

    @app.tool(timeout=5, idempotent=True)
    async def guarded(args: Args, ctx: ToolContext) -> Out:
        calls[ctx.step_id] += 1
        if denied["x"]:
            raise AuthorizationError("no scope")
        return Out(value="x")

    @app.tool(timeout=5, idempotent=True)
    async def slow(args: Args, ctx: ToolContext) -> Out:
        calls[ctx.step_id] += 1
        await asyncio.sleep(0.3)
        return Out(value=ctx.step_id)

    app.workflow(
        "flow",
        input=Args,
        templates=[
            steps_template(
                "t",
                {"id": "x", "tool": "guarded"},
                {"id": "y", "tool": "slow"},
                {"id": "z", "tool": "slow", "depends_on": ["y"]},
            )
        ],
    )
    job_id = await submit(app)
    async with running(app):
        await job_in(app, job_id, "escalated")
        await eventually(lambda: _step_in(app, job_id, "y", "succeeded"))
        await asyncio.sleep(0.1)
        assert (await app.client().get(job_id)).status == "escalated"
        assert calls["z"] == 0  # parked: nothing new starts
        denied["x"] = False
        await app.client().redrive(job_id, reason="scope granted")
        job = await job_in(app, job_id, "completed", "escalated", "dead_lettered")
    assert job.status == "completed"
    assert calls == {"x": 2, "y": 1, "z": 1}


# -- replanning -----------------------------------------------------------------------------------


def scored(name: str, minimum: float) -> dict[str, Any]:
    return steps_template(
        name, {"id": "grade", "tool": "grade", "success": {"output.score": {"gte": minimum}}}
    )


def grading_app(make_app: Callable[..., App], calls: list[int]) -> App:
    app = make_app()

    @app.tool(timeout=5, idempotent=True)
    async def grade(args: Args, ctx: ToolContext) -> Score:
        calls.append(ctx.attempt)
        return Score(score=0.5)

    return app


async def test_semantic_failure_replans_with_the_next_template(
    make_app: Callable[..., App],
) -> None:
    calls: list[int] = []
    app = grading_app(make_app, calls)
    app.workflow("flow", input=Args, templates=[scored("strict", 0.9), scored("lenient", 0.1)])
    job_id = await submit(app)
    async with running(app):
        job = await job_in(app, job_id, "completed", "escalated", "dead_lettered")
    assert job.status == "completed"
    assert (job.plan_version, job.template_name, job.replans) == (2, "lenient", 1)
    assert job.result == {"grade": {"score": 0.5}}
    assert len(calls) == 2
    failed = [s for s in await app.client().steps(job_id, all_versions=True) if s.plan_version == 1]
    assert failed[0].status == "skipped"  # superseded by plan v2
    assert failed[0].error is not None and failed[0].error["error_class"] == "semantic"
    plans = await app.client().plans(job_id)
    assert [p.template_name for p in plans] == ["strict", "lenient"]
    feedback = plans[1].plan["notes"]["feedback"]
    assert feedback["step"] == "grade" and feedback["error"]["error_class"] == "semantic"


async def test_replanning_to_a_plan_already_tried_escalates(make_app: Callable[..., App]) -> None:
    calls: list[int] = []
    app = grading_app(make_app, calls)
    app.workflow("flow", input=Args, templates=[scored("strict", 0.9)], max_replans=3)
    job_id = await submit(app)
    async with running(app):
        job = await job_in(app, job_id, "escalated", "completed", "dead_lettered")
        await asyncio.sleep(0.2)  # a looping engine would be busy now
    assert job.status == "escalated"
    assert (job.plan_version, job.replans) == (1, 0)
    assert len(calls) == 1
    assert len(await app.client().plans(job_id)) == 1
    [letter] = await app.client().dead_letters()
    assert "already tried" in letter.reason
    assert (await app.client().get(job_id)).status == "escalated"


async def test_max_replans_is_respected(make_app: Callable[..., App]) -> None:
    calls: list[int] = []
    app = grading_app(make_app, calls)
    app.workflow(
        "flow",
        input=Args,
        templates=[scored("strict", 0.9), scored("stricter", 0.95), scored("lenient", 0.1)],
        max_replans=1,
    )
    job_id = await submit(app)
    async with running(app):
        job = await job_in(app, job_id, "escalated", "completed", "dead_lettered")
        await asyncio.sleep(0.2)
    assert job.status == "escalated"
    assert (job.plan_version, job.template_name, job.replans) == (2, "stricter", 1)
    assert len(calls) == 2  # "lenient" would have passed, but no replans were left
    [letter] = await app.client().dead_letters()
    assert "no replans left" in letter.reason
    assert (await app.client().get(job_id)).status == "escalated"


async def test_a_step_in_flight_when_its_job_replans_runs_once(
    make_app: Callable[..., App],
) -> None:
    """`check` fails its criteria while `pay` (unchanged in the next plan) is still running:
    the replan waits for `pay` and reuses its result instead of paying again under the next
    plan version's idempotency key."""
    app = make_app()
    paid: list[str] = []

    @app.tool(timeout=5, idempotent=False)
    async def pay(args: Args, ctx: ToolContext) -> Out:
        paid.append(ctx.idempotency_key)
        await asyncio.sleep(0.4)
        return Out(value="paid")

    @app.tool(timeout=5, idempotent=True)
    async def grade(args: Args, ctx: ToolContext) -> Score:
        return Score(score=0.5)

    def template(name: str, minimum: float) -> dict[str, Any]:
        check = {"id": "check", "tool": "grade", "success": {"output.score": {"gte": minimum}}}
        return steps_template(name, check, {"id": "pay", "tool": "pay"})

    app.workflow("flow", input=Args, templates=[template("strict", 0.9), template("lenient", 0.1)])
    job_id = await submit(app)
    async with running(app):
        job = await job_in(app, job_id, "completed", "escalated", "dead_lettered")
    assert (job.status, job.plan_version) == ("completed", 2)
    assert paid == [f"default:{job_id}:pay"]
    versions = {
        (s.plan_version, s.key): s for s in await app.client().steps(job_id, all_versions=True)
    }
    assert versions[(1, "pay")].status == "succeeded"
    assert (versions[(2, "pay")].status, versions[(2, "pay")].attempt) == ("succeeded", 0)
    assert versions[(2, "pay")].output == {"value": "paid"}


async def test_a_replan_claimed_by_a_dead_worker_is_taken_over(
    make_app: Callable[..., App],
) -> None:
    calls: list[int] = []
    app = grading_app(make_app, calls)
    app.workflow("flow", input=Args, templates=[scored("strict", 0.9), scored("lenient", 0.1)])
    job_id = await submit(app)
    store = app.store()
    [claim] = await store.step_claim("w-first", limit=1, lease_seconds=5)
    outcome = await app.executor().attempt(claim, app.executor().context_for(claim))
    assert outcome.error is not None
    decision = app.executor().decide(claim, outcome.error)
    assert await store.step_fail(claim, outcome.error, decision, worker_id="w-first")
    # A worker claims the replan and dies before it applies a plan. (Its lease outlasts any
    # stall between these two claims.)
    [dead] = await store.job_claim_replanning("w-dead", lease_seconds=2.0)
    assert dead.job.id == job_id
    assert await store.job_claim_replanning("w-other", lease_seconds=2.0) == []
    async with running(app, worker_id="w-alive"):
        job = await job_in(app, job_id, "completed", "escalated", "dead_lettered")
    assert (job.status, job.plan_version, job.template_name) == ("completed", 2, "lenient")
    assert len(calls) == 2
    applied = [e for e in await events(app, job_id, "plan_created") if e.data["version"] == 2]
    assert [e.actor for e in applied] == ["w-alive"]


# -- an interrupted non-idempotent tool -----------------------------------------------------------


class ChargeArgs(BaseModel):
    amount: float = 10.0


class Receipt(BaseModel):
    receipt_id: str
    found_by: str


@pytest.mark.parametrize("effect_happened", [True, False], ids=["took-effect", "no-effect"])
async def test_interrupted_charge_is_reconciled_not_rerun(
    make_app: Callable[..., App], effect_happened: bool
) -> None:
    app = make_app()
    ledger: dict[str, str] = {}  # idempotency key -> receipt: the "payment processor"
    charges: list[int] = []
    reconciles: list[int] = []

    async def find_charge(args: ChargeArgs, ctx: ToolContext) -> Receipt | None:
        reconciles.append(ctx.attempt)
        found = ledger.get(ctx.idempotency_key)
        return Receipt(receipt_id=found, found_by="reconcile") if found else None

    @app.tool(timeout=5, idempotent=False, reconcile=find_charge, retry=NO_WAIT)
    async def charge(args: ChargeArgs, ctx: ToolContext) -> Receipt:
        charges.append(ctx.attempt)
        ledger[ctx.idempotency_key] = f"r-{len(ledger) + 1}"
        return Receipt(receipt_id=ledger[ctx.idempotency_key], found_by="charge")

    app.workflow(
        "flow", input=Args, templates=[steps_template("t", {"id": "charge", "tool": "charge"})]
    )
    job_id = await submit(app)

    # A worker claims the step and dies: with the charge made, or before making it.
    store = app.store()
    [claim] = await store.step_claim("w-dead", limit=1, lease_seconds=0.2)
    if effect_happened:
        await charge(ChargeArgs(), app.executor().context_for(claim))

    async with running(app, worker_id="w-alive"):
        job = await job_in(
            app, job_id, "completed", "escalated", "dead_lettered", "waiting_approval"
        )
    assert job.status == "completed"
    s = await step(app, job_id, "charge")
    assert s.attempt == 2
    assert reconciles == [2]
    if effect_happened:
        assert charges == [1]  # not charged again
        assert s.output == {"receipt_id": "r-1", "found_by": "reconcile"}
    else:
        assert charges == [2]  # reconcile found nothing, so the tool ran once
        assert s.output == {"receipt_id": "r-1", "found_by": "charge"}
    assert len(ledger) == 1
    reasons = [(e.kind, e.reason) for e in await events(app, job_id) if e.step_key == "charge"]
    assert ("step_interrupted", "lease expired while a non-idempotent tool ran") in reasons
    assert ("step_ready", "reconcile before running again") in reasons


async def test_interrupted_tool_without_reconcile_asks_a_human(
    make_app: Callable[..., App],
) -> None:
    app = make_app()
    sent: list[tuple[str, int]] = []

    @app.tool(timeout=5, idempotent=False, retry=RetryPolicy(max_attempts=3, base_seconds=0))
    async def send(args: Args, ctx: ToolContext) -> Out:
        sent.append((ctx.idempotency_key, ctx.attempt))
        return Out(value="sent")

    app.workflow(
        "flow", input=Args, templates=[steps_template("t", {"id": "send", "tool": "send"})]
    )
    job_id = await submit(app)
    [claim] = await app.store().step_claim("w-dead", limit=1, lease_seconds=0.2)
    async with running(app, worker_id="w-alive"):
        await job_in(app, job_id, "waiting_approval")
        [review] = await app.client().reviews()
        assert (review.kind, review.step_key, review.status) == ("interrupted", "send", "pending")
        assert "not idempotent" in review.reason
        await asyncio.sleep(0.2)
        assert sent == []  # never re-run blindly
        assert (await step(app, job_id, "send")).status == "interrupted"
        await app.client().approve(review.id, reviewer="ops@example.com", comment="not sent")
        job = await job_in(app, job_id, "completed", "escalated", "dead_lettered")
    assert job.status == "completed"
    assert sent == [(claim.idempotency_key, 2)]


# -- reviews --------------------------------------------------------------------------------------


async def test_review_past_its_sla_escalates_and_calls_the_hook_once(
    make_app: Callable[..., App],
) -> None:
    """Two workers (two connections) reap the same overdue review: the hook runs once."""
    escalated: list[tuple[str, Any]] = []
    calls: list[int] = []

    def build(name: str) -> App:
        async def hook(*, review: Any) -> None:
            escalated.append((name, review))

        app = make_app(on_review_escalated=hook)

        @app.tool(timeout=5, idempotent=True)
        async def ship(args: Args, ctx: ToolContext) -> Out:
            calls.append(ctx.attempt)
            return Out(value="shipped")

        step_spec = {
            "id": "ship",
            "tool": "ship",
            "requires_approval": True,
            # Long enough to read the review as pending first, however loaded the machine.
            "review": {"reason": "ships goods", "sla_seconds": 2.0},
        }
        app.workflow("flow", input=Args, templates=[steps_template("t", step_spec)])
        return app

    app, other = build("one"), build("two")
    job_id = await submit(app)
    async with running(app, worker_id="w-one"), running(other, worker_id="w-two"):
        await job_in(app, job_id, "waiting_approval")
        [review] = await app.client().reviews()
        assert review.status == "pending" and review.reason == "ships goods"
        await job_in(app, job_id, "escalated")
        await eventually(lambda: _async(bool(escalated)))
        await asyncio.sleep(0.3)  # several more reaper passes on both workers
    assert len(escalated) == 1
    assert escalated[0][1].id == review.id and escalated[0][1].status == "escalated"
    assert (await app.client().review(review.id)).status == "escalated"
    assert calls == []
    assert len(await events(app, job_id, "review_escalated")) == 1


# -- redrive --------------------------------------------------------------------------------------


async def test_redrive_resumes_from_the_failed_step_only(make_app: Callable[..., App]) -> None:
    app = make_app()
    calls: Counter[str] = Counter()
    broken = {"b": True}

    @app.tool(timeout=5, idempotent=True, retry=NO_WAIT)
    async def work(args: Args, ctx: ToolContext) -> Out:
        calls[args.value] += 1
        if broken.get(args.value):
            raise TransientError(f"{args.value} is down")
        return Out(value=args.value)

    app.workflow(
        "flow",
        input=Args,
        templates=[
            steps_template(
                "t",
                {"id": "a", "tool": "work", "args": {"value": "a"}},
                {"id": "b", "tool": "work", "args": {"value": "b"}, "depends_on": ["a"]},
                {"id": "c", "tool": "work", "args": {"value": "c"}, "depends_on": ["b"]},
            )
        ],
    )
    job_id = await submit(app)
    async with running(app):
        job = await job_in(app, job_id, "dead_lettered", "completed", "escalated")
        assert job.status == "dead_lettered"
        assert calls == {"a": 1, "b": 2}
        [letter] = await app.client().dead_letters()
        assert (letter.job_id, letter.step_key) == (job_id, "b")

        broken["b"] = False
        await app.client().redrive(letter.id, actor="operator", reason="vendor is back")
        job = await job_in(app, job_id, "completed", "dead_lettered", "escalated")
    assert job.status == "completed"
    assert calls == {"a": 1, "b": 3, "c": 1}  # a never ran again
    steps = {s.key: s for s in await app.client().steps(job_id)}
    assert (steps["a"].attempt, steps["b"].attempt, steps["c"].attempt) == (1, 1, 1)
    assert len([e for e in await events(app, job_id, "step_succeeded") if e.step_key == "a"]) == 1
    assert (await app.client().dead_letter(letter.id)).status == "redriven"
    assert await app.client().dead_letters() == []


# -- versions pinned ------------------------------------------------------------------------------


class LookupV1(BaseModel):
    key: str


class LookupV2(BaseModel):
    key: str
    region: str = "eu"


async def test_a_changed_tool_schema_fails_closed(make_app: Callable[..., App]) -> None:
    planned = make_app()

    @planned.tool(name="lookup", timeout=5, idempotent=True)
    async def lookup_v1(args: LookupV1, ctx: ToolContext) -> Out:
        return Out(value=args.key)

    flow = steps_template("t", {"id": "find", "tool": "lookup", "args": {"key": "k"}})
    planned.workflow("flow", input=Args, templates=[flow])
    job_id = await submit(planned)

    # The worker was deployed with a new version of the tool.
    deployed = make_app()
    calls: list[int] = []

    @deployed.tool(name="lookup", timeout=5, idempotent=True)
    async def lookup_v2(args: LookupV2, ctx: ToolContext) -> Out:
        calls.append(ctx.attempt)
        return Out(value=args.key)

    deployed.workflow("flow", input=Args, templates=[flow])
    assert deployed.tools.get("lookup").schema_hash != planned.tools.get("lookup").schema_hash  # type: ignore[union-attr]
    async with running(deployed):
        job = await job_in(deployed, job_id, "escalated", "completed", "dead_lettered")
    assert job.status == "escalated"
    assert job.error is not None
    assert job.error["code"] == "schema_changed" and "schema" in job.error["message"]
    assert calls == []
    [letter] = await deployed.client().dead_letters()
    assert letter.step_key == "find"
