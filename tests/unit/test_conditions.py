"""Conditions: the small, safe test language. Each operator, missing paths, type mismatches."""

from __future__ import annotations

from typing import Any

import pytest

from stalwart.domain.conditions import OPERATORS, condition_problems, evaluate

CTX: dict[str, Any] = {
    "input": {
        "amount": 1500,
        "currency": "EUR",
        "country": "DE",
        "tags": ["vip", "b2b"],
        "zero": 0,
        "none": None,
        "flag": False,
    }
}


@pytest.mark.parametrize(
    ("test", "holds"),
    [
        ({"eq": 1500}, True),
        ({"eq": 1500.0}, True),
        ({"eq": 1501}, False),
        ({"ne": 1501}, True),
        ({"ne": 1500}, False),
        ({"gt": 1000}, True),
        ({"gt": 1500}, False),
        ({"gte": 1500}, True),
        ({"gte": 1501}, False),
        ({"lt": 2000}, True),
        ({"lt": 1500}, False),
        ({"lte": 1500}, True),
        ({"lte": 1499}, False),
        ({"in": [1, 1500]}, True),
        ({"in": [1, 2]}, False),
        ({"not_in": [1, 2]}, True),
        ({"not_in": [1500]}, False),
        ({"exists": True}, True),
        ({"exists": False}, False),
        ({"gt": 1000, "lt": 2000}, True),  # every operator of a test must hold
        ({"gt": 1000, "lt": 1200}, False),
        ({}, True),  # no operators: nothing to fail
    ],
)
def test_each_operator_on_a_number(test: dict[str, Any], holds: bool) -> None:
    assert evaluate({"input.amount": test}, CTX) is holds


def test_operators_on_strings() -> None:
    assert evaluate({"input.currency": {"in": ["EUR", "USD"]}}, CTX)
    assert not evaluate({"input.currency": {"not_in": ["EUR", "USD"]}}, CTX)
    assert evaluate({"input.currency": {"gt": "A", "lt": "F"}}, CTX)
    assert not evaluate({"input.currency": {"eq": "eur"}}, CTX)


def test_literal_is_equality() -> None:
    assert evaluate({"input.currency": "EUR"}, CTX)
    assert not evaluate({"input.currency": "USD"}, CTX)
    assert evaluate({"input.tags": ["vip", "b2b"]}, CTX)
    assert evaluate({"input.none": None}, CTX)


def test_all_entries_must_hold() -> None:
    assert evaluate({"input.currency": "EUR", "input.amount": {"gt": 1000}}, CTX)
    assert not evaluate({"input.currency": "EUR", "input.amount": {"gt": 5000}}, CTX)
    assert not evaluate({"input.currency": "USD", "input.amount": {"gt": 1000}}, CTX)


def test_no_condition_always_holds() -> None:
    assert evaluate(None, CTX) is True
    assert evaluate({}, CTX) is True
    assert evaluate(None, {}) is True


@pytest.mark.parametrize(
    "test",
    [
        None,  # a literal None does not match a missing value
        {"eq": None},
        {"ne": 5},  # missing is not "different from 5": it is missing
        {"gt": 0},
        {"lt": 0},
        {"in": [None]},
        {"not_in": [1]},
        {"exists": True},
    ],
)
def test_missing_path_fails_every_test_but_exists_false(test: Any) -> None:
    assert evaluate({"input.nope": test}, CTX) is False
    assert evaluate({"input.currency.deeper": test}, CTX) is False


def test_exists() -> None:
    assert evaluate({"input.nope": {"exists": False}}, CTX) is True
    assert evaluate({"input.none": {"exists": True}}, CTX) is True  # present, even if null
    assert evaluate({"input.zero": {"exists": True}}, CTX) is True
    assert evaluate({"input.flag": {"exists": False}}, CTX) is False


def test_falsy_values_are_present() -> None:
    assert evaluate({"input.zero": 0}, CTX)
    assert evaluate({"input.zero": {"lte": 0}}, CTX)
    assert evaluate({"input.flag": False}, CTX)


@pytest.mark.parametrize(
    ("path", "test"),
    [
        ("input.amount", {"gt": "1000"}),
        ("input.currency", {"lt": 5}),
        ("input.none", {"gte": 1}),
        ("input.tags", {"gt": 3}),
        ("input.amount", {"in": 5}),  # `in` on a non-container
        ("input.tags", {"in": [["vip"]], "gt": {"a": 1}}),
    ],
)
def test_type_mismatch_is_false_not_an_error(path: str, test: dict[str, Any]) -> None:
    assert evaluate({path: test}, CTX) is False


def test_unknown_operator_never_holds() -> None:
    assert evaluate({"input.amount": {"greater": 1}}, CTX) is False


def test_well_formed_conditions_have_no_problems() -> None:
    condition = {
        "input.amount": {op: [1] if op in ("in", "not_in") else 1 for op in OPERATORS},
        "input.currency": "EUR",
    }
    assert condition_problems(condition) == []
    assert condition_problems({}) == []


def test_condition_problems_names_unknown_operators_and_the_path() -> None:
    problems = condition_problems({"input.amount": {"gt": 1, "bigger": 2, "=~": "x"}})
    assert len(problems) == 1
    assert "'input.amount'" in problems[0]
    assert "['=~', 'bigger']" in problems[0]
    assert "gte" in problems[0]  # says what to use instead


def test_condition_problems_in_needs_a_list() -> None:
    problems = condition_problems({"input.c": {"in": "EUR"}, "input.d": {"not_in": 3}})
    assert problems == [
        "condition on 'input.c': 'in' needs a list",
        "condition on 'input.d': 'not_in' needs a list",
    ]
