"""A job's trace rebuilt from the database (`observability.timeline`): real jobs run by an
in-process worker on SQLite (and PostgreSQL where it can run), then the tree's shape, its attempt
pairing and its sums checked against the ledger. Plus records made by hand for the cases a
worker does not reach on its own time (a lost lease, a job still running)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from stalwart import (
    App,
    Budget,
    ScriptedModel,
    SemanticError,
    Settings,
    StepSpec,
    Template,
    ToolContext,
    TransientError,
)
from stalwart.domain.budgets import LlmCallRecord, ledger_totals
from stalwart.domain.records import EventRecord, JobRecord, StepRecord
from stalwart.observability.timeline import (
    APPROVAL,
    JOB,
    LLM,
    MARKER,
    PLAN,
    STEP,
    TOOL,
    TraceNode,
    build_trace,
    flatten,
    format_duration,
    trace_totals,
)
from stalwart.observability.tracing import trace_id_of

FAST = {
    "lease_seconds": 2.0,
    "poll_interval_seconds": 0.02,
    "reaper_interval_seconds": 0.05,
    "drain_seconds": 5.0,
}
PRICES = {
    "scripted:writer": {"input_per_mtok": 100.0, "output_per_mtok": 200.0},
    "scripted:planner": {"input_per_mtok": 50.0, "output_per_mtok": 50.0},
}
DONE = ("completed", "failed", "escalated", "dead_lettered", "rejected", "cancelled")


class Args(BaseModel):
    value: str = "x"


class Out(BaseModel):
    value: str


class Score(BaseModel):
    score: float


class Label(BaseModel):
    label: str
    score: float


def build_app(database_url: str) -> App:
    """One app with a workflow per case."""
    # A job budget warns at 30% (its one model call uses about 36% of 200 tokens).
    settings = Settings(
        database_url=database_url, llm_prices=PRICES, budget_warning_ratio=0.3, **FAST
    )
    app = App(settings)

    @app.tool(timeout=5, idempotent=True)
    async def echo(args: Args, ctx: ToolContext) -> Out:
        return Out(value=args.value)

    @app.tool(timeout=5, idempotent=True)
    async def flaky(args: Args, ctx: ToolContext) -> Out:
        if ctx.attempt == 1:
            raise TransientError("the upstream said 503", code="http_503")
        return Out(value=args.value)

    @app.tool(timeout=5, idempotent=True)
    async def grade(args: Args, ctx: ToolContext) -> Score:
        return Score(score=0.5)

    @app.tool(timeout=5, idempotent=True)
    async def wrong(args: Args, ctx: ToolContext) -> Out:
        raise SemanticError("not what was asked", code="wrong")

    app.schema(Label)
    app.model("scripted:writer", ScriptedModel("writer", default={"label": "spam", "score": 0.9}))
    app.route("small", ["scripted:writer"])
    app.model(
        "scripted:planner",
        ScriptedModel(
            "planner", default={"steps": [{"id": "go", "tool": "echo", "args": {"value": "p"}}]}
        ),
    )
    app.route("large", ["scripted:planner"])

    retry_now = {"max_attempts": 3, "base_seconds": 0, "cap_seconds": 0}
    app.workflow(
        "plain",
        input=Args,
        templates=[
            {
                "name": "plain",
                "steps": [
                    {"id": "a", "tool": "echo", "args": {"value": "${input.value}"}},
                    {"id": "b", "tool": "echo", "args": {"value": "b"}, "depends_on": ["a"]},
                ],
            }
        ],
    )
    app.workflow(
        "retried",
        input=Args,
        templates=[
            {"name": "retried", "steps": [{"id": "call", "tool": "flaky", "retry": retry_now}]}
        ],
    )
    app.workflow(
        "approved",
        input=Args,
        templates=[
            {
                "name": "approved",
                "steps": [
                    {"id": "find", "tool": "echo"},
                    {
                        "id": "pay",
                        "tool": "echo",
                        "depends_on": ["find"],
                        "requires_approval": True,
                    },
                ],
            }
        ],
    )
    label = StepSpec(
        id="label",
        kind="llm",
        llm={
            "prompt": "Classify ${input.value}",
            "output": "Label",
            "tier": "small",
            "max_tokens": 40,
        },
    )
    app.workflow("classify", input=Args, templates=[Template(name="classify", steps=[label])])
    app.workflow(
        "starved",
        input=Args,
        templates=[Template(name="starved", steps=[label])],
        budget=Budget(max_tokens=1, on_exceeded="fail"),
    )
    app.workflow(
        "budgeted",
        input=Args,
        templates=[Template(name="budgeted", steps=[label])],
        budget=Budget(max_tokens=200),
    )

    def scored(name: str, minimum: float) -> dict[str, Any]:
        check = {"output.score": {"gte": minimum}}
        return {"name": name, "steps": [{"id": "grade", "tool": "grade", "success": check}]}

    app.workflow("replanned", input=Args, templates=[scored("strict", 0.9), scored("easy", 0.1)])
    app.workflow(
        "planned", input=Args, templates=[], planner="llm", allowed_tools=["echo", "wrong"]
    )
    return app


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'trace.db'}"
    return str(request.getfixturevalue("pg_url"))


async def eventually(check: Callable[[], Awaitable[Any]], within: float = 20.0) -> Any:
    deadline = time.monotonic() + within
    while True:
        result = await check()
        if result:
            return result
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


@pytest.fixture
async def ran(database_url: str) -> AsyncIterator[tuple[App, dict[str, str]]]:
    """Every case's job, run to its end by one in-process worker: (app, workflow -> job id)."""
    app = build_app(database_url)
    store = app.store()
    await store.migrate()
    client = app.client()
    jobs = {}
    for workflow in app.workflows:
        jobs[workflow] = (await client.submit(workflow, {"value": "v"})).job.id
    worker = app.worker(worker_id="w-trace")
    task = asyncio.create_task(worker.run())
    try:

        async def waiting() -> Any:
            found = [r for r in await client.reviews() if r.job_id == jobs["approved"]]
            return found[0] if found else None

        review = await eventually(waiting)
        await asyncio.sleep(0.05)  # the wait shows as a span of some length
        await client.approve(review.id, reviewer="alice", comment="looks right")

        async def all_done() -> bool:
            return all([(await client.get(j)).status in DONE for j in jobs.values()])

        await eventually(all_done)
    finally:
        worker.stop()
        await asyncio.wait_for(task, 15)
    try:
        yield app, jobs
    finally:
        await store.close()


async def trace_of(app: App, job_id: str) -> tuple[TraceNode, list[LlmCallRecord], JobRecord]:
    c = app.client()
    job = await c.get(job_id)
    calls = await c.llm_calls(job_id)
    root = build_trace(
        job,
        await c.steps(job_id, all_versions=True),
        await c.events(job_id),
        calls,
        await c.plans(job_id),
    )
    return root, calls, job


def kinds(node: TraceNode, kind: str) -> list[TraceNode]:
    return [n for n in node.walk() if n.kind == kind]


def assert_well_formed(root: TraceNode) -> None:
    """Every closed child lies within its parent (times from one clock), in start order."""
    for node in root.walk():
        starts = [c.start for c in node.children]
        assert starts == sorted(starts), node.name
        for child in node.children:
            assert child.start >= node.start - 0.06, (node.name, child.name)
            if node.end is not None and child.end is not None and child.kind != LLM:
                assert child.end <= node.end + 0.06, (node.name, child.name)


async def test_a_plain_success_is_a_plan_and_one_attempt_per_step(
    ran: tuple[App, dict[str, str]],
) -> None:
    app, jobs = ran
    root, calls, job = await trace_of(app, jobs["plain"])
    assert (root.name, root.kind, root.status, root.outcome) == (
        "invoke_workflow plain",
        JOB,
        "ok",
        "completed",
    )
    assert root.end == job.finished and root.duration is not None
    assert root.attributes["trace_id"] == trace_id_of(job.trace_context)
    assert [(c.kind, c.name) for c in root.children] == [
        (PLAN, "plan plain"),
        (STEP, "step a"),
        (STEP, "step b"),
    ]
    plan = root.children[0]
    assert plan.attributes["version"] == 1 and plan.attributes["template"] == "plain"
    assert plan.status == "ok" and plan.attributes["replan"] is False
    for step in root.children[1:]:
        assert step.attributes["attempt"] == 1 and step.outcome == "succeeded"
        assert [(t.kind, t.name, t.status) for t in step.children] == [
            (TOOL, "execute_tool echo", "ok")
        ]
        assert step.children[0].duration == step.duration
        assert step.attributes["worker"] == "w-trace"
    assert root.children[2].start >= root.children[1].end  # b ran after a
    assert_well_formed(root)
    totals = trace_totals(root)
    assert (totals["steps"], totals["attempts"], totals["model_calls"], totals["plans"]) == (
        2,
        2,
        0,
        1,
    )
    assert totals["duration_s"] == root.duration and calls == []
    # The same tree as rows (the web UI's table), and as JSON.
    rows = flatten(root)
    assert [(d, n.name) for d, n in rows][:3] == [
        (0, "invoke_workflow plain"),
        (1, "plan plain"),
        (1, "step a"),
    ]
    as_json = root.to_dict()
    assert as_json["children"][1]["children"][0]["name"] == "execute_tool echo"
    assert as_json["offset_ms"] == 0 and as_json["duration_ms"] >= 0


async def test_a_retried_step_has_one_span_per_attempt(ran: tuple[App, dict[str, str]]) -> None:
    app, jobs = ran
    root, _, _ = await trace_of(app, jobs["retried"])
    attempts = kinds(root, STEP)
    assert [(a.name, a.attributes["attempt"], a.outcome) for a in attempts] == [
        ("step call", 1, "retry"),
        ("step call", 2, "succeeded"),
    ]
    first, second = attempts
    assert first.status == "error" and first.attributes["error_class"] == "transient"
    assert first.attributes["error_code"] == "http_503" and "retry_in_s" in first.attributes
    assert first.children[0].status == "error"  # the tool's span failed too
    assert first.end is not None and second.start >= first.end
    totals = trace_totals(root)
    assert (totals["steps"], totals["attempts"], totals["failed_attempts"]) == (1, 2, 1)
    assert_well_formed(root)


async def test_an_approval_spans_the_wait_and_names_the_reviewer(
    ran: tuple[App, dict[str, str]],
) -> None:
    app, jobs = ran
    root, _, _ = await trace_of(app, jobs["approved"])
    assert [c.name for c in root.children] == [
        "plan approved",
        "step find",
        "approval pay",
        "step pay",
    ]
    approval = root.children[2]
    assert approval.kind == APPROVAL and approval.outcome == "approved"
    assert approval.attributes["reviewer"] == "alice"
    assert approval.attributes["comment"] == "looks right"
    assert approval.duration is not None and approval.duration >= 0.04
    assert approval.end is not None and root.children[3].start >= approval.end
    assert trace_totals(root)["approvals"] == 1
    assert_well_formed(root)


async def test_model_calls_sit_under_their_attempt_and_sum_to_the_ledger(
    ran: tuple[App, dict[str, str]],
) -> None:
    app, jobs = ran
    root, calls, _ = await trace_of(app, jobs["classify"])
    [attempt] = kinds(root, STEP)
    assert attempt.name == "step label" and attempt.outcome == "succeeded"
    chats = [c for c in attempt.children if c.kind == LLM]
    assert [c.name for c in chats] == ["chat writer"] * len(calls) and calls
    assert not [c for c in attempt.children if c.kind == TOOL]  # an llm step runs no tool
    chat = chats[0]
    assert chat.attributes["provider"] == "scripted" and chat.outcome == "ok"
    assert chat.attributes["input_tokens"] > 0 and chat.attributes["output_tokens"] > 0
    assert chat.duration is not None
    ledger, totals = ledger_totals(calls), trace_totals(root)
    assert ledger["cost_usd"] > 0
    for key in ("input_tokens", "output_tokens", "cost_usd"):
        assert totals[key] == ledger[key], key
    assert totals["model_calls"] == ledger["calls"]


async def test_a_refused_call_fails_its_attempt(ran: tuple[App, dict[str, str]]) -> None:
    app, jobs = ran
    root, calls, job = await trace_of(app, jobs["starved"])
    assert job.status == "failed" and root.status == "error"
    assert root.attributes["error_class"] == "budget"
    [attempt] = kinds(root, STEP)
    assert attempt.outcome == "failed" and attempt.attributes["error_class"] == "budget"
    refused = [c for c in attempt.children if c.kind == LLM]
    assert [c.outcome for c in refused] == ["refused"] and refused[0].status == "error"
    assert refused[0].attributes["error_class"] == "budget"
    assert trace_totals(root)["model_calls"] == len(calls) == 1


async def test_a_budget_warning_is_a_marker_in_its_attempt(
    ran: tuple[App, dict[str, str]],
) -> None:
    app, jobs = ran
    root, _, job = await trace_of(app, jobs["budgeted"])
    assert job.status == "completed"
    [attempt] = kinds(root, STEP)
    [warning] = kinds(root, MARKER)
    assert warning.name == "budget_warning job" and warning in attempt.children
    assert warning.duration == 0 and warning.attributes["unit"] == "tokens"
    assert warning.attributes["step"] == "label" and "of its limit" in warning.attributes["reason"]
    assert [c.kind for c in attempt.children] == [LLM, MARKER]  # after the call it counts


async def test_a_replan_is_a_second_plan_span_and_the_step_runs_again(
    ran: tuple[App, dict[str, str]],
) -> None:
    app, jobs = ran
    root, _, job = await trace_of(app, jobs["replanned"])
    assert job.status == "completed" and job.replans == 1
    assert [c.name for c in root.children] == [
        "plan replanned",
        "step grade",
        "plan replanned",
        "step grade",
    ]
    first_plan, failed, replan, passed = root.children
    assert first_plan.attributes["version"] == 1 and first_plan.attributes["replan"] is False
    assert replan.attributes["version"] == 2 and replan.attributes["replan"] is True
    assert replan.attributes["template"] == "easy" and replan.attributes["reason"]
    assert failed.attributes["plan_version"] == 1 and passed.attributes["plan_version"] == 2
    assert failed.outcome == "failed" and failed.attributes["error_class"] == "semantic"
    assert passed.outcome == "succeeded" and passed.attributes["attempt"] == 1
    assert trace_totals(root)["plans"] == 2
    assert_well_formed(root)


async def test_a_model_planned_job_puts_the_planners_call_under_its_plan(
    ran: tuple[App, dict[str, str]],
) -> None:
    app, jobs = ran
    root, calls, job = await trace_of(app, jobs["planned"])
    assert job.status == "completed"
    assert [c.name for c in root.children] == ["plan planned", "step go"]
    plan = root.children[0]
    assert [(c.name, c.attributes["purpose"]) for c in plan.children] == [
        ("chat planner", "planning")
    ] * len(calls)
    assert plan.duration is not None and plan.duration > 0  # a worker planned it, later
    ledger, totals = ledger_totals(calls), trace_totals(root)
    assert (totals["input_tokens"], totals["cost_usd"]) == (
        ledger["input_tokens"],
        ledger["cost_usd"],
    )
    assert_well_formed(root)


# -- records made by hand ------------------------------------------------------------------------


T0 = 1_700_000_000.0


def _job(status: str, finished: float | None = None) -> JobRecord:
    return JobRecord(
        id="job_1", tenant_id="acme", workflow="flow", status=status, priority=0, input={},
        idempotency_key=None, plan_version=1, template_name="flow", template_hash="h",
        tool_schema_hashes={}, replans=0, max_replans=1, max_steps=None, steps_executed=2,
        degraded=False, cancel_requested=False, error=None, result=None, created=T0,
        updated=T0 + 9, deadline=None, finished=finished,
        trace_context="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    )  # fmt: skip


def _step(step_id: int, key: str, kind: str = "tool") -> StepRecord:
    return StepRecord(
        id=step_id, job_id="job_1", tenant_id="acme", plan_version=1, key=key, kind=kind,
        tool="pay" if kind == "tool" else None, status="running", priority=0, attempt=2,
        max_attempts=3, critical=True, idempotent=True, approved=False, reconcile_pending=False,
        lease_owner="w2", lease_token=2, due=T0, lease_expires=None, spec={}, output=None,
        error=None, started=T0 + 4, finished=None,
    )  # fmt: skip


def _event(n: int, kind: str, at: float, **kw: Any) -> EventRecord:
    fields: dict[str, Any] = {
        "step_id": None, "step_key": None, "from_status": None, "to_status": None,
        "actor": "w1", "reason": "", "data": None,
    }  # fmt: skip
    fields.update(kw)
    return EventRecord(id=n, kind=kind, tenant_id="acme", job_id="job_1", at=T0 + at, **fields)


def _call(n: int, at: float, step_key: str | None, attempt: int) -> LlmCallRecord:
    return LlmCallRecord(
        id=n, tenant_id="acme", job_id="job_1", step_key=step_key, attempt=attempt, seq=1,
        purpose="x", provider="openai", model="gpt-4o-mini", tier="small", outcome="ok",
        reserved_nanos=0, input_tokens=10, output_tokens=5, cached_tokens=0, cost_nanos=7,
        priced=True, cache_hit=False, latency_ms=100.0, context_tokens=None, context_limit=None,
        error_class=None, error=None, created=T0 + at,
    )  # fmt: skip


def test_a_lost_lease_ends_the_attempt_and_a_running_job_stays_open() -> None:
    run = {"from_status": "ready", "to_status": "running", "step_id": 1, "step_key": "pay"}
    events = [
        _event(1, "job_submitted", 0),
        _event(2, "job_planning_started", 0, from_status="validating", to_status="planning"),
        _event(3, "plan_created", 0, data={"version": 1, "template": "flow", "steps": 1}),
        _event(4, "step_started", 1, data={"attempt": 1, "worker": "w1"}, **run),
        _event(
            5,
            "step_ready",
            3,
            step_id=1,
            step_key="pay",
            from_status="running",
            to_status="ready",
            reason="lease expired; idempotent tool, runs again",
        ),
        _event(6, "step_started", 4, data={"attempt": 2, "worker": "w2"}, **run),
        _event(7, "job_redriven", 5),
    ]
    calls = [_call(1, 1.5, "pay", 1), _call(2, 4.5, "pay", 2), _call(3, 6, "other", 1)]
    root = build_trace(_job("executing"), [_step(1, "pay")], events, calls, [])
    assert root.end is None and root.status == "unset" and root.duration is None
    assert root.attributes["trace_id"] == "0af7651916cd43dd8448eb211c80319c"
    lost, running = kinds(root, STEP)
    assert (lost.outcome, lost.status, lost.end) == ("lease_lost", "error", T0 + 3)
    assert [c.name for c in lost.children] == ["execute_tool pay", "chat gpt-4o-mini"]
    assert running.end is None and running.attributes["worker"] == "w2"
    assert running.extent(T0 + 10) == 6
    assert [c.kind for c in running.children] == [TOOL, LLM]
    # A call no attempt can hold stays visible, under the root; the sums still match.
    assert [c.name for c in root.children if c.kind == LLM] == ["chat gpt-4o-mini"]
    assert [c.name for c in root.children if c.kind == MARKER] == ["job_redriven"]
    assert trace_totals(root)["input_tokens"] == 30
    assert trace_totals(root)["cost_usd"] == ledger_totals(calls)["cost_usd"]
    assert root.to_dict()["children"][1]["duration_ms"] == 2000


def test_a_finished_job_closes_what_was_left_open() -> None:
    events = [
        _event(1, "job_planning_started", 0, from_status="validating", to_status="planning"),
        _event(
            2,
            "step_started",
            1,
            step_id=1,
            step_key="pay",
            from_status="ready",
            to_status="running",
            data={"attempt": 1},
        ),
        _event(
            3,
            "review_requested",
            2,
            step_id=2,
            step_key="ship",
            reason="big order",
            data={"review_id": "rev_1", "review_kind": "approval"},
        ),
        _event(4, "job_cancelled", 3, from_status="executing", to_status="cancelled"),
    ]
    root = build_trace(_job("cancelled", T0 + 3), [_step(1, "pay")], events, [], [])
    assert (root.end, root.status) == (T0 + 3, "error")
    plan, attempt, approval = root.children
    assert (plan.kind, plan.outcome, plan.end) == (PLAN, "cancelled", T0 + 3)
    assert (attempt.outcome, attempt.end) == ("abandoned", T0 + 3)
    assert (approval.name, approval.outcome, approval.end) == (
        "approval ship",
        "unanswered",
        T0 + 3,
    )


def test_durations_read_like_a_person_would_say_them() -> None:
    assert [format_duration(s) for s in (None, 0.4123, 1.2, 65, 3700)] == [
        "-",
        "412 ms",
        "1.20 s",
        "1 min 5 s",
        "1 h 1 min",
    ]


def test_the_job_page_renders_the_trace_with_bars_and_no_inline_style() -> None:
    from stalwart.ui import views
    from stalwart.ui.jobs import trace_rows
    from stalwart.ui.render import templates

    run = {"from_status": "ready", "to_status": "running", "step_id": 1, "step_key": "pay"}
    events = [
        _event(1, "job_planning_started", 0, from_status="validating", to_status="planning"),
        _event(2, "plan_created", 0.5, data={"version": 1, "template": "flow", "steps": 1}),
        _event(3, "step_started", 1, data={"attempt": 1, "worker": "w1"}, **run),
        _event(
            4,
            "step_succeeded",
            3,
            step_id=1,
            step_key="pay",
            from_status="running",
            to_status="succeeded",
        ),
    ]
    job = _job("completed", T0 + 4)
    step = _step(1, "pay")
    root = build_trace(job, [step], events, [_call(1, 2, "pay", 1)], [])
    rows = trace_rows(root, T0 + 4)
    assert [(r.depth, r.label) for r in rows] == [
        (0, "invoke_workflow flow"),
        (1, "plan flow"),
        (1, "step pay #1"),
        (2, "execute_tool pay"),
        (2, "chat gpt-4o-mini"),
    ]
    assert (rows[0].x, rows[0].width) == (0, 1000) and (rows[2].x, rows[2].width) == (250, 500)
    assert rows[2].tokens == "10 / 5" and rows[2].offset == "+1.00 s"
    html = templates.env.get_template("job.html").render(
        session=None, principal=None, csrf="", nav=[], now=T0 + 4, notice="", error="",
        Permission=None, job=job, steps=[step], dag=views.dag([step]),
        node_width=views.NODE_WIDTH, node_height=views.NODE_HEIGHT, events=events, calls=[],
        totals=ledger_totals([]), review_of={}, finished=True, can_cancel=False, trace=root,
        trace_rows=rows, trace_totals=trace_totals(root),
    )  # fmt: skip
    section = html[html.index('id="trace-h"') : html.index('id="timeline"')]
    assert "step pay #1" in section and "chat gpt-4o-mini" in section
    assert '<rect x="250" y="1" width="500"' in section
    assert "trace id <span" in section and "0af7651916cd43dd8448eb211c80319c" in section
    assert "style=" not in section  # the page's CSP allows no inline style
