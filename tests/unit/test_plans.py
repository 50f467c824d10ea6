"""Plan templates and plans: dependencies, plan hash, template hash."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from stalwart.domain.plans import Plan, PlanStep, StepSpec, Template
from stalwart.domain.retry import RetryPolicy


def plan_step(step_id: str, **overrides: Any) -> PlanStep:
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


def make_plan(*steps: PlanStep, **overrides: Any) -> Plan:
    fields: dict[str, Any] = {"template_name": "t", "template_hash": "h", "steps": list(steps)}
    fields.update(overrides)
    return Plan(**fields)


# -- StepSpec.dependencies -------------------------------------------------------------------


def test_dependencies_are_inferred_from_refs() -> None:
    spec = StepSpec(
        id="send",
        tool="send_email",
        args={
            "to": "${steps.fetch.output.email}",
            "body": "Hi ${steps.greet.output.text}, ${input.name}",
            "cc": ["${steps.fetch.output.cc}"],
        },
    )
    assert spec.dependencies() == ["fetch", "greet"]


def test_declared_dependencies_come_first_and_are_not_repeated() -> None:
    spec = StepSpec(
        id="c",
        tool="x",
        depends_on=["b", "a"],
        args={"x": "${steps.a.output}", "y": "${steps.z.output.v}"},
    )
    assert spec.dependencies() == ["b", "a", "z"]


def test_input_refs_and_escapes_are_not_dependencies() -> None:
    spec = StepSpec(id="s", tool="x", args={"a": "${input.x}", "b": "$${steps.q.output}"})
    assert spec.dependencies() == []


@pytest.mark.parametrize("bad_id", ["", "1abc", "has space", "a.b", "x" * 65])
def test_step_ids_are_names(bad_id: str) -> None:
    with pytest.raises(ValidationError):
        StepSpec(id=bad_id, tool="x")


def test_step_spec_forbids_unknown_fields() -> None:
    with pytest.raises(ValidationError, match="timout_seconds"):
        StepSpec(id="s", tool="x", timout_seconds=3)  # type: ignore[call-arg]


def test_template_needs_a_step() -> None:
    with pytest.raises(ValidationError):
        Template(name="t", steps=[])


# -- Plan ------------------------------------------------------------------------------------------


def test_plan_hash_is_stable_under_step_reordering() -> None:
    a, b, c = plan_step("a"), plan_step("b", depends_on=["a"]), plan_step("c")
    assert make_plan(a, b, c).plan_hash() == make_plan(c, b, a).plan_hash()


def test_plan_hash_ignores_version_notes_and_template_identity() -> None:
    steps = [plan_step("a"), plan_step("b")]
    base = make_plan(*steps)
    assert base.plan_hash() == make_plan(*steps, version=7).plan_hash()
    assert base.plan_hash() == make_plan(*steps, notes={"feedback": {"why": "x"}}).plan_hash()
    assert base.plan_hash() == make_plan(*steps, template_hash="other").plan_hash()


@pytest.mark.parametrize(
    "change",
    [
        {"args": {"user_id": "u-2"}},
        {"args": {"user_id": "u-1", "limit": 5}},
        {"tool": "other_tool"},
        {"depends_on": ["a"]},
        {"timeout_seconds": 11.0},
        {"retry": RetryPolicy(max_attempts=4)},
        {"requires_approval": True},
        {"critical": False},
    ],
)
def test_plan_hash_changes_when_a_step_changes(change: dict[str, Any]) -> None:
    base = make_plan(plan_step("a"), plan_step("b"))
    changed = make_plan(plan_step("a"), plan_step("b", **change))
    assert base.plan_hash() != changed.plan_hash()


def test_plan_hash_changes_when_a_step_is_added_or_renamed() -> None:
    base = make_plan(plan_step("a"))
    assert base.plan_hash() != make_plan(plan_step("a"), plan_step("b")).plan_hash()
    assert base.plan_hash() != make_plan(plan_step("z")).plan_hash()


def test_plan_hash_is_a_sha256_hex() -> None:
    digest = make_plan(plan_step("a")).plan_hash()
    assert len(digest) == 64
    int(digest, 16)


def test_spec_hash_tracks_the_step() -> None:
    assert plan_step("a").spec_hash() == plan_step("a").spec_hash()
    assert plan_step("a").spec_hash() != plan_step("a", args={"user_id": "u-9"}).spec_hash()


def test_plan_step_lookup_and_dependents() -> None:
    plan = make_plan(
        plan_step("a"), plan_step("b", depends_on=["a"]), plan_step("c", depends_on=["a", "b"])
    )
    assert plan.step("b").depends_on == ["a"]
    with pytest.raises(KeyError):
        plan.step("nope")
    assert plan.dependents() == {"a": ["b", "c"], "b": ["c"], "c": []}


def test_plan_is_frozen() -> None:
    plan = make_plan(plan_step("a"))
    with pytest.raises(ValidationError):
        plan.version = 2  # type: ignore[misc]


# -- Template.template_hash ------------------------------------------------------------------------


def _template(**overrides: Any) -> Template:
    fields: dict[str, Any] = {
        "name": "onboard",
        "steps": [
            StepSpec(id="fetch", tool="fetch_profile", args={"user_id": "${input.user_id}"}),
            StepSpec(id="send", tool="send_email", args={"to": "${steps.fetch.output.email}"}),
        ],
    }
    fields.update(overrides)
    return Template(**fields)


def test_template_hash_is_deterministic() -> None:
    assert _template().template_hash() == _template().template_hash()
    assert len(_template().template_hash()) == 64


def test_template_hash_is_independent_of_dict_key_order() -> None:
    one = Template.model_validate(
        {"name": "t", "steps": [{"id": "a", "tool": "x", "args": {"p": 1, "q": 2}}]}
    )
    two = Template.model_validate(
        {"steps": [{"args": {"q": 2, "p": 1}, "tool": "x", "id": "a"}], "name": "t"}
    )
    assert one.template_hash() == two.template_hash()


@pytest.mark.parametrize(
    "change",
    [
        {"version": "2"},
        {"description": "changed"},
        {"when": {"input.amount": {"gt": 1}}},
        {"name": "other"},
        {"steps": [StepSpec(id="fetch", tool="fetch_profile", args={"user_id": "u"})]},
    ],
)
def test_template_hash_covers_everything_reviewed(change: dict[str, Any]) -> None:
    assert _template().template_hash() != _template(**change).template_hash()
