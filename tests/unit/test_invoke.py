"""Calling a tool: every failure becomes a `StepError` with the right class."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
from pydantic import BaseModel, Field

from stalwart.errors import (
    AuthorizationError,
    CriticalError,
    ErrorClass,
    InvalidArgumentsError,
    NonRetriableError,
    RetryStep,
    SemanticError,
    TransientError,
)
from stalwart.tools.context import StepCancelledError, ToolContext
from stalwart.tools.invoke import ToolOutcome, classify, invoke_tool
from stalwart.tools.registry import ToolRegistry, ToolSpec


class Args(BaseModel):
    name: str
    count: int = Field(1, ge=1)
    tags: list[str] = []


class Out(BaseModel):
    greeting: str
    n: int


Behaviour = Callable[[Args], Awaitable[Any]]
BEHAVIOUR: dict[str, Behaviour] = {}


async def tool(args: Args, ctx: ToolContext) -> Out:
    return await BEHAVIOUR["tool"](args)  # type: ignore[no-any-return]


async def reconcile(args: Args, ctx: ToolContext) -> Out | None:
    return await BEHAVIOUR["reconcile"](args)  # type: ignore[no-any-return]


@pytest.fixture
def spec() -> ToolSpec:
    async def greet(args: Args) -> Out:
        return Out(greeting=f"hi {args.name}", n=args.count)

    BEHAVIOUR.clear()
    BEHAVIOUR["tool"] = greet
    return ToolRegistry().register(tool, idempotent=False, reconcile=reconcile)


def behave(name: str, fn: Behaviour) -> None:
    BEHAVIOUR[name] = fn


def raising(exc: BaseException) -> Behaviour:
    async def fn(args: Args) -> Any:
        raise exc

    return fn


def returning(value: Any) -> Behaviour:
    async def fn(args: Args) -> Any:
        return value

    return fn


def ctx() -> ToolContext:
    return ToolContext(
        tenant_id="acme",
        job_id="j1",
        step_id="s",
        attempt=1,
        idempotency_key="acme:j1:s",
        deadline=0,
    )


async def call(spec: ToolSpec, args: dict[str, Any] | None = None, **kwargs: Any) -> ToolOutcome:
    timeout = kwargs.pop("timeout_seconds", 5.0)
    return await invoke_tool(
        spec, {"name": "ann"} if args is None else args, ctx(), timeout_seconds=timeout, **kwargs
    )


def http_error(status: int, headers: dict[str, str] | None = None) -> httpx.HTTPStatusError:
    request = httpx.Request("GET", "https://api.example.com/things/1")
    response = httpx.Response(status, headers=headers, request=request)
    return httpx.HTTPStatusError(f"status {status}", request=request, response=response)


# -- success ---------------------------------------------------------------------------------------


async def test_success_returns_plain_json(spec: ToolSpec) -> None:
    outcome = await call(spec, {"name": "ann", "count": "3"})
    assert outcome.error is None
    assert outcome.output == {"greeting": "hi ann", "n": 3}


async def test_result_as_dict_is_validated(spec: ToolSpec) -> None:
    behave("tool", returning({"greeting": "yo", "n": "7"}))
    outcome = await call(spec)
    assert outcome.output == {"greeting": "yo", "n": 7}
    assert outcome.error is None


# -- arguments -------------------------------------------------------------------------------------


async def test_invalid_arguments_with_field_details(spec: ToolSpec) -> None:
    called = False

    async def spy(args: Args) -> Any:
        nonlocal called
        called = True

    behave("tool", spy)
    outcome = await call(spec, {"count": 0, "tags": ["a", 5]})
    assert called is False  # the tool never runs with bad arguments
    error = outcome.error
    assert error is not None and outcome.output is None
    assert error.error_class == ErrorClass.INVALID_ARGUMENTS
    assert error.code == "invalid_arguments"
    fields = {d["field"]: d for d in error.details["errors"]}
    assert set(fields) == {"name", "count", "tags.1"}
    assert fields["name"]["type"] == "missing"
    assert fields["count"]["type"] == "greater_than_equal"
    assert all(set(d) == {"field", "message", "type"} for d in error.details["errors"])
    assert error.message.startswith("arguments of tool 'tool' are not valid: ")
    assert "count: Input should be greater than or equal to 1" in error.message


# -- timeouts and transient failures ---------------------------------------------------------------


async def test_timeout_is_transient(spec: ToolSpec) -> None:
    cancelled = False

    async def slow(args: Args) -> Any:
        nonlocal cancelled
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled = True
            raise

    behave("tool", slow)
    outcome = await call(spec, timeout_seconds=0.01)
    assert outcome.error is not None
    assert outcome.error.error_class == ErrorClass.TRANSIENT
    assert outcome.error.code == "timeout"
    assert "timed out after 0.01s" in outcome.error.message
    assert cancelled  # the tool's coroutine was cancelled, not left running


async def test_transient_error_keeps_retry_after(spec: ToolSpec) -> None:
    behave("tool", raising(TransientError("busy", code="busy", retry_after=12)))
    error = (await call(spec)).error
    assert error is not None
    assert (error.error_class, error.code, error.retry_after) == (ErrorClass.TRANSIENT, "busy", 12)
    assert (error.message, error.exception_type) == ("busy", "TransientError")


async def test_retry_step_keeps_after(spec: ToolSpec) -> None:
    behave("tool", raising(RetryStep("not yet", after=2.5)))
    error = (await call(spec)).error
    assert error is not None
    assert error.error_class == ErrorClass.TRANSIENT
    assert (error.code, error.retry_after, error.exception_type) == (
        "retry_requested",
        2.5,
        "RetryStep",
    )


async def test_retry_step_without_after(spec: ToolSpec) -> None:
    behave("tool", raising(RetryStep()))
    error = (await call(spec)).error
    assert error is not None
    assert (error.error_class, error.retry_after, error.message) == (
        ErrorClass.TRANSIENT,
        None,
        "Retry this step.",
    )


async def test_http_503_with_retry_after_is_transient(spec: ToolSpec) -> None:
    behave("tool", raising(http_error(503, {"Retry-After": "30"})))
    error = (await call(spec)).error
    assert error is not None
    assert (error.error_class, error.code, error.retry_after) == (
        ErrorClass.TRANSIENT,
        "http_503",
        30.0,
    )
    assert error.exception_type == "TransientError"


@pytest.mark.parametrize(
    ("header", "expected"),
    [(None, None), ("0", 0.0), ("1.5", 1.5), ("-3", 0.0), ("Wed, 21 Oct 2015 07:28:00 GMT", None)],
)
async def test_http_429_retry_after_parsing(
    spec: ToolSpec, header: str | None, expected: float | None
) -> None:
    headers = {"Retry-After": header} if header is not None else {}
    behave("tool", raising(http_error(429, headers)))
    error = (await call(spec)).error
    assert error is not None
    assert error.error_class == ErrorClass.TRANSIENT
    assert error.retry_after == expected


@pytest.mark.parametrize(
    ("status", "error_class"),
    [
        (403, ErrorClass.AUTHORIZATION),
        (401, ErrorClass.AUTHORIZATION),
        (404, ErrorClass.NON_RETRIABLE),
        (409, ErrorClass.NON_RETRIABLE),
        (400, ErrorClass.INVALID_ARGUMENTS),
        (422, ErrorClass.INVALID_ARGUMENTS),
        (408, ErrorClass.TRANSIENT),
        (500, ErrorClass.TRANSIENT),
        (502, ErrorClass.TRANSIENT),
    ],
)
async def test_http_status_errors_map_by_status(
    spec: ToolSpec, status: int, error_class: ErrorClass
) -> None:
    behave("tool", raising(http_error(status, {"Retry-After": "9"})))
    error = (await call(spec)).error
    assert error is not None
    assert error.error_class == error_class
    assert error.code == f"http_{status}"
    if error_class is not ErrorClass.TRANSIENT:
        assert error.retry_after is None  # Retry-After only matters for retries


@pytest.mark.parametrize(
    "exc",
    [
        httpx.ConnectError("connection refused"),
        httpx.ReadTimeout("read timed out"),
        ConnectionResetError("reset by peer"),
        TimeoutError("socket timeout"),
    ],
    ids=type,
)
async def test_connection_failures_are_transient(spec: ToolSpec, exc: Exception) -> None:
    behave("tool", raising(exc))
    error = (await call(spec)).error
    assert error is not None
    assert error.error_class == ErrorClass.TRANSIENT
    assert error.exception_type == type(exc).__name__


async def test_connect_error_is_transient_connection(spec: ToolSpec) -> None:
    behave("tool", raising(httpx.ConnectError("connection refused")))
    error = (await call(spec)).error
    assert error is not None
    assert (error.code, error.message) == ("connection", "ConnectError: connection refused")


async def test_the_tools_own_timeout_is_not_reported_as_ours(spec: ToolSpec) -> None:
    behave("tool", raising(TimeoutError("socket timeout")))
    error = (await call(spec, timeout_seconds=30)).error
    assert error is not None
    assert error.error_class == ErrorClass.TRANSIENT
    assert error.code == "connection"
    assert "timed out after 30s" not in error.message
    assert "socket timeout" in error.message


# -- non-retriable and other classes ---------------------------------------------------------------


async def test_authorization_error(spec: ToolSpec) -> None:
    behave("tool", raising(AuthorizationError("no scope", code="forbidden")))
    error = (await call(spec)).error
    assert error is not None
    assert (error.error_class, error.code, error.message) == (
        ErrorClass.AUTHORIZATION,
        "forbidden",
        "no scope",
    )


@pytest.mark.parametrize(
    ("exc", "error_class"),
    [
        (NonRetriableError("gone"), ErrorClass.NON_RETRIABLE),
        (InvalidArgumentsError("bad"), ErrorClass.INVALID_ARGUMENTS),
        (SemanticError("nonsense"), ErrorClass.SEMANTIC),
        (CriticalError("invariant"), ErrorClass.CRITICAL),
        (StepCancelledError("stop", code="cancelled"), ErrorClass.CANCELLED),
    ],
)
async def test_tool_errors_keep_their_class(
    spec: ToolSpec, exc: Exception, error_class: ErrorClass
) -> None:
    behave("tool", raising(exc))
    error = (await call(spec)).error
    assert error is not None
    assert error.error_class == error_class


async def test_tool_error_details_are_kept(spec: ToolSpec) -> None:
    behave("tool", raising(NonRetriableError("policy", code="policy", details={"rule": 7})))
    error = (await call(spec)).error
    assert error is not None
    assert error.details == {"rule": 7}
    assert error.to_dict()["details"] == {"rule": 7}


async def test_unexpected_exception_is_non_retriable(spec: ToolSpec) -> None:
    behave("tool", raising(KeyError("user")))
    outcome = await call(spec)
    error = outcome.error
    assert error is not None and outcome.output is None
    assert error.error_class == ErrorClass.NON_RETRIABLE
    assert error.code == "unexpected_exception"
    assert error.exception_type == "KeyError"
    assert "unexpected KeyError" in error.message


async def test_cancellation_propagates(spec: ToolSpec) -> None:
    behave("tool", raising(asyncio.CancelledError()))
    with pytest.raises(asyncio.CancelledError):
        await call(spec)


# -- results ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "result", [{"greeting": "hi"}, {"greeting": "hi", "n": "many"}, None, "text", 5]
)
async def test_invalid_result_is_semantic(spec: ToolSpec, result: Any) -> None:
    behave("tool", returning(result))
    outcome = await call(spec)
    error = outcome.error
    assert error is not None and outcome.output is None
    assert error.error_class == ErrorClass.SEMANTIC
    assert error.code == "invalid_result"
    assert error.message.startswith("tool 'tool' returned an invalid result: ")
    assert error.details["errors"]


async def test_invalid_result_names_the_field(spec: ToolSpec) -> None:
    behave("tool", returning({"greeting": "hi"}))
    error = (await call(spec)).error
    assert error is not None
    assert [d["field"] for d in error.details["errors"]] == ["n"]


# -- reconcile -------------------------------------------------------------------------------------


async def test_reconcile_none_means_the_effect_did_not_happen(spec: ToolSpec) -> None:
    behave("reconcile", returning(None))
    outcome = await call(spec, reconcile=True)
    assert outcome.output is None
    assert outcome.error is None


async def test_reconcile_found_result(spec: ToolSpec) -> None:
    behave("reconcile", returning(Out(greeting="earlier", n=1)))
    behave("tool", raising(AssertionError("the tool must not run when reconciling")))
    outcome = await call(spec, reconcile=True)
    assert outcome.output == {"greeting": "earlier", "n": 1}


async def test_reconcile_failure_is_classified(spec: ToolSpec) -> None:
    behave("reconcile", raising(httpx.ConnectError("down")))
    error = (await call(spec, reconcile=True)).error
    assert error is not None and error.error_class == ErrorClass.TRANSIENT


async def test_without_reconcile_none_is_an_invalid_result(spec: ToolSpec) -> None:
    behave("tool", returning(None))
    error = (await call(spec)).error
    assert error is not None and error.error_class == ErrorClass.SEMANTIC


async def test_reconcile_on_a_tool_without_one_runs_the_tool() -> None:
    plain = ToolRegistry().register(tool, idempotent=True)
    behave("tool", returning(Out(greeting="ran", n=2)))
    outcome = await invoke_tool(plain, {"name": "x"}, ctx(), timeout_seconds=1, reconcile=True)
    assert outcome.output == {"greeting": "ran", "n": 2}


def test_classify_never_raises_for_odd_exceptions() -> None:
    class Weird(Exception):
        def __str__(self) -> str:
            return "weird"

    error = classify(Weird())
    assert (error.error_class, error.exception_type) == (ErrorClass.NON_RETRIABLE, "Weird")
