"""The tool registry: every definition mistake is refused with a message naming the fix."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel, Field

from stalwart.domain.retry import RetryPolicy
from stalwart.errors import ConfigurationError, ToolDefinitionError
from stalwart.tools.context import ToolContext
from stalwart.tools.registry import ToolRegistry


class Args(BaseModel):
    query: str


class ArgsWithLimit(BaseModel):
    query: str
    limit: int = 10


class ArgsLimitBounded(BaseModel):
    query: str
    limit: int = Field(10, le=100)


class Result(BaseModel):
    hits: list[str]


class ResultWithTotal(BaseModel):
    hits: list[str]
    total: int


async def search(args: Args, ctx: ToolContext) -> Result:
    """Search the index."""
    return Result(hits=[args.query])


async def search_again(args: Args, ctx: ToolContext) -> Result:
    return Result(hits=[])


async def search_limit(args: ArgsWithLimit, ctx: ToolContext) -> Result:
    return Result(hits=[])


async def search_bounded(args: ArgsLimitBounded, ctx: ToolContext) -> Result:
    return Result(hits=[])


async def search_total(args: Args, ctx: ToolContext) -> ResultWithTotal:
    return ResultWithTotal(hits=[], total=0)


async def find_search(args: Args, ctx: ToolContext) -> Result | None:
    return None


def sync_search(args: Args, ctx: ToolContext) -> Result:
    return Result(hits=[])


async def unannotated(args, ctx):  # type: ignore[no-untyped-def]
    return None


async def no_return_annotation(args: Args, ctx: ToolContext):  # type: ignore[no-untyped-def]
    return None


async def dict_args(args: dict[str, Any], ctx: ToolContext) -> Result:
    return Result(hits=[])


async def returns_dict(args: Args, ctx: ToolContext) -> dict[str, Any]:
    return {}


async def one_param(args: Args) -> Result:
    return Result(hits=[])


async def three_params(args: Args, ctx: ToolContext, extra: int) -> Result:
    return Result(hits=[])


async def forward_ref(args: DoesNotExist, ctx: ToolContext) -> Result:  # type: ignore[name-defined]  # noqa: F821
    return Result(hits=[])


def test_register_a_good_tool() -> None:
    tools = ToolRegistry()
    retry = RetryPolicy(max_attempts=5)
    spec = tools.register(search, timeout=3, retry=retry, risk="medium", idempotent=True)
    assert spec.name == "search"
    assert spec.fn is search
    assert (spec.args_model, spec.result_model) == (Args, Result)
    assert (spec.timeout_seconds, spec.retry, spec.risk) == (3, retry, "medium")
    assert (spec.idempotent, spec.reconcile) == (True, None)
    assert spec.description == "Search the index."
    assert tools.get("search") is spec
    assert "search" in tools and "other" not in tools
    assert list(tools) == [spec]


def test_registry_lookup_and_names() -> None:
    tools = ToolRegistry()
    tools.register(search_limit, idempotent=True)
    tools.register(search, name="b_search", idempotent=True, description="explicit")
    assert tools.names() == ["b_search", "search_limit"]
    assert tools.get("search") is None
    b_search = tools.get("b_search")
    assert b_search is not None and b_search.description == "explicit"


def test_non_idempotent_tool_with_reconcile() -> None:
    spec = ToolRegistry().register(search, idempotent=False, reconcile=find_search)
    assert spec.idempotent is False
    assert spec.reconcile is find_search
    assert spec.describe()["reconcile"] is True


def test_describe_is_json_ready() -> None:
    spec = ToolRegistry().register(search, timeout=2, idempotent=True)
    described = spec.describe()
    assert described["name"] == "search"
    assert described["args_schema"]["properties"]["query"]["type"] == "string"
    assert described["result_schema"]["required"] == ["hits"]
    assert described["schema_hash"] == spec.schema_hash
    assert (described["timeout_seconds"], described["risk"], described["idempotent"]) == (
        2,
        "low",
        True,
    )


@pytest.mark.parametrize(
    ("fn", "kwargs", "fragment"),
    [
        (sync_search, {}, "must be an async function"),
        (unannotated, {}, "annotate its first parameter with a pydantic model"),
        (dict_args, {}, "annotate its first parameter with a pydantic model"),
        (no_return_annotation, {}, "annotate its return type with a pydantic model"),
        (returns_dict, {}, "annotate its return type with a pydantic model"),
        (one_param, {}, "must take exactly (args: SomeModel, ctx: ToolContext); it takes ['args']"),
        (three_params, {}, "it takes ['args', 'ctx', 'extra']"),
        (forward_ref, {}, "annotation 'DoesNotExist' of its parameter 'args' cannot be"),
        (search, {"idempotent": None}, "must declare its idempotency contract"),
        (search, {"reconcile": find_search}, "reconcile= is only for idempotent=False tools"),
        (search, {"idempotent": False, "reconcile": sync_search}, "reconcile must be an async"),
        (search, {"timeout": 0}, "timeout must be a positive number"),
        (search, {"timeout": -5}, "timeout must be a positive number"),
        (search, {"risk": "extreme"}, "risk must be 'low', 'medium' or 'high'"),
    ],
    ids=[
        "sync",
        "no-annotations",
        "args-not-a-model",
        "no-return-annotation",
        "return-not-a-model",
        "one-param",
        "three-params",
        "unresolvable",
        "no-idempotent",
        "reconcile-on-idempotent",
        "sync-reconcile",
        "zero-timeout",
        "negative-timeout",
        "bad-risk",
    ],
)
def test_definition_errors(fn: Any, kwargs: dict[str, Any], fragment: str) -> None:
    args: dict[str, Any] = {"idempotent": True, **kwargs}
    tools = ToolRegistry()
    with pytest.raises(ToolDefinitionError) as info:
        tools.register(fn, **args)
    assert fragment in info.value.message
    assert f"tool {fn.__name__!r}" in info.value.message
    assert isinstance(info.value, ConfigurationError)
    assert tools.names() == []  # nothing half-registered


def test_duplicate_name() -> None:
    tools = ToolRegistry()
    first = tools.register(search, idempotent=True)
    with pytest.raises(ToolDefinitionError, match="'search' is registered twice"):
        tools.register(search_again, name="search", idempotent=True)
    assert tools.get("search") is first


def test_schema_hash_is_stable() -> None:
    one = ToolRegistry().register(search, idempotent=True)
    two = ToolRegistry().register(search_again, idempotent=False, timeout=9, risk="high")
    assert one.schema_hash == two.schema_hash  # same models: same hash, whatever the contract
    assert len(one.schema_hash) == 64


@pytest.mark.parametrize("changed", [search_limit, search_bounded, search_total])
def test_schema_hash_changes_when_a_model_changes(changed: Any) -> None:
    base = ToolRegistry().register(search, idempotent=True).schema_hash
    assert ToolRegistry().register(changed, idempotent=True).schema_hash != base


def test_schema_hash_sees_a_changed_constraint() -> None:
    loose = ToolRegistry().register(search_limit, idempotent=True).schema_hash
    bounded = ToolRegistry().register(search_bounded, idempotent=True).schema_hash
    assert loose != bounded
