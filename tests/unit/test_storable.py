"""The rules of what the database can keep (`stalwart.domain.storable`): each refused value is
named by its dotted path, and everything JSON can write is kept as it is."""

from __future__ import annotations

import math
import re
from datetime import date

import pytest

from stalwart.domain.storable import (
    HEADER_KEY_PATTERN,
    ID_PATTERN,
    MAX_INT64,
    check_key,
    check_text,
    header_key_problem,
    json_problem,
    json_text,
    key_problem,
    text_problem,
)
from stalwart.errors import InputValidationError, UsageError


@pytest.mark.parametrize(
    ("value", "path", "words"),
    [
        ({"a": math.nan}, "a", "nan"),
        ({"a": [1, {"b": -math.inf}]}, "a.1.b", "-inf"),
        ({"a": "x\x00y"}, "a", "NUL"),
        ({"a": ["ok", "\ud800"]}, "a.1", "lone surrogate"),
        ({"k\x00": 1}, "k\\u0000", "key that contains NUL"),
        ({"k\udfff": 1}, "k\\udfff", "key that contains a lone surrogate"),
        ({"a": {"b": date(2026, 1, 1)}}, "a.b", "not JSON"),
        ({"a": {(1, 2): 1}}, "a", "key of type tuple"),
        ({"a": 10**5000}, "a", "integer too large"),
    ],
)
def test_json_problem_names_the_first_bad_part(value: object, path: str, words: str) -> None:
    found = json_problem(value)
    assert found is not None
    assert found[0] == path and words in found[1], found


def test_json_text_raises_naming_the_field_and_path() -> None:
    with pytest.raises(InputValidationError) as info:
        json_text("input", {"items": [{"price": math.nan}]})
    assert info.value.field == "input.items.0.price"  # type: ignore[attr-defined]
    assert info.value.message.startswith("input.items.0.price is nan")
    assert isinstance(info.value, UsageError)


def test_json_text_refuses_nesting_deeper_than_the_encoder_goes() -> None:
    deep: list[object] = []
    inner = deep
    for _ in range(10_000):
        inner.append([])
        inner = inner[0]  # type: ignore[assignment]
    with pytest.raises(InputValidationError, match="nested too deeply") as info:
        json_text("input", {"deep": deep})
    assert info.value.field == "input"  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "value",
    [
        {},
        {"a": 1, "b": [1.5, True, None, "é", "😀"]},
        {"text": "a backslash then u0000: \\u0000"},  # not a NUL: kept as written
        {"n": 2**70, "m": -(2**63)},  # JSON numbers have no bound; only stored ids do
        {1: "int keys are written as strings"},
        {"tuple": (1, 2)},
    ],
)
def test_json_text_keeps_everything_json_can_write(value: object) -> None:
    assert json_problem(value) is None
    assert json_text("input", value)


def test_text_and_key_rules() -> None:
    assert text_problem("tabs\tand\nnewlines are text") is None
    assert text_problem("é 😀") is None
    assert "NUL" in (text_problem("a\x00") or "")
    assert "surrogate" in (text_problem("\udc80") or "")
    assert key_problem("order-1042 é") is None
    assert "control character ('\\t')" in (key_problem("a\tb") or "")
    assert "NUL" in (key_problem("\x00") or "")
    assert check_text("comment", "fine") == "fine"
    with pytest.raises(InputValidationError, match="reviewer contains a control") as info:
        check_key("reviewer", "ada\n")
    assert info.value.field == "reviewer"  # type: ignore[attr-defined]


def test_header_keys_are_printable_ascii() -> None:
    for good in ("order-1042", "a b", "~!"):
        assert header_key_problem(good) is None, good
    for bad in ("a\tb", "café", "\xff", " lead", "trail ", ""):
        assert header_key_problem(bad) is not None, bad
        assert re.fullmatch(HEADER_KEY_PATTERN, bad) is None


def test_ids_and_event_ids_have_known_bounds() -> None:
    assert re.fullmatch(ID_PATTERN, "job_0mxdwc0yj4c2b5949e5e73642")
    for bad in ("", "job_\x00", "a/b", "x" * 65, "é"):
        assert re.fullmatch(ID_PATTERN, bad) is None, bad
    assert MAX_INT64 == 9_223_372_036_854_775_807
