"""Plan validation: every kind of problem, each reported with its step id."""

from __future__ import annotations

import logging
from typing import Annotated, Any

import pytest
from pydantic import BaseModel, ConfigDict, WithJsonSchema

from stalwart.domain.plans import Plan, PlanStep
from stalwart.domain.retry import RetryPolicy
from stalwart.errors import PlanValidationError
from stalwart.planning.validation import PlanLimits, plan_problems, validate_plan
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
        st("a"), st("b", args={"user_id": "u", "limit": "${steps.a.output.n}"}, depends_on=["a"])
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
        st("a", args={"user_id": "${steps.b.output.id}"}, depends_on=["b"]),
        st("b", args={"user_id": "${steps.a.output.id}"}, depends_on=["a"]),
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
        st("g", success={"output.x": {"like": "y"}}),
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
        ("g", "success: condition on 'output.x'"),
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
