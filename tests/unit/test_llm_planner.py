"""The LLM planner: a scripted model writes plans that are validated like template plans."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from stalwart.domain.budgets import CallScope
from stalwart.errors import PlanValidationError
from stalwart.llm.gateway import Gateway
from stalwart.llm.pricing import Pricing
from stalwart.llm.routing import ModelRegistry, Router
from stalwart.llm.scripted import ScriptedModel
from stalwart.llm.types import ModelRequest
from stalwart.planning.llm_planner import LlmPlanner, PlanDraft, draft_template
from stalwart.planning.planner import TemplatePlanner
from stalwart.planning.workflows import Budget, Workflow
from stalwart.settings import Settings
from stalwart.store import open_store
from stalwart.store.base import Store
from stalwart.tools.registry import ToolRegistry

JOB = "job-llm-plan"


class OrderInput(BaseModel):
    user_id: str
    name: str = ""


def workflow(**overrides: Any) -> Workflow:
    fields: dict[str, Any] = {
        "name": "greeting",
        "input_model": OrderInput,
        "templates": (),
        "description": "Greet a user by email.",
        "planner": "llm",
    }
    fields.update(overrides)
    return Workflow(**fields)


FETCH = {"id": "fetch", "tool": "fetch_profile", "args": {"user_id": "${input.user_id}"}}
GREET = {
    "id": "greet",
    "tool": "send_email",
    "args": {"to": "${steps.fetch.output.email}", "body": "Hello ${input.name}"},
    "critical": False,
}
GOOD = {"steps": [FETCH, GREET], "rationale": "fetch the address, then write"}
UNKNOWN = {"steps": [FETCH, {**GREET, "tool": "send_fax"}]}
INPUT = {"user_id": "u-7", "name": "Ann"}


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    store = open_store(f"sqlite:///{tmp_path}/t.db")
    await store.migrate()
    yield store
    await store.close()


@pytest.fixture
def model() -> ScriptedModel:
    return ScriptedModel("planner")


@pytest.fixture
def gateway(store: Store, model: ScriptedModel) -> Gateway:
    settings = Settings()
    models = ModelRegistry(settings)
    models.register("scripted:planner", model)
    models.register("scripted:small", ScriptedModel("small"))
    router = Router(
        {
            "large": ["scripted:planner"],
            "medium": ["scripted:small"],
            "small": ["scripted:small"],
        },
        settings,
    )
    return Gateway(store=store, router=router, models=models, pricing=Pricing(), settings=settings)


@pytest.fixture
def scope(gateway: Gateway) -> CallScope:
    return gateway.scope("acme", JOB, step_key="plan", purpose="planning")


@pytest.fixture
def planner(gateway: Gateway, tools: ToolRegistry) -> LlmPlanner:
    return LlmPlanner(gateway, TemplatePlanner(tools), max_reasks=2)


def last_user(request: ModelRequest) -> str:
    return next(m.content for m in reversed(request.messages) if m.role == "user")


async def test_a_valid_draft_becomes_a_validated_plan(
    planner: LlmPlanner, model: ScriptedModel, scope: CallScope, store: Store
) -> None:
    model.on_step("plan", GOOD)
    plan = await planner.plan(workflow(), INPUT, scope=scope)
    assert plan.template_name == "llm-v1"
    assert plan.version == 1
    assert [s.id for s in plan.steps] == ["fetch", "greet"]
    fetch, greet = plan.steps
    assert fetch.args == {"user_id": "u-7"}
    assert fetch.timeout_seconds == 10  # filled from the tool, like a template plan
    assert greet.depends_on == ["fetch"]
    assert greet.args == {"to": "${steps.fetch.output.email}", "body": "Hello Ann"}
    assert greet.requires_approval is True  # a high-risk tool, by the workflow's policy
    assert greet.critical is False
    assert plan.notes == {"planner": "llm", "rationale": "fetch the address, then write"}
    assert len(model.requests) == 1
    request = model.requests[0]
    assert request.schema == PlanDraft.model_json_schema()
    assert request.meta["purpose"] == "planning"
    assert [m.role for m in request.messages] == ["system", "user"]
    assert len(await store.llm_call_list(JOB)) == 1


async def test_the_prompt_describes_the_job(
    planner: LlmPlanner, model: ScriptedModel, scope: CallScope
) -> None:
    model.on_step("plan", GOOD)
    wf = workflow(
        budget=Budget(max_usd=0.5, max_tokens=20_000),
        allowed_tools=frozenset({"fetch_profile", "send_email"}),
    )
    await planner.plan(wf, INPUT, scope=scope)
    system, user = model.requests[0].messages
    assert "^[A-Za-z_][A-Za-z0-9_\\-]*$" in system.content
    assert "${steps.<id>.output.<field>}" in system.content
    assert "At most 100 steps" in system.content
    assert "Workflow: greeting" in user.content
    assert "Greet a user by email." in user.content
    assert json.dumps(INPUT) in user.content
    assert '"name": "fetch_profile"' in user.content
    assert '"risk": "high"' in user.content
    assert '"args_schema"' in user.content
    assert '"result_schema"' in user.content
    assert "charge" not in user.content  # not allowed here, so not offered
    assert "$0.5" in user.content
    assert "20000 model tokens" in user.content


async def test_an_unknown_tool_is_reasked_with_the_problem(
    planner: LlmPlanner, model: ScriptedModel, scope: CallScope, store: Store
) -> None:
    model.on_step("plan", UNKNOWN, GOOD)
    plan = await planner.plan(workflow(), INPUT, scope=scope)
    assert [s.tool for s in plan.steps] == ["fetch_profile", "send_email"]
    assert len(model.requests) == 2
    reask = model.requests[1]
    assert [m.role for m in reask.messages] == ["system", "user", "assistant", "user"]
    assert json.loads(reask.messages[2].content)["steps"][1]["tool"] == "send_fax"
    problem = last_user(reask)
    assert "step 'greet'" in problem
    assert "unknown tool 'send_fax'" in problem
    assert len(await store.llm_call_list(JOB)) == 2


async def test_a_model_that_keeps_failing_is_rejected(
    planner: LlmPlanner, model: ScriptedModel, scope: CallScope, store: Store
) -> None:
    model.on_step("plan", UNKNOWN)
    with pytest.raises(PlanValidationError) as info:
        await planner.plan(workflow(), INPUT, scope=scope)
    assert "the model's plan was rejected after 3 asks" in info.value.message
    assert {
        "step": "greet",
        "problem": "unknown tool 'send_fax' (known: charge, fetch_profile, send_email)",
    } in info.value.problems
    assert {p["step"] for p in info.value.problems} == {"greet"}
    assert len(model.requests) == 1 + planner.max_reasks
    calls = await store.llm_call_list(JOB)
    assert len(calls) == 1 + planner.max_reasks
    assert {c.purpose for c in calls} == {"planning"}


async def test_no_reasks(gateway: Gateway, tools: ToolRegistry, model: ScriptedModel) -> None:
    model.on_step("plan", UNKNOWN)
    planner = LlmPlanner(gateway, TemplatePlanner(tools), max_reasks=0)
    with pytest.raises(PlanValidationError):
        await planner.plan(workflow(), INPUT, scope=gateway.scope("acme", JOB, step_key="plan"))
    assert len(model.requests) == 1


async def test_a_cycle_is_rejected(
    planner: LlmPlanner, model: ScriptedModel, scope: CallScope
) -> None:
    cycle = {
        "steps": [
            {**FETCH, "depends_on": ["greet"]},
            GREET,
        ]
    }
    model.on_step("plan", cycle)
    with pytest.raises(PlanValidationError) as info:
        await planner.plan(workflow(), INPUT, scope=scope)
    assert any("cycle" in p["problem"] for p in info.value.problems)
    assert "cycle" in last_user(model.requests[1])


async def test_a_disallowed_tool_is_rejected(
    planner: LlmPlanner, model: ScriptedModel, scope: CallScope
) -> None:
    model.on_step("plan", GOOD)
    wf = workflow(allowed_tools=frozenset({"fetch_profile"}))
    with pytest.raises(PlanValidationError) as info:
        await planner.plan(wf, INPUT, scope=scope)
    assert {"step": "greet", "problem": "tool 'send_email' is not allowed in this workflow"} in (
        info.value.problems
    )


async def test_a_bad_step_id_becomes_a_problem(
    planner: LlmPlanner, model: ScriptedModel, scope: CallScope
) -> None:
    model.on_step("plan", {"steps": [{**FETCH, "id": "9 fetch"}]}, {"steps": []}, GOOD)
    plan = await planner.plan(workflow(), INPUT, scope=scope)
    assert [s.id for s in plan.steps] == ["fetch", "greet"]
    first, second = last_user(model.requests[1]), last_user(model.requests[2])
    assert "step '9 fetch': id: String should match pattern" in first
    assert "plan: the plan has no steps" in second


async def test_static_args_are_checked_against_the_tool(
    planner: LlmPlanner, model: ScriptedModel, scope: CallScope
) -> None:
    bad = {"steps": [{**FETCH, "args": {"user_id": "u", "limit": "many"}}]}
    model.on_step("plan", bad)
    with pytest.raises(PlanValidationError) as info:
        await planner.plan(workflow(), INPUT, scope=scope)
    assert any("argument 'limit'" in p["problem"] for p in info.value.problems)


async def test_a_replan_carries_the_failure_and_the_tried_plans(
    planner: LlmPlanner, model: ScriptedModel, scope: CallScope
) -> None:
    first = draft_template(PlanDraft.model_validate(GOOD), 1)
    tried = TemplatePlanner(planner.templates.tools).bind(workflow(), first, INPUT)
    model.on_step("plan", {"steps": [FETCH], "rationale": "no email this time"})
    feedback = {"step": "greet", "error": "mailbox unavailable at the relay"}
    plan = await planner.plan(
        workflow(), INPUT, scope=scope, version=2, tried=[tried], feedback=feedback
    )
    assert plan.version == 2
    assert plan.template_name == "llm-v2"
    assert plan.notes["feedback"] == feedback
    assert plan.notes["planner"] == "llm"
    prompt = last_user(model.requests[0])
    assert "mailbox unavailable at the relay" in prompt
    assert "already tried" in prompt
    assert '"id": "fetch"' in prompt
    assert '"id": "greet"' in prompt
    assert "different plan" in prompt


async def test_the_tier_can_be_chosen(
    planner: LlmPlanner, scope: CallScope, gateway: Gateway, store: Store
) -> None:
    small = gateway.models.get("scripted:small")
    assert isinstance(small, ScriptedModel)
    small.on_step("plan", GOOD)
    plan = await planner.plan(workflow(), INPUT, scope=scope, tier="small")
    assert len(plan.steps) == 2
    assert [c.tier for c in await store.llm_call_list(JOB)] == ["small"]


async def test_similar_past_jobs_are_shown_to_the_model(
    planner: LlmPlanner, model: ScriptedModel, scope: CallScope
) -> None:
    model.on_step("plan", GOOD, GOOD)
    past = ["greeting job: user_id: u-3. Outcome: failed. Error: the mail server refused u-3."]
    await planner.plan(workflow(), INPUT, scope=scope, past=past)
    shown = last_user(model.requests[0])
    assert "Similar past jobs" in shown and "the mail server refused u-3" in shown
    await planner.plan(workflow(), INPUT, scope=scope)
    assert "Similar past jobs" not in last_user(model.requests[1])


# -- agent steps ----------------------------------------------------------------------------------

RESEARCH = {
    "id": "research",
    "kind": "agent",
    "prompt": "Find everything about ${input.user_id} and report.",
    "tools": ["fetch_profile", "send_email"],
    "output": "Dossier",
    "max_turns": 4,
}
MAIL = {
    "id": "mail",
    "tool": "send_email",
    "args": {"to": "ops@example.com", "body": "${steps.research.output.summary}"},
}


class Dossier(BaseModel):
    summary: str


@pytest.fixture
def agent_planner(gateway: Gateway, tools: ToolRegistry) -> LlmPlanner:
    schemas: dict[str, type[BaseModel]] = {"Dossier": Dossier}
    return LlmPlanner(
        gateway, TemplatePlanner(tools, schemas=schemas, tiers=frozenset({"large"})), max_reasks=1
    )


async def test_the_model_may_write_an_agent_step(
    agent_planner: LlmPlanner, model: ScriptedModel, scope: CallScope
) -> None:
    model.on_step("plan", {"steps": [RESEARCH, MAIL]})
    plan = await agent_planner.plan(workflow(), INPUT, scope=scope)
    research, mail = plan.steps
    assert research.kind == "agent" and research.tool is None
    assert research.agent is not None
    assert research.agent.prompt == "Find everything about u-7 and report."
    assert research.agent.tools == ["fetch_profile", "send_email"]
    assert (research.agent.output, research.agent.max_turns) == ("Dossier", 4)
    assert research.requires_approval is False  # its send_email calls ask, mid-loop
    assert mail.depends_on == ["research"]
    system, user = model.requests[0].messages
    assert "kind: agent" in system.content and "max_turns" in system.content
    assert '"Dossier"' in user.content and '"summary"' in user.content  # the schemas it may name
    fields = PlanDraft.model_json_schema()["$defs"]["DraftStep"]["properties"]
    assert {"kind", "prompt", "tools", "output", "max_turns"} <= set(fields)


async def test_a_written_agent_step_is_validated_like_a_templates(
    agent_planner: LlmPlanner, model: ScriptedModel, scope: CallScope
) -> None:
    bad = {**RESEARCH, "tools": ["fetch_profile", "send_fax"], "output": "Dosier"}
    later = {**MAIL, "args": {"to": "x", "body": "${steps.research.output.sumary}"}}
    model.on_step("plan", {"steps": [bad, later]}, {"steps": [RESEARCH, MAIL]})
    plan = await agent_planner.plan(workflow(), INPUT, scope=scope)
    assert [s.id for s in plan.steps] == ["research", "mail"]
    problems = last_user(model.requests[1])
    assert "unknown tool 'send_fax' in tools" in problems
    assert "output schema 'Dosier' is not registered" in problems


async def test_agent_fields_on_a_tool_step_are_sent_back(
    agent_planner: LlmPlanner, model: ScriptedModel, scope: CallScope
) -> None:
    confused = {**FETCH, "tools": ["fetch_profile"], "max_turns": 3}
    model.on_step("plan", {"steps": [confused]}, {"steps": [{**RESEARCH, "tool": "send_email"}]})
    with pytest.raises(PlanValidationError) as info:
        await agent_planner.plan(workflow(), INPUT, scope=scope)
    first = last_user(model.requests[1])
    assert "tools, max_turns belong to agent steps: set kind: agent" in first
    # An agent step names the tools it may call in `tools`, not `tool`.
    assert "write tools: [send_email]" in info.value.problems[0]["problem"]


async def test_a_tried_agent_step_is_shown_with_its_prompt_and_tools(
    agent_planner: LlmPlanner, model: ScriptedModel, scope: CallScope
) -> None:
    template = draft_template(PlanDraft.model_validate({"steps": [RESEARCH]}), 1)
    tried = agent_planner.templates.bind(workflow(), template, INPUT)
    model.on_step("plan", {"steps": [FETCH]})
    await agent_planner.plan(workflow(), INPUT, scope=scope, version=2, tried=[tried])
    text = last_user(model.requests[0])
    assert '"tools": ["fetch_profile", "send_email"]' in text
    assert '"prompt": "Find everything about u-7 and report."' in text
