"""The template planner: selection by `when`, replans, binding, defaults, approval."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel

from stalwart.domain.plans import Template
from stalwart.domain.refs import find_refs, resolve
from stalwart.domain.retry import RetryPolicy
from stalwart.errors import PlanValidationError
from stalwart.planning.planner import TemplatePlanner
from stalwart.planning.validation import PlanLimits
from stalwart.planning.workflows import ApprovalPolicy, Workflow
from stalwart.tools.registry import ToolRegistry


class OrderInput(BaseModel):
    user_id: str
    amount: float = 0
    name: str = ""


def tpl(name: str, steps: list[dict[str, Any]], when: dict[str, Any] | None = None) -> Template:
    return Template.model_validate({"name": name, "when": when, "steps": steps})


FETCH = {"id": "fetch", "tool": "fetch_profile", "args": {"user_id": "${input.user_id}"}}
GREET = {
    "id": "greet",
    "tool": "send_email",
    "args": {"to": "${steps.fetch.output.email}", "body": "Hello ${input.name}"},
}
CHARGE = {
    "id": "pay",
    "tool": "charge",
    "args": {"amount": "${input.amount}"},
    "timeout_seconds": 20,
    "depends_on": ["fetch"],
}

BIG = tpl("big", [FETCH, CHARGE, GREET], when={"input.amount": {"gt": 1000}})
MEDIUM = tpl("medium", [FETCH, CHARGE], when={"input.amount": {"gt": 10}})
FALLBACK = tpl("fallback", [FETCH])


def workflow(*templates: Template, **overrides: Any) -> Workflow:
    fields: dict[str, Any] = {"name": "orders", "input_model": OrderInput, "templates": templates}
    fields.update(overrides)
    return Workflow(**fields)


@pytest.fixture
def planner(tools: ToolRegistry) -> TemplatePlanner:
    return TemplatePlanner(tools)


INPUT = {"user_id": "u-7", "amount": 5000.0, "name": "Ann"}


# -- selection -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("amount", "template"), [(5000.0, "big"), (50.0, "medium"), (10.0, "fallback"), (0, "fallback")]
)
def test_first_template_whose_when_holds(
    planner: TemplatePlanner, amount: float, template: str
) -> None:
    plan = planner.plan(workflow(BIG, MEDIUM, FALLBACK), {**INPUT, "amount": amount})
    assert plan.template_name == template
    expected = {"big": BIG, "medium": MEDIUM, "fallback": FALLBACK}[template]
    assert plan.template_hash == expected.template_hash()
    assert [s.id for s in plan.steps] == [s.id for s in expected.steps]


def test_no_matching_template(planner: TemplatePlanner) -> None:
    with pytest.raises(PlanValidationError) as info:
        planner.plan(workflow(BIG, MEDIUM), {**INPUT, "amount": 1})
    problem = info.value.problems[0]
    assert len(info.value.problems) == 1
    assert problem["step"] == ""
    assert "no template of workflow 'orders' matches" in problem["problem"]
    assert "big, medium" in problem["problem"]


def test_is_deterministic(planner: TemplatePlanner) -> None:
    wf = workflow(BIG, FALLBACK)
    assert planner.plan(wf, INPUT) == planner.plan(wf, INPUT)


def test_tried_hashes_pick_the_next_template(planner: TemplatePlanner) -> None:
    wf = workflow(BIG, MEDIUM, FALLBACK)
    first = planner.plan(wf, INPUT)
    second = planner.plan(wf, INPUT, version=2, tried_hashes=frozenset({first.plan_hash()}))
    assert (first.template_name, second.template_name) == ("big", "medium")
    assert second.version == 2
    third = planner.plan(
        wf, INPUT, version=3, tried_hashes=frozenset({first.plan_hash(), second.plan_hash()})
    )
    assert third.template_name == "fallback"


def test_repeated_plan_when_nothing_new(planner: TemplatePlanner) -> None:
    wf = workflow(BIG, FALLBACK)
    first = planner.plan(wf, INPUT)
    second = planner.plan(wf, INPUT, tried_hashes=frozenset({first.plan_hash()}))
    tried = frozenset({first.plan_hash(), second.plan_hash()})
    assert len(tried) == 2
    again = planner.plan(wf, INPUT, version=3, tried_hashes=tried)
    assert again.template_name == "big"  # the first candidate, repeated
    assert again.plan_hash() in tried
    assert again.version == 3


def test_tried_hash_of_another_input_does_not_count(planner: TemplatePlanner) -> None:
    wf = workflow(BIG, FALLBACK)
    other = planner.plan(wf, {**INPUT, "user_id": "someone-else"})
    assert (
        planner.plan(wf, INPUT, tried_hashes=frozenset({other.plan_hash()})).template_name == "big"
    )


def test_feedback_is_kept_in_notes_but_not_in_the_hash(planner: TemplatePlanner) -> None:
    wf = workflow(FALLBACK)
    plain = planner.plan(wf, INPUT)
    with_feedback = planner.plan(wf, INPUT, version=2, feedback={"reviewer": "too risky"})
    assert plain.notes == {}
    assert with_feedback.notes == {"feedback": {"reviewer": "too risky"}}
    assert plain.plan_hash() == with_feedback.plan_hash()


# -- binding ---------------------------------------------------------------------------------------


def test_input_refs_are_bound_and_step_refs_stay(planner: TemplatePlanner) -> None:
    plan = planner.plan(workflow(BIG), INPUT)
    assert plan.step("fetch").args == {"user_id": "u-7"}
    assert plan.step("pay").args == {"amount": 5000.0}  # a whole-string ref keeps its type
    assert plan.step("greet").args == {"to": "${steps.fetch.output.email}", "body": "Hello Ann"}


def test_dependencies_are_explicit_in_the_plan(planner: TemplatePlanner) -> None:
    plan = planner.plan(workflow(BIG), INPUT)
    assert plan.step("fetch").depends_on == []
    assert plan.step("pay").depends_on == ["fetch"]
    assert plan.step("greet").depends_on == ["fetch"]  # inferred from its reference


def test_input_text_that_looks_like_a_reference_stays_text(planner: TemplatePlanner) -> None:
    name = "${HOME} and ${steps.pay.output} and $${x}"
    plan = planner.plan(workflow(BIG), {**INPUT, "name": name})  # no validation problem
    greet = plan.step("greet")
    assert greet.depends_on == ["fetch"]
    assert find_refs(greet.args) == ["steps.fetch.output.email"]
    context = {"steps": {"fetch": {"output": {"email": "a@b.c"}}, "pay": {"output": "paid"}}}
    assert resolve(greet.args, context) == {"to": "a@b.c", "body": f"Hello {name}"}


def test_missing_input_field_is_a_problem_of_the_step(planner: TemplatePlanner) -> None:
    wf = workflow(
        tpl("t", [{"id": "fetch", "tool": "fetch_profile", "args": {"user_id": "${input.who}"}}])
    )
    with pytest.raises(PlanValidationError) as info:
        planner.plan(wf, INPUT)
    assert info.value.problems
    assert all(p["step"] == "fetch" for p in info.value.problems)
    assert any("input.who" in p["problem"] for p in info.value.problems)


def test_invalid_bound_plan_is_refused(planner: TemplatePlanner) -> None:
    wf = workflow(
        tpl("t", [{"id": "fetch", "tool": "fetch_profile", "args": {"limit": "${input.name}"}}])
    )
    with pytest.raises(PlanValidationError) as info:
        planner.plan(wf, INPUT)
    texts = [p["problem"] for p in info.value.problems]
    assert any("missing required argument 'user_id'" in t for t in texts)
    assert any("argument 'limit'" in t for t in texts)  # "Ann" is not an int, checked once bound


def test_allowed_tools_of_the_workflow_are_enforced(planner: TemplatePlanner) -> None:
    wf = workflow(BIG, allowed_tools=frozenset({"fetch_profile", "charge"}))
    with pytest.raises(PlanValidationError) as info:
        planner.plan(wf, INPUT)
    assert [p["step"] for p in info.value.problems] == ["greet"]


def test_limits_are_applied(tools: ToolRegistry) -> None:
    with pytest.raises(PlanValidationError, match="the cap is 2"):
        TemplatePlanner(tools, limits=PlanLimits(max_steps=2)).plan(workflow(BIG), INPUT)


# -- defaults from the tools -----------------------------------------------------------------------


def test_tool_defaults_are_filled(planner: TemplatePlanner) -> None:
    plan = planner.plan(workflow(BIG), INPUT)
    fetch, pay, greet = plan.step("fetch"), plan.step("pay"), plan.step("greet")
    assert fetch.timeout_seconds == 10  # the tool's timeout
    assert greet.timeout_seconds == 5
    assert pay.timeout_seconds == 20  # the step's own
    assert fetch.retry == RetryPolicy()  # no policy on tool or step: the default
    assert pay.retry == RetryPolicy(max_attempts=5, base_seconds=2, cap_seconds=30)  # the tool's
    assert (fetch.idempotent, fetch.has_reconcile) == (True, False)
    assert (pay.idempotent, pay.has_reconcile) == (False, True)
    assert (greet.idempotent, greet.has_reconcile) == (False, False)


def test_step_settings_override_tool_defaults(planner: TemplatePlanner) -> None:
    wf = workflow(
        tpl(
            "t",
            [
                {
                    **FETCH,
                    "timeout_seconds": 2.5,
                    "retry": {"max_attempts": 7, "base_seconds": 0.5},
                    "critical": False,
                    "description": "get it",
                }
            ],
        )
    )
    fetch = planner.plan(wf, INPUT).step("fetch")
    assert fetch.timeout_seconds == 2.5
    assert fetch.retry == RetryPolicy(max_attempts=7, base_seconds=0.5)
    assert fetch.critical is False
    assert fetch.description == "get it"


def test_step_without_timeout_on_a_tool_without_timeout_is_refused(
    planner: TemplatePlanner,
) -> None:
    wf = workflow(tpl("t", [{"id": "pay", "tool": "charge", "args": {"amount": 3}}]))
    with pytest.raises(PlanValidationError) as info:
        planner.plan(wf, INPUT)
    assert [(p["step"], "no timeout" in p["problem"]) for p in info.value.problems] == [
        ("pay", True)
    ]


# -- approval --------------------------------------------------------------------------------------


def test_high_risk_tool_requires_approval_under_the_default_policy(
    planner: TemplatePlanner,
) -> None:
    plan = planner.plan(workflow(BIG), INPUT)
    assert plan.step("greet").requires_approval is True  # send_email: high
    assert plan.step("pay").requires_approval is False  # charge: medium
    assert plan.step("fetch").requires_approval is False  # fetch_profile: low


def test_approval_policy_decides_which_risks_need_approval(planner: TemplatePlanner) -> None:
    strict = planner.plan(
        workflow(BIG, approval=ApprovalPolicy(risk_levels=("medium", "high"))), INPUT
    )
    assert strict.step("pay").requires_approval is True
    assert strict.step("fetch").requires_approval is False
    lax = planner.plan(workflow(BIG, approval=ApprovalPolicy(risk_levels=())), INPUT)
    assert lax.step("greet").requires_approval is False


def test_declared_approval_is_kept(planner: TemplatePlanner) -> None:
    condition = {"input.amount": {"gt": 100}}
    wf = workflow(
        tpl("t", [{**FETCH, "requires_approval": condition}, {**CHARGE, "requires_approval": True}])
    )
    plan = planner.plan(wf, INPUT)
    assert plan.step("fetch").requires_approval == condition
    assert plan.step("pay").requires_approval is True


def test_human_step_always_requires_approval_and_runs_once(planner: TemplatePlanner) -> None:
    wf = workflow(
        tpl(
            "t",
            [
                FETCH,
                {
                    "id": "ok",
                    "kind": "human",
                    "depends_on": ["fetch"],
                    "retry": {"max_attempts": 5},
                    "review": {"reason": "check it", "sla_seconds": 60},
                },
            ],
        )
    )
    ok = planner.plan(wf, INPUT).step("ok")
    assert ok.requires_approval is True
    assert ok.retry.max_attempts == 1
    assert ok.review is not None and ok.review.reason == "check it"
    assert ok.tool is None


def test_an_uncertain_output_gates_only_its_first_consumers_and_llm_steps_retry() -> None:
    from examples.app import build_app

    from stalwart.settings import Settings

    app = build_app(Settings())
    plan = app.planner().plan(app.workflows["invoice"], {"invoice_id": "INV-1-20.00"})
    gated = {s.id: [t.reason for t in s.review_if] for s in plan.steps}
    assert gated["validate"] == [
        "the confidence of step extract is below 0.8",
        "step extract raised risk flags",
    ]
    assert gated["pay"] == []  # it runs after validate: the reviewer saw the extraction once
    extract = plan.step("extract")
    assert extract.llm is not None and extract.llm.output == "InvoiceExtraction"
    assert extract.retry.max_attempts > 1  # a model outage is retried like a tool's


# -- references checked when a plan is made and when a workflow is registered -----------------


def test_a_plan_with_a_misspelt_output_reference_is_refused(planner: TemplatePlanner) -> None:
    typo = {**GREET, "args": {"to": "${steps.fetch.output.emali}", "body": "hi"}}
    with pytest.raises(PlanValidationError) as info:
        planner.plan(workflow(tpl("t", [FETCH, typo])), INPUT)
    (problem,) = info.value.problems
    assert (problem["step"], problem["reference"], problem["suggestion"]) == (
        "greet",
        "steps.fetch.output.emali",
        "email",
    )
    assert "greet: reference ${steps.fetch.output.emali}" in info.value.message


def test_a_workflow_whose_templates_misspell_an_input_field_is_refused() -> None:
    from stalwart import App, Settings
    from stalwart.errors import WorkflowDefinitionError

    app = App(Settings(database_url="sqlite:///:memory:", embedder="none"))
    typo = {**FETCH, "args": {"user_id": "${input.usr_id}"}}
    with pytest.raises(WorkflowDefinitionError) as info:
        app.workflow("orders", input=OrderInput, templates=[tpl("t", [typo])])
    message = info.value.message
    assert message.startswith(
        "workflow 'orders': template t, step fetch: reference ${input.usr_id}"
    )
    assert "did you mean `user_id`?" in message
    assert info.value.problems[0]["suggestion"] == "user_id"
    assert "orders" not in app.workflows
    app.workflow("orders", input=OrderInput, templates=[tpl("t", [FETCH, GREET])])  # valid: fine
