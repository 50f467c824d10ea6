"""Conditions: a small, safe test language for template selection, conditional approval and
success criteria. Never `eval`.

A condition maps a path to a test. A test is a literal (equality) or a mapping of operators:
`eq`, `ne`, `gt`, `gte`, `lt`, `lte`, `in`, `not_in`, `exists`. All entries must hold.

    when: {"input.amount": {"gt": 1000}, "input.currency": "EUR"}
"""

from __future__ import annotations

import re
from typing import Any, TypeAlias

import yaml

from stalwart.domain.refs import MISSING, lookup

Condition: TypeAlias = dict[str, Any]

OPERATORS = frozenset({"eq", "ne", "gt", "gte", "lt", "lte", "in", "not_in", "exists"})


def condition_problems(condition: Condition) -> list[str]:
    """What is wrong with a condition's shape; empty when it is well formed."""
    problems: list[str] = []
    for path, test in condition.items():
        if isinstance(test, dict):
            unknown = set(test) - OPERATORS
            if unknown:
                problems.append(
                    f"condition on {path!r} uses unknown operator(s) {sorted(unknown)}; "
                    f"use one of {sorted(OPERATORS)}"
                )
            for op in ("in", "not_in"):
                if op in test and not isinstance(test[op], list):
                    problems.append(f"condition on {path!r}: {op!r} needs a list")
    return problems


def evaluate(condition: Condition | None, context: dict[str, Any]) -> bool:
    """True when every test in `condition` holds against `context`. None always holds."""
    if not condition:
        return True
    for path, test in condition.items():
        value = lookup(context, path)
        if not _holds(value, test):
            return False
    return True


def _holds(value: Any, test: Any) -> bool:
    if not isinstance(test, dict):
        return value is not MISSING and bool(value == test)
    for op, expected in test.items():
        if op == "exists":
            if (value is not MISSING) != bool(expected):
                return False
            continue
        if value is MISSING:
            return False
        try:
            ok = _compare(op, value, expected)
        except TypeError:
            return False
        if not ok:
            return False
    return True


def _compare(op: str, value: Any, expected: Any) -> bool:
    if op == "eq":
        return bool(value == expected)
    if op == "ne":
        return bool(value != expected)
    if op == "gt":
        return bool(value > expected)
    if op == "gte":
        return bool(value >= expected)
    if op == "lt":
        return bool(value < expected)
    if op == "lte":
        return bool(value <= expected)
    if op == "in":
        return value in expected
    if op == "not_in":
        return value not in expected
    raise TypeError(op)


_EXPRESSION = re.compile(
    r"^\s*(?P<path>[A-Za-z_][A-Za-z0-9_\-]*(?:\.[A-Za-z0-9_\-]+)*)\s*"
    r"(?P<op>>=|<=|==|!=|>|<|not in|in)\s*(?P<value>.+?)\s*$"
)
_EXPRESSION_OPS = {
    ">=": "gte",
    "<=": "lte",
    "==": "eq",
    "!=": "ne",
    ">": "gt",
    "<": "lt",
    "in": "in",
    "not in": "not_in",
}


def parse_expression(text: str, *, prefix: str = "") -> Condition:
    """Parse `"confidence >= 0.85"` into the condition `{prefix + "confidence": {"gte": 0.85}}`.

    The right side is a JSON/YAML literal (a number, a quoted string, `true`, `null`, `[]`,
    `["a", "b"]`); a bare word is a string. Raises ValueError naming what is wrong.
    """
    found = _EXPRESSION.match(text)
    if found is None:
        raise ValueError(
            f"cannot read {text!r}: write <path> <op> <value>, with op one of "
            f"{', '.join(_EXPRESSION_OPS)} (e.g. 'confidence >= 0.85')"
        )
    try:
        value = yaml.safe_load(found["value"])
    except yaml.YAMLError as exc:
        raise ValueError(f"cannot read the value in {text!r}: {exc}") from exc
    op = _EXPRESSION_OPS[found["op"]]
    if op in ("in", "not_in") and not isinstance(value, list):
        raise ValueError(f'{text!r}: {found["op"]!r} needs a list, e.g. ["EUR", "USD"]')
    return {prefix + found["path"]: {op: value}}
