"""The argument and result models built from MCP JSON schemas (no server needed)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from pydantic import ValidationError

from stalwart.errors import InvalidArgumentsError, NonRetriableError, TransientError
from stalwart.tools.mcp import args_model, result_model, result_output

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "query": {"type": "string", "minLength": 2},
        "mode": {"type": "string", "enum": ["fast", "exact"]},
        "filters": {
            "type": "object",
            "properties": {"year": {"type": "integer", "minimum": 1900}},
        },
        "limit": {"type": "integer", "default": 10},
    },
    "required": ["query", "mode"],
    "additionalProperties": False,
}


def test_top_level_fields_come_from_the_schema() -> None:
    model = args_model("search-docs", SCHEMA)
    assert model.__name__ == "SearchDocsArgs"
    assert {n for n, f in model.model_fields.items() if f.is_required()} == {"query", "mode"}
    assert model.model_json_schema() == SCHEMA  # what a model is offered: the server's schema
    ok = model.model_validate({"query": "tea", "mode": "fast", "filters": {"year": 2001}})
    # Only what was given is sent: the server applies its own defaults.
    assert ok.model_dump(exclude_unset=True) == {
        "query": "tea",
        "mode": "fast",
        "filters": {"year": 2001},
    }


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        ({"query": "tea", "mode": "slow"}, "'slow' is not one of"),
        ({"query": "t", "mode": "fast"}, "query: 't' is too short"),
        ({"query": "tea", "mode": "fast", "filters": {"year": 1}}, "filters.year: 1 is less"),
        ({"query": "tea", "mode": "fast", "extra": 1}, "extra"),
        ({"mode": "fast"}, "query"),
    ],
)
def test_the_whole_json_schema_is_checked(args: dict[str, Any], problem: str) -> None:
    model = args_model("search", SCHEMA)
    with pytest.raises(ValidationError, match=problem):
        model.model_validate(args)


def test_an_open_schema_keeps_unknown_arguments() -> None:
    model = args_model("open", {"type": "object", "properties": {"a": {"type": "integer"}}})
    assert model.model_validate({"a": 1, "b": 2}).model_dump() == {"a": 1, "b": 2}


def test_results_structured_text_and_errors() -> None:
    def result(**kw: Any) -> Any:
        base: dict[str, Any] = {"is_error": False, "structured_content": None, "content": []}
        return SimpleNamespace(**{**base, **kw})

    def text(t: str) -> Any:
        return SimpleNamespace(
            type="text", text=t, model_dump=lambda **_: {"type": "text", "text": t}
        )

    assert result_output("t", result(structured_content={"x": 1})) == {"x": 1}
    assert result_output("t", result(content=[text("hi")])) == {
        "text": "hi",
        "content": [{"type": "text", "text": "hi"}],
    }
    with pytest.raises(NonRetriableError, match="no such account"):
        result_output("t", result(is_error=True, content=[text("no such account")]))
    with pytest.raises(TransientError):
        result_output("t", result(is_error=True, content=[text("rate limit exceeded")]))
    with pytest.raises(InvalidArgumentsError):
        result_output("t", result(is_error=True, content=[text("1 validation error for x")]))
    assert set(result_model("t", None).model_fields) == {"text", "content"}
