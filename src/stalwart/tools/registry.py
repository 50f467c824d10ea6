"""The tool registry: `@app.tool` turns a typed async function into a `ToolSpec`."""

from __future__ import annotations

import inspect
import typing
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel

from stalwart.domain.retry import RetryPolicy
from stalwart.errors import ToolDefinitionError
from stalwart.tools.context import ToolContext
from stalwart.types import canonical_hash

RiskLevel = Literal["low", "medium", "high"]
ToolFunction = Callable[[Any, ToolContext], Awaitable[Any]]
ReconcileFunction = Callable[[Any, ToolContext], Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """A registered tool: the function, its schemas and its operating contract."""

    name: str
    fn: ToolFunction
    args_model: type[BaseModel]
    result_model: type[BaseModel]
    timeout_seconds: float | None
    retry: RetryPolicy | None
    risk: RiskLevel
    idempotent: bool
    reconcile: ReconcileFunction | None
    description: str
    schema_hash: str
    cost_usd: float | None = None

    def describe(self) -> dict[str, Any]:
        """JSON-ready description: name, schemas, contract."""
        return {
            "name": self.name,
            "description": self.description,
            "args_schema": self.args_model.model_json_schema(),
            "result_schema": self.result_model.model_json_schema(),
            "timeout_seconds": self.timeout_seconds,
            "risk": self.risk,
            "idempotent": self.idempotent,
            "reconcile": self.reconcile is not None,
            "schema_hash": self.schema_hash,
            "cost_usd": self.cost_usd,
        }


class ToolRegistry:
    """The tools an app knows, by name."""

    def __init__(self) -> None:
        self._tools: dict[str, ToolSpec] = {}

    def register(
        self,
        fn: ToolFunction,
        *,
        name: str | None = None,
        timeout: float | None = None,
        retry: RetryPolicy | None = None,
        risk: RiskLevel = "low",
        idempotent: bool | None = None,
        reconcile: ReconcileFunction | None = None,
        description: str | None = None,
        cost_usd: float | None = None,
    ) -> ToolSpec:
        """Check `fn` and its contract, and add it. Raises `ToolDefinitionError` naming the fix."""
        tool_name = name or fn.__name__
        where = f"tool {tool_name!r}"
        if tool_name in self._tools:
            raise ToolDefinitionError(f"{where} is registered twice; give one a different name=")
        if not inspect.iscoroutinefunction(fn):
            raise ToolDefinitionError(f"{where} must be an async function (async def)")
        args_model, result_model = _models(fn, where)
        if idempotent is None:
            raise ToolDefinitionError(
                f"{where} must declare its idempotency contract: idempotent=True if running it "
                "twice is harmless, or idempotent=False (optionally with reconcile=...) if not"
            )
        if idempotent and reconcile is not None:
            raise ToolDefinitionError(f"{where}: reconcile= is only for idempotent=False tools")
        if reconcile is not None and not inspect.iscoroutinefunction(reconcile):
            raise ToolDefinitionError(f"{where}: reconcile must be an async function")
        if timeout is not None and timeout <= 0:
            raise ToolDefinitionError(f"{where}: timeout must be a positive number of seconds")
        if cost_usd is not None and cost_usd < 0:
            raise ToolDefinitionError(f"{where}: cost_usd must be 0 or more (USD per call)")
        if risk not in ("low", "medium", "high"):
            raise ToolDefinitionError(f"{where}: risk must be 'low', 'medium' or 'high'")
        schema_hash = canonical_hash(
            {
                "args": args_model.model_json_schema(),
                "result": result_model.model_json_schema(),
            }
        )
        spec = ToolSpec(
            name=tool_name,
            fn=fn,
            args_model=args_model,
            result_model=result_model,
            timeout_seconds=timeout,
            retry=retry,
            risk=risk,
            idempotent=idempotent,
            reconcile=reconcile,
            description=description or inspect.getdoc(fn) or "",
            schema_hash=schema_hash,
            cost_usd=cost_usd,
        )
        self._tools[tool_name] = spec
        return spec

    def get(self, name: str) -> ToolSpec | None:
        """The tool with this name, or None."""
        return self._tools.get(name)

    def names(self) -> list[str]:
        """All tool names, sorted."""
        return sorted(self._tools)

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    def __iter__(self) -> Iterator[ToolSpec]:
        return iter(self._tools.values())


def _models(fn: ToolFunction, where: str) -> tuple[type[BaseModel], type[BaseModel]]:
    try:
        hints = typing.get_type_hints(fn)
    except Exception as exc:  # unresolvable forward references
        raise ToolDefinitionError(
            f"{where}: its type annotations cannot be resolved: {exc}"
        ) from exc
    params = list(inspect.signature(fn).parameters)
    if len(params) != 2:
        raise ToolDefinitionError(
            f"{where} must take exactly (args: SomeModel, ctx: ToolContext); it takes {params}"
        )
    args_model = hints.get(params[0])
    result_model = hints.get("return")
    if not (isinstance(args_model, type) and issubclass(args_model, BaseModel)):
        raise ToolDefinitionError(
            f"{where}: annotate its first parameter with a pydantic model (the arguments)"
        )
    if not (isinstance(result_model, type) and issubclass(result_model, BaseModel)):
        raise ToolDefinitionError(f"{where}: annotate its return type with a pydantic model")
    return args_model, result_model
