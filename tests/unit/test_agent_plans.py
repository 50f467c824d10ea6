"""Agent steps in plans: templates bind them, validation checks them before they run (each problem
naming the field at fault and the fix), later steps' references to their output are checked, and a
job pins the schemas of every tool its agents may call."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from stalwart import App, Settings, ToolContext
from stalwart.domain.agents import AgentSpec
from stalwart.domain.plans import Plan, Template
from stalwart.errors import PlanValidationError, TemplateError
from stalwart.planning.planner import TemplatePlanner
from stalwart.planning.templates import template_from_data
from stalwart.planning.validation import plan_problems, template_problems
from stalwart.planning.workflows import Workflow
from stalwart.tools.registry import ToolRegistry


class Input(BaseModel):
    user_id: str
    limit: int = 100


class Report(BaseModel):
    vendor: str
    amount: float
    confidence: float


SCHEMAS: dict[str, type[BaseModel]] = {"Report": Report}
INPUT = {"user_id": "u-1", "limit": 100}
AGENT: dict[str, Any] = {
    "id": "research",
    "kind": "agent",
    "instructions": "You are careful. The user is ${input.user_id}.",
    "prompt": "Find what ${input.user_id} owes and charge at most ${input.limit}.",
    "tools": ["fetch_profile", "send_email", "charge"],
    "output": "Report",
    "max_turns": 6,
    "approve": {"send_email": True, "charge": {"args.amount": {"gt": 100}}},
}
AFTER = {
    "id": "mail",
    "tool": "send_email",
    "args": {"to": "x@example.com", "body": "${steps.research.output.vendor}"},
}


def workflow(*steps: dict[str, Any], **overrides: Any) -> Workflow:
    template = Template.model_validate({"name": "t", "steps": list(steps)})
    return Workflow(name="w", input_model=Input, templates=(template,), **overrides)


def bind(tools: ToolRegistry, *steps: dict[str, Any], **overrides: Any) -> Plan:
    planner = TemplatePlanner(tools, schemas=SCHEMAS, tiers=frozenset({"large"}))
    return planner.plan(workflow(*steps, **overrides), INPUT)


def problems_of(
    tools: ToolRegistry, *steps: dict[str, Any], **overrides: Any
) -> list[dict[str, str]]:
    with pytest.raises(PlanValidationError) as info:
        bind(tools, *steps, **overrides)
    return info.value.problems


def only(problems: list[dict[str, str]]) -> dict[str, str]:
    assert len(problems) == 1, problems
    return problems[0]


# -- binding ----------------------------------------------------------------------------------


def test_a_valid_agent_step_binds_with_its_spec(tools: ToolRegistry) -> None:
    plan = bind(tools, AGENT, AFTER)
    research, mail = plan.steps
    assert research.kind == "agent" and research.tool is None and research.args == {}
    assert research.agent is not None
    assert research.agent.prompt == "Find what u-1 owes and charge at most 100."
    assert research.agent.instructions == "You are careful. The user is u-1."
    assert research.agent.tools == ["fetch_profile", "send_email", "charge"]
    assert research.agent.approve == AGENT["approve"]
    # It is offered a high-risk tool: its calls of it wait for a reviewer mid-loop, the step
    # itself does not wait before it starts (a tool step calling it would).
    assert research.requires_approval is False
    assert mail.requires_approval is True
    assert mail.depends_on == ["research"]
    assert research.retry.max_attempts > 1


def test_approve_conditions_on_earlier_outputs_are_dependencies(tools: ToolRegistry) -> None:
    fetch = {"id": "fetch", "tool": "fetch_profile", "args": {"user_id": "${input.user_id}"}}
    agent = {**AGENT, "approve": {"charge": {"steps.fetch.output.email": {"exists": True}}}}
    plan = bind(tools, fetch, agent)
    assert plan.step("research").depends_on == ["fetch"]


def test_an_agent_steps_schema_output_gates_its_consumers_on_low_confidence(
    tools: ToolRegistry,
) -> None:
    plan = bind(tools, AGENT, AFTER, review_confidence=0.8)
    [trigger] = plan.step("mail").review_if
    assert trigger.when == {"steps.research.output.confidence": {"lt": 0.8}}


def test_a_yaml_agent_step_goes_through_app_workflow(tmp_path: Path) -> None:
    (tmp_path / "research.yaml").write_text(
        """
name: research
steps:
  - id: research
    kind: agent
    prompt: "Look up ${input.user_id} and report."
    tools: [lookup]
    output: Report
    max_turns: 4
    max_tool_calls: 6
    approve: {lookup: {"args.user_id": {"ne": "root"}}}
  - id: tell
    tool: lookup
    args: {user_id: "${steps.research.output.vendor}"}
""",
        encoding="utf-8",
    )
    app = App(Settings(database_url="sqlite:///:memory:", embedder="none"))
    app.route("large", ["scripted:m"])
    app.schema(Report)

    class LookupArgs(BaseModel):
        user_id: str

    @app.tool(timeout=5, idempotent=True)
    async def lookup(args: LookupArgs, ctx: ToolContext) -> Report:
        return Report(vendor="v", amount=1.0, confidence=1.0)

    flow = app.workflow("research", input=Input, templates=[tmp_path / "research.yaml"])
    plan = app.planner().plan(flow, INPUT)
    step = plan.step("research")
    assert step.kind == "agent"
    assert step.agent == AgentSpec(
        prompt="Look up u-1 and report.",
        tools=["lookup"],
        output="Report",
        max_turns=4,
        max_tool_calls=6,
        approve={"lookup": {"args.user_id": {"ne": "root"}}},
    )
    assert plan.step("tell").depends_on == ["research"]
    assert plan.notes["estimated_usd"] >= 0  # priced like the other model steps
    assert plan.tool_names() == ["lookup"]


def test_a_yaml_agent_step_with_a_misspelt_input_field_is_refused_at_registration() -> None:
    from stalwart.errors import WorkflowDefinitionError

    app = App(Settings(database_url="sqlite:///:memory:", embedder="none"))
    bad = {**AGENT, "approve": {"charge": {"input.limt": {"lt": 5}}}}
    with pytest.raises(WorkflowDefinitionError) as info:
        app.workflow("w", input=Input, templates=[{"name": "t", "steps": [bad]}])
    assert "condition on 'input.limt'" in info.value.message
    assert "did you mean `limit`?" in info.value.message


def test_template_problems_check_input_paths_in_prompts_and_approvals() -> None:
    agent = {
        **AGENT,
        "prompt": "Find ${input.usr_id}",
        "approve": {"charge": {"input.limt": {"lt": 5}}},
    }
    template = Template.model_validate({"name": "t", "steps": [agent]})
    found = template_problems(template, Input)
    assert [(p["reference"], p.get("suggestion")) for p in found] == [
        ("input.usr_id", "user_id"),
        ("input.limt", "limit"),
    ]


def test_a_template_refuses_an_agent_step_without_tools() -> None:
    data = {"name": "t", "steps": [{**AGENT, "tools": [], "approve": {}}]}
    with pytest.raises(TemplateError) as info:
        template_from_data(data)
    assert "steps[research].agent.tools" in info.value.message


# -- validation problems, each with its field and fix --------------------------------------------


@pytest.mark.parametrize(
    ("change", "field", "problem", "fix"),
    [
        (
            {"tools": ["fetch_profle"], "approve": {}},
            "tools",
            "unknown tool 'fetch_profle' in tools (known: charge, fetch_profile, send_email)",
            "write `fetch_profile`",
        ),
        (
            {"tools": ["teleport"], "approve": {}},
            "tools",
            "unknown tool 'teleport'",
            "register it with @app.tool or remove it",
        ),
        (
            {"tools": ["charge", "fetch_profile", "charge"], "approve": {}},
            "tools",
            "tools lists 'charge' more than once",
            "list it once",
        ),
        (
            {"approve": {"send_emial": True}},
            "approve.send_emial",
            "approve names 'send_emial', which is not one of the tools "
            "(fetch_profile, send_email, charge)",
            "write approve.send_email",
        ),
        (
            {"approve": {"refund": True}},
            "approve.refund",
            "approve names 'refund'",
            "add 'refund' to tools, or remove approve.refund",
        ),
        (
            {"approve": {"charge": {"args.amont": {"gt": 100}}}},
            "approve.charge",
            "condition on 'args.amont': the argument schema of tool 'charge' (ChargeArgs) has no "
            "field 'amont'",
            "write args.amount",
        ),
        (
            {"approve": {"charge": {"args.amount": {"more_than": 100}}}},
            "approve.charge",
            "condition on 'args.amount' uses unknown operator(s) ['more_than']",
            "write {path: value} or {path: {operator: value}}",
        ),
        (
            {"approve": {"charge": {"amount": {"gt": 100}}}},
            "approve.charge",
            "condition on 'amount': a call's condition reads its arguments",
            "write args.amount for the call's argument 'amount'",
        ),
        (
            {"approve": {"charge": {"steps.research.output.amount": {"gt": 1}}}},
            "approve.charge",
            "reads the step's own output",
            "read the call's arguments (args.*) or an earlier step's output",
        ),
        (
            {"output": "Reprot"},
            "output",
            "output schema 'Reprot' is not registered (known: Report)",
            "register it with app.schema(Model); did you mean `Report`?",
        ),
        (
            {"tier": "medium"},
            "tier",
            "no model is routed for tier 'medium'",
            "set STALWART_LLM_TIERS or app.route()",
        ),
        (
            {"purpose": "extraction"},  # the small tier
            "purpose",
            "no model is routed for tier 'small'",
            "choose a routed tier",
        ),
        (
            {"args": {"user_id": "u-1"}},
            "args",
            "an agent step takes no args",
            "remove args and say what the model needs in the prompt",
        ),
    ],
)
def test_each_problem_names_its_field_and_fix(
    tools: ToolRegistry, change: dict[str, Any], field: str, problem: str, fix: str
) -> None:
    found = only(problems_of(tools, {**AGENT, **change}))
    assert found["step"] == "research"
    assert found["field"] == field
    assert problem in found["problem"]
    assert fix in found["fix"]
    assert found["problem"].endswith(found["fix"])  # the one-line message says the fix too


def test_a_tool_the_workflow_does_not_allow(tools: ToolRegistry) -> None:
    allowed = frozenset({"fetch_profile", "send_email"})
    found = only(problems_of(tools, AGENT, allowed_tools=allowed))
    assert found["field"] == "tools"
    assert "tool 'charge' is not allowed in this workflow" in found["problem"]
    assert found["fix"] == "remove it from tools, or add it to the workflow's allowed_tools"


def test_an_agent_step_offered_no_tools(tools: ToolRegistry) -> None:
    # The spec refuses it (above); a spec built around its validation is still caught.
    spec = AgentSpec.model_construct(prompt="p", tools=[])
    plan = bind(tools, AGENT)
    step = plan.steps[0].model_copy(update={"agent": spec})
    found = only(plan_problems(plan.model_copy(update={"steps": [step]}), tools))
    assert (found["field"], found["fix"]) == ("tools", "list the tools it may call")


def test_an_agent_step_without_its_spec(tools: ToolRegistry) -> None:
    plan = bind(tools, AGENT)
    step = plan.steps[0].model_copy(update={"agent": None})
    found = only(plan_problems(plan.model_copy(update={"steps": [step]}), tools))
    assert (found["field"], found["fix"]) == (
        "prompt",
        "write prompt: and tools: [...] on the step",
    )


def test_references_in_the_prompt_are_checked_like_an_llm_steps(tools: ToolRegistry) -> None:
    fetch = {"id": "fetch", "tool": "fetch_profile", "args": {"user_id": "${input.user_id}"}}
    agent = {**AGENT, "prompt": "Write to ${steps.fetch.output.emial}", "approve": {}}
    found = only(problems_of(tools, fetch, agent))
    assert (found["step"], found["reference"], found["suggestion"]) == (
        "research",
        "steps.fetch.output.emial",
        "email",
    )
    agent = {**agent, "instructions": "See ${steps.fech.output.email}", "prompt": "p"}
    problems = problems_of(tools, fetch, agent)
    assert any("names unknown step 'fech'; did you mean `fetch`?" in p["problem"] for p in problems)


def test_approve_conditions_on_earlier_outputs_are_checked(tools: ToolRegistry) -> None:
    fetch = {"id": "fetch", "tool": "fetch_profile", "args": {"user_id": "${input.user_id}"}}
    agent = {**AGENT, "approve": {"charge": {"steps.fetch.output.emial": {"exists": True}}}}
    found = only(problems_of(tools, fetch, agent))
    assert found["field"] == "approve.charge"
    assert found["fix"] == "write steps.fetch.output.email"
    assert "the output of step fetch (tool 'fetch_profile' returns Profile)" in found["problem"]


def test_later_references_are_checked_against_the_agents_output_schema(
    tools: ToolRegistry,
) -> None:
    bad = {**AFTER, "args": {"to": "x", "body": "${steps.research.output.vendr}"}}
    found = only(problems_of(tools, AGENT, bad))
    assert (found["step"], found["suggestion"]) == ("mail", "vendor")
    assert (
        "the output of step research (schema 'Report') has no field 'vendr'" in (found["problem"])
    )
    # Its own checks read its output too.
    checked = {**AGENT, "success": {"output.amont": {"gt": 0}}}
    assert only(problems_of(tools, checked))["suggestion"] == "amount"


def test_an_agent_without_an_output_schema_answers_text(tools: ToolRegistry) -> None:
    agent = {key: value for key, value in AGENT.items() if key != "output"}
    good = {**AFTER, "args": {"to": "x", "body": "${steps.research.output.text}"}}
    assert [s.id for s in bind(tools, agent, good).steps] == ["research", "mail"]
    bad = {**AFTER, "args": {"to": "x", "body": "${steps.research.output.vendor}"}}
    found = only(problems_of(tools, agent, bad))
    assert 'an agent step without an output schema answers {"text": ...}' in found["problem"]


# -- what a job pins ------------------------------------------------------------------------------


def test_a_plan_names_every_tool_its_agents_may_call(tools: ToolRegistry) -> None:
    fetch = {"id": "fetch", "tool": "fetch_profile", "args": {"user_id": "${input.user_id}"}}
    plan = bind(tools, fetch, AGENT, AFTER)
    assert plan.tool_names() == ["fetch_profile", "send_email", "charge"]
    hashes = tools.schema_hashes(plan.tool_names())
    assert hashes == {
        name: spec.schema_hash
        for name in ("fetch_profile", "send_email", "charge")
        if (spec := tools.get(name)) is not None
    }
    assert tools.schema_hashes(["nope"]) == {}


async def test_a_submitted_job_pins_the_schemas_of_its_agents_tools(tmp_path: Path) -> None:
    app = App(Settings(database_url=f"sqlite:///{tmp_path}/t.db", embedder="none"))
    app.route("large", ["scripted:m"])

    class LookupArgs(BaseModel):
        user_id: str

    @app.tool(timeout=5, idempotent=True)
    async def lookup(args: LookupArgs, ctx: ToolContext) -> Report:
        return Report(vendor="v", amount=1.0, confidence=1.0)

    @app.tool(timeout=5, idempotent=True)
    async def other(args: LookupArgs, ctx: ToolContext) -> Report:
        return Report(vendor="v", amount=1.0, confidence=1.0)

    agent = {"id": "a", "kind": "agent", "prompt": "Look up ${input.user_id}", "tools": ["lookup"]}
    app.workflow("w", input=Input, templates=[{"name": "t", "steps": [agent]}])
    store = app.store()
    await store.migrate()
    try:
        submitted = await app.client().submit("w", INPUT)
    finally:
        await store.close()
    spec = app.tools.get("lookup")
    assert spec is not None
    assert submitted.job.tool_schema_hashes == {"lookup": spec.schema_hash}


# -- the CLI's views ------------------------------------------------------------------------------


def test_plan_show_lists_an_agent_steps_tools_turns_and_gated_calls(tools: ToolRegistry) -> None:
    from stalwart.cli.plans import step_row

    plan = bind(tools, AGENT, AFTER)
    rows = [step_row(s.model_dump(mode="json")) for s in plan.steps]
    assert rows[0] == (
        "research",
        "agent: fetch_profile, send_email, charge (max 6 turns, 32 calls) -> Report",
        "-",
        "yes",
        "calls of send_email, charge",
        "-",
        plan.steps[0].retry.max_attempts,
    )
    assert rows[1][:2] == ("mail", "send_email") and rows[1][4] == "true"


def test_a_misspelt_agent_field_is_named_with_the_field_meant() -> None:
    data = {"name": "t", "steps": [{**AGENT, "max_turn": 3}]}
    with pytest.raises(TemplateError) as info:
        template_from_data(data)
    assert "step research has no field `max_turn`; did you mean `max_turns`?" in info.value.message
