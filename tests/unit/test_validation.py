"""Plan validation: every kind of problem, each reported with its step id."""

from __future__ import annotations

import logging
from typing import Annotated, Any

import pytest
from pydantic import BaseModel, ConfigDict, WithJsonSchema

from stalwart.domain.plans import Check, LlmSpec, Plan, PlanStep, Template
from stalwart.domain.retry import RetryPolicy
from stalwart.errors import PlanValidationError
from stalwart.planning.validation import (
    PlanLimits,
    plan_problems,
    template_problems,
    validate_plan,
)
from stalwart.tools.context import ToolContext
from stalwart.tools.registry import ToolRegistry


def st(step_id: str, **overrides: Any) -> PlanStep:
    """A valid fetch_profile step, changed by `overrides`."""
    fields: dict[str, Any] = {
        "id": step_id,
        "kind": "tool",
        "tool": "fetch_profile",
        "args": {"user_id": "u-1"},
        "depends_on": [],
        "timeout_seconds": 10.0,
        "retry": RetryPolicy(),
        "requires_approval": False,
        "review": None,
        "critical": True,
        "success": None,
    }
    fields.update(overrides)
    return PlanStep(**fields)


def plan(*steps: PlanStep) -> Plan:
    return Plan(template_name="t", template_hash="h", steps=list(steps))


def only_problem(problems: list[dict[str, str]]) -> dict[str, str]:
    assert len(problems) == 1, problems
    return problems[0]


def test_a_valid_plan_has_no_problems(tools: ToolRegistry) -> None:
    good = plan(
        st("fetch", args={"user_id": "u-1", "limit": 3}),
        st(
            "send",
            tool="send_email",
            args={"to": "${steps.fetch.output.email}", "body": "hi ${steps.fetch.output.user_id}"},
            depends_on=["fetch"],
            requires_approval={"steps.fetch.output.email": {"exists": True}},
            success={"output.message_id": {"ne": ""}},
        ),
        st("ok", kind="human", tool=None, args={}, timeout_seconds=None),
    )
    assert plan_problems(good, tools) == []
    validate_plan(good, tools)  # does not raise
    validate_plan(good, tools, allowed_tools=frozenset({"fetch_profile", "send_email"}))


def test_empty_plan(tools: ToolRegistry) -> None:
    problem = only_problem(plan_problems(plan(), tools))
    assert problem == {"step": "", "problem": "the plan has no steps"}


def test_duplicate_step_ids(tools: ToolRegistry) -> None:
    problem = only_problem(plan_problems(plan(st("a"), st("b"), st("a")), tools))
    assert problem["step"] == "a"
    assert "more than once" in problem["problem"]


def test_step_cap(tools: ToolRegistry) -> None:
    steps = [st(f"s{i}") for i in range(3)]
    assert plan_problems(plan(*steps), tools, limits=PlanLimits(max_steps=3)) == []
    problem = only_problem(plan_problems(plan(*steps), tools, limits=PlanLimits(max_steps=2)))
    assert problem["step"] == ""
    assert "3 steps; the cap is 2" in problem["problem"]


def test_unknown_tool(tools: ToolRegistry) -> None:
    problem = only_problem(plan_problems(plan(st("a"), st("b", tool="nope")), tools))
    assert problem["step"] == "b"
    assert "unknown tool 'nope'" in problem["problem"]
    assert "charge, fetch_profile, send_email" in problem["problem"]


def test_unknown_tool_with_no_tools_registered() -> None:
    problem = only_problem(plan_problems(plan(st("a")), ToolRegistry()))
    assert "none registered" in problem["problem"]


def test_disallowed_tool(tools: ToolRegistry) -> None:
    p = plan(st("a"), st("b", tool="send_email", args={"to": "x", "body": "y"}))
    problem = only_problem(plan_problems(p, tools, allowed_tools=frozenset({"fetch_profile"})))
    assert problem["step"] == "b"
    assert "'send_email' is not allowed" in problem["problem"]
    assert plan_problems(p, tools) == []  # None: every registered tool is allowed


def test_llm_step(tools: ToolRegistry) -> None:
    problem = only_problem(plan_problems(plan(st("think", kind="llm", tool=None)), tools))
    assert problem["step"] == "think"
    assert "needs a prompt" in problem["problem"]


def test_human_step_with_a_tool(tools: ToolRegistry) -> None:
    p = plan(st("ask", kind="human", args={}, timeout_seconds=None))
    problem = only_problem(plan_problems(p, tools))
    assert problem["step"] == "ask"
    assert "human step does not call a tool" in problem["problem"]


def test_tool_step_without_a_tool_name(tools: ToolRegistry) -> None:
    problem = only_problem(plan_problems(plan(st("a", tool=None)), tools))
    assert problem["step"] == "a"
    assert "must name its tool" in problem["problem"]


def test_dangling_depends_on(tools: ToolRegistry) -> None:
    problem = only_problem(plan_problems(plan(st("a"), st("b", depends_on=["ghost"])), tools))
    assert problem["step"] == "b"
    assert "unknown step 'ghost'" in problem["problem"]


def test_self_dependency(tools: ToolRegistry) -> None:
    problem = only_problem(plan_problems(plan(st("a", depends_on=["a"])), tools))
    assert problem["step"] == "a"
    assert "depends on itself" in problem["problem"]


def test_dangling_reference(tools: ToolRegistry) -> None:
    p = plan(st("a"), st("b", args={"user_id": "${steps.ghost.output.id}"}))
    problem = only_problem(plan_problems(p, tools))
    assert problem["step"] == "b"
    assert "${steps.ghost.output.id}" in problem["problem"]
    assert "unknown step 'ghost'" in problem["problem"]


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        ("${steps.a.result.id}", "write steps.<id>.output"),
        ("${steps.a}", "write steps.<id>.output"),
        ("${env.HOME}", "references start with input. or steps.<id>."),
        ("${output.id}", "references start with input. or steps.<id>."),
    ],
)
def test_malformed_reference(tools: ToolRegistry, ref: str, expected: str) -> None:
    p = plan(st("a"), st("b", args={"user_id": ref}, depends_on=["a"]))
    problem = only_problem(plan_problems(p, tools))
    assert problem["step"] == "b"
    assert expected in problem["problem"]
    assert ref in problem["problem"]


def test_reference_to_own_output(tools: ToolRegistry) -> None:
    problem = only_problem(
        plan_problems(plan(st("a", args={"user_id": "${steps.a.output}"})), tools)
    )
    assert problem["step"] == "a"
    assert "own output" in problem["problem"]


def test_unbound_input_reference(tools: ToolRegistry) -> None:
    problem = only_problem(plan_problems(plan(st("a", args={"user_id": "${input.user}"})), tools))
    assert problem["step"] == "a"
    assert "${input.user} was not bound" in problem["problem"]


def test_missing_timeout(tools: ToolRegistry) -> None:
    problem = only_problem(plan_problems(plan(st("a", timeout_seconds=None)), tools))
    assert problem["step"] == "a"
    assert "no timeout" in problem["problem"]


def test_human_steps_need_no_timeout(tools: ToolRegistry) -> None:
    assert plan_problems(plan(st("h", kind="human", tool=None, timeout_seconds=None)), tools) == []


def test_unbounded_retries(tools: ToolRegistry) -> None:
    ok = plan(st("a", retry=RetryPolicy(max_attempts=20)))
    assert plan_problems(ok, tools) == []
    problem = only_problem(plan_problems(plan(st("a", retry=RetryPolicy(max_attempts=21))), tools))
    assert problem["step"] == "a"
    assert "max_attempts is 21" in problem["problem"]
    assert "at most 20" in problem["problem"]
    limits = PlanLimits(max_attempts=3)
    assert (
        len(plan_problems(plan(st("a", retry=RetryPolicy(max_attempts=4))), tools, limits=limits))
        == 1
    )


def test_retry_cap_over_the_limit(tools: ToolRegistry) -> None:
    assert plan_problems(plan(st("a", retry=RetryPolicy(cap_seconds=3600))), tools) == []
    problem = only_problem(plan_problems(plan(st("a", retry=RetryPolicy(cap_seconds=7200))), tools))
    assert problem["step"] == "a"
    assert "cap_seconds is 7200; at most 3600" in problem["problem"]


def test_unknown_argument(tools: ToolRegistry) -> None:
    problem = only_problem(plan_problems(plan(st("a", args={"user_id": "u", "colour": 1})), tools))
    assert problem["step"] == "a"
    assert "unknown argument 'colour'" in problem["problem"]
    assert "accepts: user_id, limit" in problem["problem"]


def test_missing_required_argument(tools: ToolRegistry) -> None:
    problem = only_problem(plan_problems(plan(st("a", args={"limit": 3})), tools))
    assert problem["step"] == "a"
    assert "missing required argument 'user_id'" in problem["problem"]


@pytest.mark.parametrize("value", ["lots", [1], {"n": 1}, 2.5])
def test_static_argument_of_the_wrong_type(tools: ToolRegistry, value: Any) -> None:
    problem = only_problem(
        plan_problems(plan(st("a", args={"user_id": "u", "limit": value})), tools)
    )
    assert problem["step"] == "a"
    assert "argument 'limit' of tool 'fetch_profile' is not valid" in problem["problem"]


def test_referenced_arguments_are_checked_at_run_time_not_statically(tools: ToolRegistry) -> None:
    p = plan(
        st("a"),
        st("b", args={"user_id": "u", "limit": "${steps.a.output.email}"}, depends_on=["a"]),
    )
    assert plan_problems(p, tools) == []


def test_static_arguments_are_coerced_like_the_tool_would(tools: ToolRegistry) -> None:
    assert plan_problems(plan(st("a", args={"user_id": "u", "limit": "7"})), tools) == []


def test_two_step_cycle(tools: ToolRegistry) -> None:
    p = plan(st("a", depends_on=["b"]), st("b", depends_on=["a"]))
    problem = only_problem(plan_problems(p, tools))
    assert problem["step"] in {"a", "b"}
    assert problem["problem"] == "dependency cycle: a -> b -> a"


def test_three_step_cycle(tools: ToolRegistry) -> None:
    p = plan(
        st("start"),
        st("x", depends_on=["start", "z"]),
        st("y", depends_on=["x"]),
        st("z", depends_on=["y"]),
    )
    problem = only_problem(plan_problems(p, tools))
    assert problem["step"] in {"x", "y", "z"}
    assert problem["problem"] == "dependency cycle: x -> z -> y -> x"


def test_cycle_through_references(tools: ToolRegistry) -> None:
    """A bound plan's depends_on includes the steps its refs name; a ref loop is a cycle."""
    p = plan(
        st("a", args={"user_id": "${steps.b.output.user_id}"}, depends_on=["b"]),
        st("b", args={"user_id": "${steps.a.output.user_id}"}, depends_on=["a"]),
    )
    problem = only_problem(plan_problems(p, tools))
    assert "dependency cycle" in problem["problem"]


def test_diamond_is_not_a_cycle(tools: ToolRegistry) -> None:
    p = plan(
        st("top"),
        st("left", depends_on=["top"]),
        st("right", depends_on=["top"]),
        st("bottom", depends_on=["left", "right"]),
    )
    assert plan_problems(p, tools) == []


@pytest.mark.parametrize("field", ["requires_approval", "success"])
def test_bad_condition_operator(tools: ToolRegistry, field: str) -> None:
    p = plan(st("a", **{field: {"input.amount": {"bigger": 5}}}))
    problem = only_problem(plan_problems(p, tools))
    assert problem["step"] == "a"
    assert problem["problem"].startswith(f"{field}: condition on 'input.amount'")
    assert "bigger" in problem["problem"]


def test_every_problem_is_reported_at_once(tools: ToolRegistry) -> None:
    bad = plan(
        st("a", tool="nope"),
        st("b", timeout_seconds=None, retry=RetryPolicy(max_attempts=50)),
        st("c", args={"user_id": 5, "extra": True}, depends_on=["ghost"]),
        st("d", kind="llm", tool=None),
        st("d"),
        st("e", depends_on=["f"]),
        st("f", depends_on=["e"], args={"user_id": "${input.who}"}),
        st("g", success={"output.email": {"like": "y"}}),
    )
    expected = [
        ("d", "more than once"),
        ("a", "unknown tool 'nope'"),
        ("b", "max_attempts is 50"),
        ("b", "no timeout"),
        ("c", "unknown step 'ghost'"),
        ("c", "unknown argument 'extra'"),
        ("c", "argument 'user_id' of tool 'fetch_profile' is not valid"),
        ("d", "needs a prompt"),
        ("f", "${input.who} was not bound"),
        ("g", "success: condition on 'output.email'"),
        ("", "dependency cycle: e -> f -> e"),
    ]
    problems = plan_problems(bad, tools)
    with pytest.raises(PlanValidationError) as info:
        validate_plan(bad, tools)
    assert info.value.problems == problems
    assert len(problems) == len(expected), problems
    for step_id, text in expected:
        matches = [p for p in problems if text in p["problem"]]
        assert matches, f"no problem mentions {text!r}"
        if step_id:
            assert matches[0]["step"] == step_id
    assert all(set(p) == {"step", "problem"} for p in problems)
    assert info.value.message.startswith(f"plan has {len(problems)} problem(s): ")
    assert "a: unknown tool 'nope'" in info.value.message


# -- references checked against the known output models --------------------------------------


class Extraction(BaseModel):
    vendor: str
    amount: float
    lines: list[dict[str, Any]] = []


def test_a_reference_to_a_missing_output_field_names_the_field_meant(tools: ToolRegistry) -> None:
    p = plan(st("a"), st("b", args={"user_id": "${steps.a.output.emial}"}, depends_on=["a"]))

    problem = only_problem(plan_problems(p, tools))

    assert problem == {
        "step": "b",
        "problem": "reference ${steps.a.output.emial}: the output of step a (tool "
        "'fetch_profile' returns Profile) has no field 'emial'; did you mean `email`? "
        "(fields: user_id, email)",
        "reference": "steps.a.output.emial",
        "field": "emial",
        "suggestion": "email",
    }


def test_output_references_in_text_and_below_a_scalar_are_checked(tools: ToolRegistry) -> None:
    p = plan(
        st("a"),
        st(
            "b",
            tool="send_email",
            args={"to": "${steps.a.output.email.domain}", "body": "hi ${steps.a.output.nme}"},
            depends_on=["a"],
        ),
    )

    problems = plan_problems(p, tools)

    assert [(p["step"], p["reference"], p["field"]) for p in problems] == [
        ("b", "steps.a.output.email.domain", "domain"),
        ("b", "steps.a.output.nme", "nme"),
    ]
    assert "email of the output of step a" in problems[0]["problem"]
    assert "is a string: it has no field 'domain'" in problems[0]["problem"]


def llm(step_id: str, prompt: str, output: str | None = None) -> PlanStep:
    spec = LlmSpec(prompt=prompt, output=output)
    return st(step_id, kind="llm", tool=None, args={}, llm=spec, timeout_seconds=None)


def test_an_llm_steps_output_schema_is_known(tools: ToolRegistry) -> None:
    schemas = {"Extraction": Extraction}
    good = plan(
        llm("x", "read it", "Extraction"),
        st("b", args={"user_id": "${steps.x.output.vendor}"}, depends_on=["x"]),
        llm("y", "look at ${steps.x.output.lines.0.anything} and ${steps.x.output.amount}"),
    )
    assert plan_problems(good, tools, schemas=schemas) == []

    bad = plan(
        llm("x", "read it", "Extraction"),
        st("b", args={"user_id": "${steps.x.output.vendr}"}, depends_on=["x"]),
    )
    problem = only_problem(plan_problems(bad, tools, schemas=schemas))
    assert problem["step"] == "b" and problem["suggestion"] == "vendor"
    assert "the output of step x (schema 'Extraction') has no field 'vendr'" in problem["problem"]


def test_an_llm_step_without_a_schema_answers_text(tools: ToolRegistry) -> None:
    p = plan(llm("x", "say hi"), llm("y", "${steps.x.output.text} / ${steps.x.output.answer}"))

    problem = only_problem(plan_problems(p, tools))

    assert problem["step"] == "y" and problem["field"] == "answer"
    assert 'without an output schema answers {"text": ...}' in problem["problem"]


def test_an_output_that_is_not_known_is_not_checked(tools: ToolRegistry) -> None:
    # An unregistered schema is one problem (its registration), not one per reference.
    p = plan(
        llm("x", "read it", "Unknown"),
        st("b", args={"user_id": "${steps.x.output.whatever}"}, depends_on=["x"]),
    )
    problem = only_problem(plan_problems(p, tools))
    assert "output schema 'Unknown' is not registered" in problem["problem"]
    # An unknown tool likewise: its output is not known.
    p = plan(st("a", tool="nope"), st("b", args={"user_id": "${steps.a.output.x}"}))
    problem = only_problem(plan_problems(p, tools))
    assert problem["problem"].startswith("unknown tool 'nope'") and "reference" not in problem


def test_a_human_steps_sign_off_is_known(tools: ToolRegistry) -> None:
    ok = st("ok", kind="human", tool=None, args={}, timeout_seconds=None)
    p = plan(
        ok,
        st("b", args={"user_id": "${steps.ok.output.reviewer}"}, depends_on=["ok"]),
        st("c", args={"user_id": "${steps.ok.output.reviwer}"}, depends_on=["ok"]),
    )
    problem = only_problem(plan_problems(p, tools))
    assert (problem["step"], problem["suggestion"]) == ("c", "reviewer")


def test_condition_paths_are_checked_against_the_outputs(tools: ToolRegistry) -> None:
    p = plan(
        st("a"),
        st(
            "b",
            tool="send_email",
            args={"to": "x", "body": "y"},
            depends_on=["a"],
            requires_approval={"steps.a.output.emails": {"exists": True}},
            success={"output.message": {"ne": ""}},
            checks=[Check(expect="message_idd != ''"), Check(expect={"output.message_id": "m"})],
        ),
    )

    problems = plan_problems(p, tools)

    assert [(p["step"], p["reference"], p.get("suggestion")) for p in problems] == [
        ("b", "steps.a.output.emails", "email"),
        ("b", "output.message", "message_id"),
        ("b", "output.message_idd", "message_id"),
    ]
    assert problems[0]["problem"].startswith("condition on 'steps.a.output.emails': the output")


# -- input references checked against the workflow's input model, without an input ------------


class OrderInput(BaseModel):
    invoice_id: str
    amount: float
    customer: dict[str, Any] = {}


def test_input_references_are_checked_against_the_input_model() -> None:
    template = Template.model_validate(
        {
            "name": "t",
            "when": {"input.amout": {"gt": 10}},
            "steps": [
                {"id": "a", "tool": "x", "args": {"id": "${input.invoce_id}"}},
                {
                    "id": "b",
                    "kind": "llm",
                    "prompt": "Pay ${input.invoice_id} for ${input.customer.name}",
                    "system": "${input.amount.cents}",
                    "requires_approval": {"input.amount": {"gt": 1000}},
                },
            ],
        }
    )

    problems = template_problems(template, OrderInput)

    assert [(p["step"], p["reference"], p.get("suggestion")) for p in problems] == [
        ("", "input.amout", "amount"),
        ("a", "input.invoce_id", "invoice_id"),
        ("b", "input.amount.cents", None),
    ]
    assert problems[1]["problem"] == (
        "reference ${input.invoce_id}: the input (OrderInput) has no field 'invoce_id'; "
        "did you mean `invoice_id`? (fields: invoice_id, amount, customer)"
    )
    assert template_problems(template, None) == []
    assert template_problems(template, BaseModel) == []


def test_a_tool_output_model_with_subclasses_is_not_checked() -> None:
    class Base(BaseModel):
        id: str

    class Special(Base):
        extra: str

    async def fetch(args: Base, ctx: ToolContext) -> Base:
        return Special(id="a", extra="b")  # dumped with `extra`: valid to reference

    tools = ToolRegistry()
    tools.register(fetch, timeout=5, idempotent=True)
    p = plan(
        st("a", tool="fetch", args={"id": "x"}),
        st("b", tool="fetch", args={"id": "${steps.a.output.extra}"}, depends_on=["a"]),
    )
    assert plan_problems(p, tools) == []


class Opaque:
    """A type pydantic checks only with `arbitrary_types_allowed` (an isinstance check)."""


class RegionArgs(BaseModel):
    model_config = ConfigDict(arbitrary_types_allowed=True)

    region: Annotated[Opaque, WithJsonSchema({"type": "object"})]


class Region(BaseModel):
    name: str


async def region(args: RegionArgs, ctx: ToolContext) -> Region:
    return Region(name=str(args.region))


def test_an_argument_that_cannot_be_checked_before_run_time_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    registry = ToolRegistry()
    registry.register(region, name="region", timeout=5, idempotent=True)
    step = st("where", tool="region", args={"region": {"name": "mars"}})
    with caplog.at_level(logging.WARNING, logger="stalwart.planning"):
        # Left to run time, as before; but said, with what went wrong.
        assert plan_problems(plan(step), registry) == []
    [record] = caplog.records
    assert record.levelno == logging.WARNING and "'region'" in record.getMessage()
    assert record.exc_info is not None and "Opaque" in str(record.exc_info[1])
