"""References in step arguments: lookup, resolution, escapes, and that nothing is evaluated."""

from __future__ import annotations

import builtins
from typing import Any

import pytest

from stalwart.domain.refs import (
    MISSING,
    UnresolvedReferenceError,
    find_refs,
    has_refs,
    lookup,
    ref_step,
    resolve,
)
from stalwart.errors import UsageError

CONTEXT: dict[str, Any] = {
    "input": {
        "user": {"id": "u-42", "age": 37, "tags": ["a", "b", "c"], "vip": True},
        "amount": 12.5,
        "nothing": None,
        "items": [{"sku": "x1", "qty": 2}, {"sku": "y2", "qty": 0}],
    },
    "steps": {"fetch": {"output": {"email": "u@example.com", "scores": [1, 2]}}},
}


# -- lookup ----------------------------------------------------------------------------------------


def test_lookup_walks_dicts_and_list_indexes() -> None:
    assert lookup(CONTEXT, "input.user.id") == "u-42"
    assert lookup(CONTEXT, "input.items.1.sku") == "y2"
    assert lookup(CONTEXT, "input.user.tags.0") == "a"
    assert lookup(CONTEXT, "input.nothing") is None


@pytest.mark.parametrize(
    "path",
    [
        "input.missing",
        "input.user.tags.3",  # index past the end
        "input.user.tags.-1",  # negative indexes are not list indexes
        "input.user.tags.first",  # a name on a list
        "input.user.id.x",  # a name on a string
        "input.amount.0",  # an index on a number
        "nope",
    ],
)
def test_lookup_of_a_missing_path_is_missing(path: str) -> None:
    assert lookup(CONTEXT, path) is MISSING


# -- resolve ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        ("${input.user.age}", 37),
        ("${input.amount}", 12.5),
        ("${input.user.vip}", True),
        ("${input.nothing}", None),
        ("${input.user.tags}", ["a", "b", "c"]),
        ("${input.user}", CONTEXT["input"]["user"]),
        ("${ input.user.age }", 37),  # spaces inside the braces
    ],
)
def test_whole_string_ref_keeps_the_type(ref: str, expected: Any) -> None:
    assert resolve(ref, CONTEXT) == expected
    assert type(resolve(ref, CONTEXT)) is type(expected)


def test_ref_inside_a_longer_string_is_interpolated_as_text() -> None:
    assert resolve("Hi ${input.user.id}, age ${input.user.age}!", CONTEXT) == "Hi u-42, age 37!"
    assert resolve("vip=${input.user.vip} n=${input.nothing}", CONTEXT) == "vip=true n=null"
    assert resolve("tags: ${input.user.tags}", CONTEXT) == 'tags: ["a", "b", "c"]'
    assert resolve(" ${input.user.age}", CONTEXT) == " 37"


def test_list_indexes_in_refs() -> None:
    assert resolve("${input.items.0.qty}", CONTEXT) == 2
    assert resolve("${steps.fetch.output.scores.1}", CONTEXT) == 2
    assert resolve("sku ${input.items.1.sku}", CONTEXT) == "sku y2"


def test_resolve_walks_nested_dicts_and_lists_and_leaves_other_values() -> None:
    value = {
        "to": "${steps.fetch.output.email}",
        "lines": ["${input.items.0.sku}", {"q": "${input.items.0.qty}"}, 3, None],
        "flag": False,
        "plain": "no refs here",
    }
    assert resolve(value, CONTEXT) == {
        "to": "u@example.com",
        "lines": ["x1", {"q": 2}, 3, None],
        "flag": False,
        "plain": "no refs here",
    }


def test_resolve_does_not_modify_its_argument() -> None:
    value = {"a": ["${input.amount}"]}
    resolve(value, CONTEXT)
    assert value == {"a": ["${input.amount}"]}


def test_dollar_dollar_escapes_a_literal_reference() -> None:
    assert resolve("cost: $${input.amount}", CONTEXT) == "cost: ${input.amount}"
    assert resolve("$${input.amount}", CONTEXT) == "${input.amount}"
    assert resolve("${input.amount} and $${input.amount}", CONTEXT) == "12.5 and ${input.amount}"
    assert find_refs("$${input.amount}") == []


def test_partial_binding_keeps_escapes_for_the_final_pass() -> None:
    bound = resolve("$${input.amount} ${input.amount}", CONTEXT, roots=("input",))
    assert bound == "$${input.amount} 12.5"
    assert resolve(bound, CONTEXT) == "${input.amount} 12.5"


@pytest.mark.parametrize(
    "text", ["${input.missing}", "x ${input.missing} y", "${input.user.tags.9}"]
)
def test_missing_path_raises_naming_the_path(text: str) -> None:
    path = text.split("${")[1].split("}")[0]
    with pytest.raises(UnresolvedReferenceError) as info:
        resolve({"deep": [text]}, CONTEXT)
    assert info.value.path == path
    assert f"${{{path}}}" in info.value.message
    assert isinstance(info.value, UsageError)


def test_roots_binds_only_the_named_roots() -> None:
    value = {
        "who": "${input.user.id}",
        "email": "${steps.fetch.output.email}",
        "text": "${input.user.id} -> ${steps.later.output.x}",
    }
    bound = resolve(value, {"input": CONTEXT["input"]}, roots=("input",))
    assert bound == {
        "who": "u-42",
        "email": "${steps.fetch.output.email}",
        "text": "u-42 -> ${steps.later.output.x}",
    }


def test_roots_still_raises_for_a_missing_bound_root() -> None:
    with pytest.raises(UnresolvedReferenceError) as info:
        resolve("${input.nope} ${steps.a.output}", {"input": {}}, roots=("input",))
    assert info.value.path == "input.nope"


def test_data_is_never_reread_as_a_reference() -> None:
    """Input text that looks like a reference stays text, through both binding passes."""
    job_input = {"note": "echo ${HOME} and $${x}", "obj": {"k": ["${steps.fetch.output.email}"]}}
    args = {"a": "${input.note}", "b": "say: ${input.note}", "c": "${input.obj}"}
    bound = resolve(args, {"input": job_input}, roots=("input",))
    assert find_refs(bound) == []
    final = resolve(bound, {"input": job_input, "steps": CONTEXT["steps"]})
    assert final == {
        "a": "echo ${HOME} and $${x}",
        "b": "say: echo ${HOME} and $${x}",
        "c": {"k": ["${steps.fetch.output.email}"]},
    }


def test_step_output_is_not_rescanned() -> None:
    context = {"steps": {"a": {"output": {"t": "${input.secret} $${y}"}}}, "input": {"secret": 1}}
    assert resolve("got ${steps.a.output.t}", context) == "got ${input.secret} $${y}"
    assert resolve("${steps.a.output.t}", context) == "${input.secret} $${y}"


# -- nothing is evaluated --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "${__import__('os').system('true')}",
        "${input.user.id + 1}",
        "${input['user']}",
        "${1+1}",
        "${open('/etc/passwd').read()}",
    ],
)
def test_expressions_are_never_evaluated(text: str, monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("evaluated!")

    for name in ("eval", "exec", "compile", "open"):
        monkeypatch.setattr(builtins, name, forbidden)
    result = resolve({"a": text, "b": f"x {text}"}, CONTEXT)
    monkeypatch.undo()
    assert result == {"a": text, "b": f"x {text}"}
    assert find_refs(text) == []


def test_python_names_are_looked_up_in_data_only() -> None:
    with pytest.raises(UnresolvedReferenceError) as info:
        resolve("${os.environ}", CONTEXT)
    assert info.value.path == "os.environ"
    assert resolve("${os.environ}", {"os": {"environ": "data"}}) == "data"


def test_non_path_braces_are_not_refs() -> None:
    for text in ("${__import__('os')}", "${}", "${ }", "${1abc}", "${a..b}", "{input.x}", "$input"):
        assert find_refs(text) == [], text
        assert has_refs(text) is False
        assert resolve(text, CONTEXT) == text


# -- find_refs, ref_step ---------------------------------------------------------------------------


def test_find_refs_in_order_of_appearance() -> None:
    value = {
        "a": "${input.x} and ${steps.s1.output.y}",
        "b": ["${steps.s2.output}", {"c": "${input.z.0}"}],
        "d": 5,
        "e": "${input.x}",
    }
    assert find_refs(value) == [
        "input.x",
        "steps.s1.output.y",
        "steps.s2.output",
        "input.z.0",
        "input.x",
    ]
    assert has_refs(value) is True
    assert find_refs({"a": 1, "b": [None, "plain"]}) == []
    assert has_refs(42) is False


@pytest.mark.parametrize(
    ("path", "step"),
    [
        ("steps.fetch.output.email", "fetch"),
        ("steps.fetch.output", "fetch"),
        ("steps.fetch", "fetch"),
        ("steps", None),
        ("input.steps.x", None),
        ("input.x", None),
    ],
)
def test_ref_step(path: str, step: str | None) -> None:
    assert ref_step(path) == step
