"""Reading plan templates: errors name the file, the line and the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from stalwart.domain.plans import Template
from stalwart.errors import ConfigurationError, TemplateError
from stalwart.planning.templates import load_template, parse_template, template_from_data

GOOD = """\
name: onboarding
version: "3"
when:
  input.country: DE
steps:
  - id: fetch
    tool: fetch_profile
    args: {user_id: "${input.user_id}"}
    timeout_seconds: 5
    retry: {max_attempts: 4}
  - id: greet
    tool: send_email
    args:
      to: "${steps.fetch.output.email}"
    critical: false
"""


def test_parse_a_good_template() -> None:
    template = parse_template(GOOD)
    assert isinstance(template, Template)
    assert (template.name, template.version) == ("onboarding", "3")
    assert template.when == {"input.country": "DE"}
    fetch, greet = template.steps
    assert fetch.timeout_seconds == 5
    assert fetch.retry is not None and fetch.retry.max_attempts == 4
    assert greet.critical is False
    assert greet.dependencies() == ["fetch"]


def test_bad_yaml_names_the_source_and_line() -> None:
    text = "name: t\nsteps:\n  - id: a\n    args: {x: [1, 2}\n"
    with pytest.raises(TemplateError) as info:
        parse_template(text, source="flows/t.yaml")
    message = info.value.message
    assert message.startswith("template flows/t.yaml is not valid YAML at line 4")
    assert info.value.path == "flows/t.yaml"
    assert isinstance(info.value.__cause__, Exception)


def test_bad_indentation_names_its_line() -> None:
    text = "name: t\nsteps:\n  - id: a\n   tool: x\n"
    with pytest.raises(TemplateError, match=r"at line 4, column \d+"):
        parse_template(text)


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string", "42", ""])
def test_template_must_be_a_mapping(text: str) -> None:
    with pytest.raises(TemplateError) as info:
        parse_template(text, source="x.yaml")
    assert info.value.message == "template x.yaml must be a mapping with 'name' and 'steps'"


def test_unknown_field_is_named_by_step_id() -> None:
    text = GOOD.replace("timeout_seconds: 5", "timout_seconds: 5")
    with pytest.raises(TemplateError) as info:
        parse_template(text, source="onboarding.yaml")
    assert info.value.problems == [
        "steps[fetch].timout_seconds: step fetch has no field `timout_seconds`; "
        "did you mean `timeout_seconds`?"
    ]
    assert "steps[fetch].timout_seconds" in info.value.message
    assert "onboarding.yaml" in info.value.message


@pytest.mark.parametrize(
    ("step", "problem"),
    [
        (
            {"id": "fetch", "tool": "x", "timeout": 5},
            "steps[fetch].timeout: step fetch has no field `timeout`; "
            "did you mean `timeout_seconds`?",
        ),
        (
            {"id": "fetch", "tool": "x", "dependson": ["a"]},
            "steps[fetch].dependson: step fetch has no field `dependson`; "
            "did you mean `depends_on`?",
        ),
        (
            {"id": "ask", "kind": "llm", "prompt": "hi", "max_token": 9},
            "steps[ask].max_token: step ask has no field `max_token`; did you mean `max_tokens`?",
        ),
        (
            {"id": "fetch", "tool": "x", "retry": {"max_attempt": 3}},
            "steps[fetch].retry.max_attempt: retry of step fetch has no field `max_attempt`; "
            "did you mean `max_attempts`?",
        ),
        (
            {"id": "ok", "kind": "human", "review": {"options": [{"name": "a", "impakt": "x"}]}},
            "steps[ok].review.options[0].impakt: review.options of step ok has no field "
            "`impakt`; did you mean `impact`?",
        ),
        (
            {"tool": "x", "id_": "fetch"},
            "steps[0].id_: step at index 0 has no field `id_`; did you mean `id`?",
        ),
    ],
    ids=["timeout", "dependson", "llm-field", "retry", "review-option", "no-id"],
)
def test_an_unknown_field_names_its_step_and_the_field_meant(
    step: dict[str, object], problem: str
) -> None:
    with pytest.raises(TemplateError) as info:
        template_from_data({"name": "t", "steps": [step]}, source="t.yaml")
    assert problem in info.value.problems


def test_an_unknown_field_nothing_is_close_to_lists_the_fields() -> None:
    with pytest.raises(TemplateError) as info:
        template_from_data({"name": "t", "colour": "red", "steps": [{"id": "a"}]})
    assert info.value.problems == [
        "colour: the template has no field `colour` "
        "(fields: description, name, steps, version, when)"
    ]


def test_every_bad_field_is_named() -> None:
    data = {
        "name": "t",
        "colour": "red",
        "steps": [
            {"tool": "x"},
            {"id": "b", "retry": {"max_attempts": 0}},
            {"id": "c", "timeout_seconds": -1},
        ],
    }
    with pytest.raises(TemplateError) as info:
        template_from_data(data, source="t.yaml")
    problems = info.value.problems
    assert len(problems) == 4
    assert any(p.startswith("colour: ") for p in problems)
    assert any(p.startswith("steps[0].id: ") for p in problems)  # no id: named by index
    assert any(p.startswith("steps[b].retry.max_attempts: ") for p in problems)
    assert any(p.startswith("steps[c].timeout_seconds: ") for p in problems)


def test_missing_required_fields() -> None:
    with pytest.raises(TemplateError) as info:
        parse_template("name: t\n")
    assert info.value.problems == ["steps: Field required"]
    with pytest.raises(TemplateError) as info:
        parse_template("name: t\nsteps: []\n")
    assert info.value.problems[0].startswith("steps: ")


def test_load_template_from_a_file(tmp_path: Path) -> None:
    file = tmp_path / "onboarding.yaml"
    file.write_text(GOOD, encoding="utf-8")
    assert load_template(file) == parse_template(GOOD)
    assert load_template(str(file)).name == "onboarding"


def test_load_template_names_the_file_in_errors(tmp_path: Path) -> None:
    file = tmp_path / "bad.yaml"
    file.write_text("name: t\nsteps: [{id: a, tool: x, retires: 3}]\n", encoding="utf-8")
    with pytest.raises(TemplateError) as info:
        load_template(file)
    assert str(file) in info.value.message
    assert "steps[a].retires" in info.value.message


def test_load_template_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(TemplateError) as info:
        load_template(missing)
    assert info.value.path == str(missing)
    assert info.value.message.startswith(f"cannot read template {missing}: ")
    assert "No such file" in info.value.message
    assert isinstance(info.value, ConfigurationError)
    assert isinstance(info.value.__cause__, FileNotFoundError)
