"""Calling a tool: validate arguments, run under a timeout, validate the result, and turn every
failure into a structured `StepError` with an error class. No bare exception leaves here."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import httpx
from pydantic import BaseModel, ValidationError

from stalwart.domain.records import StepError
from stalwart.errors import ErrorClass, ToolError, error_for_status
from stalwart.tools.context import ToolContext
from stalwart.tools.registry import ToolSpec


@dataclass(slots=True)
class ToolOutcome:
    """Either `output` (plain JSON) or `error`; `warnings` are soft evaluation failures that
    let the step succeed. `parked`: neither, the step waits for a reviewer (an agent step that
    parked mid-loop has recorded that already)."""

    output: dict[str, Any] | None = None
    error: StepError | None = None
    warnings: list[str] = field(default_factory=list)
    parked: bool = False


def validation_details(exc: ValidationError) -> list[dict[str, Any]]:
    """Pydantic's errors as plain JSON: field path, message, error type."""
    return [
        {"field": ".".join(str(p) for p in err["loc"]), "message": err["msg"], "type": err["type"]}
        for err in exc.errors(include_url=False, include_input=False)
    ]


def _validation_message(prefix: str, exc: ValidationError) -> str:
    parts = [f"{d['field'] or '<root>'}: {d['message']}" for d in validation_details(exc)]
    return f"{prefix}: " + "; ".join(parts)


async def invoke_tool(
    spec: ToolSpec,
    raw_args: dict[str, Any],
    ctx: ToolContext,
    *,
    timeout_seconds: float,
    reconcile: bool = False,
) -> ToolOutcome:
    """Run one attempt of a tool (or its reconcile function) and classify what happened.

    With `reconcile=True` the tool's reconcile function runs instead; its `None` answer ("the
    effect did not happen") comes back as an outcome with neither output nor error.
    """
    try:
        args = spec.args_model.model_validate(raw_args)
    except ValidationError as exc:
        return ToolOutcome(
            error=StepError(
                ErrorClass.INVALID_ARGUMENTS,
                _validation_message(f"arguments of tool {spec.name!r} are not valid", exc),
                code="invalid_arguments",
                details={"errors": validation_details(exc)},
            )
        )
    fn = spec.reconcile if reconcile and spec.reconcile is not None else spec.fn
    deadline = asyncio.timeout(timeout_seconds)
    try:
        async with deadline:
            result = await fn(args, ctx)
    except TimeoutError as exc:
        if not deadline.expired():  # the tool's own timeout (a socket, a client): not ours
            return ToolOutcome(error=classify(exc))
        return ToolOutcome(
            error=StepError(
                ErrorClass.TRANSIENT,
                f"tool {spec.name!r} timed out after {timeout_seconds:g}s",
                code="timeout",
            )
        )
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        return ToolOutcome(error=classify(exc))
    if reconcile and result is None:
        return ToolOutcome()
    return _check_result(spec, result)


def _check_result(spec: ToolSpec, result: Any) -> ToolOutcome:
    try:
        if isinstance(result, spec.result_model):
            model: BaseModel = result
        else:
            model = spec.result_model.model_validate(result)
        return ToolOutcome(output=model.model_dump(mode="json"))
    except ValidationError as exc:
        return ToolOutcome(
            error=StepError(
                ErrorClass.SEMANTIC,
                _validation_message(f"tool {spec.name!r} returned an invalid result", exc),
                code="invalid_result",
                details={"errors": validation_details(exc)},
            )
        )


def classify(exc: BaseException) -> StepError:
    """Turn any exception a tool raised into a `StepError`.

    `ToolError`s keep their class. Timeouts, connection failures and httpx transport errors are
    transient; an httpx status error maps by status (429 and 5xx transient, 401/403
    authorization, other 4xx non-retriable). Anything else is a bug in the tool: non-retriable,
    so it is never retried blindly.
    """
    if isinstance(exc, httpx.HTTPStatusError):
        retry_after = _retry_after(exc.response.headers.get("retry-after"))
        exc = error_for_status(exc.response.status_code, str(exc), retry_after=retry_after)
    if isinstance(exc, ToolError):
        return StepError(
            exc.error_class,
            exc.message,
            code=exc.code,
            retry_after=exc.retry_after,
            exception_type=type(exc).__name__,
            details=exc.details,
        )
    if isinstance(exc, (TimeoutError, ConnectionError, httpx.TransportError)):
        return StepError(
            ErrorClass.TRANSIENT,
            f"{type(exc).__name__}: {exc}",
            code="connection",
            exception_type=type(exc).__name__,
        )
    return StepError(
        ErrorClass.NON_RETRIABLE,
        f"the tool raised an unexpected {type(exc).__name__}: {exc}",
        code="unexpected_exception",
        exception_type=type(exc).__name__,
    )


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None
