"""The tool registry: `@app.tool` turns a typed async function into a `ToolSpec`."""

from __future__ import annotations

import inspect
import sys
import types
import typing
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, PydanticUndefinedAnnotation, PydanticUserError

from stalwart.domain.retry import RetryPolicy
from stalwart.errors import ConfigurationError, ToolDefinitionError
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
        models: tuple[type[BaseModel], type[BaseModel]] | None = None,
    ) -> ToolSpec:
        """Check `fn` and its contract, and add it. Raises `ToolDefinitionError` naming the fix.

        `models` (arguments, result) replaces the annotations of `fn`: for tools whose schemas
        come from elsewhere (an MCP server's)."""
        tool_name = name or fn.__name__
        where = f"tool {tool_name!r}"
        if tool_name in self._tools:
            raise ToolDefinitionError(f"{where} is registered twice; give one a different name=")
        if not inspect.iscoroutinefunction(fn):
            raise ToolDefinitionError(f"{where} must be an async function (async def)")
        if models is not None:
            args_model, result_model = models
        else:
            args_model, result_model = _models(fn, where, caller_namespace())
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

    def schema_hashes(self, names: Iterable[str]) -> dict[str, str]:
        """The schema hash of each registered tool in `names` (unknown names are left out):
        what a job pins, so a tool whose schemas change under it fails closed."""
        return {
            name: spec.schema_hash for name in names if (spec := self._tools.get(name)) is not None
        }

    def names(self) -> list[str]:
        """All tool names, sorted."""
        return sorted(self._tools)

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    def __iter__(self) -> Iterator[ToolSpec]:
        return iter(self._tools.values())


def _models(
    fn: ToolFunction, where: str, namespace: Mapping[str, Any]
) -> tuple[type[BaseModel], type[BaseModel]]:
    params = list(inspect.signature(fn).parameters)
    if len(params) != 2:
        raise ToolDefinitionError(
            f"{where} must take exactly (args: SomeModel, ctx: ToolContext); it takes {params}"
        )
    # Only the two models are resolved: the context's annotation may name something imported
    # for the type checker alone (under `if TYPE_CHECKING:`).
    target = inspect.unwrap(fn)
    localns = {**_closure_names(target), **namespace}
    args_model = _hint(target, params[0], localns, where, f"of its parameter {params[0]!r}")
    result_model = _hint(target, "return", localns, where, "of its return type")
    if not (isinstance(args_model, type) and issubclass(args_model, BaseModel)):
        raise ToolDefinitionError(
            f"{where}: annotate its first parameter with a pydantic model (the arguments)"
        )
    if not (isinstance(result_model, type) and issubclass(result_model, BaseModel)):
        raise ToolDefinitionError(f"{where}: annotate its return type with a pydantic model")
    complete_model(args_model, localns, where, ToolDefinitionError)
    complete_model(result_model, localns, where, ToolDefinitionError)
    return args_model, result_model


def _fix(name: str) -> str:
    return (
        f"define {name} at module level (or, inside a function, before the registration) and "
        "import it outside `if TYPE_CHECKING:`"
    )


def _hint(fn: Any, key: str, localns: dict[str, Any], where: str, what: str) -> Any:
    """The resolved annotation `key` of `fn`, or None when it has none."""
    annotations = getattr(fn, "__annotations__", None) or {}
    if key not in annotations:
        return None
    raw = annotations[key]
    # get_type_hints on a holder of this one annotation: the same rules as for the function,
    # without resolving (and failing on) the annotations that are not needed.
    holder = types.SimpleNamespace(__annotations__={key: raw})
    try:
        return typing.get_type_hints(
            holder, globalns=getattr(fn, "__globals__", None), localns=localns
        )[key]
    except Exception as exc:
        text = raw if isinstance(raw, str) else getattr(raw, "__name__", repr(raw))
        raise ToolDefinitionError(
            f"{where}: the annotation {text!r} {what} cannot be resolved ({exc}): {_fix(text)}",
            annotation=text,
        ) from exc


def _closure_names(fn: Any) -> dict[str, Any]:
    """The names a nested function's body uses from its enclosing functions."""
    code = getattr(fn, "__code__", None)
    cells = getattr(fn, "__closure__", None) or ()
    out: dict[str, Any] = {}
    for name, cell in zip(code.co_freevars if code else (), cells, strict=False):
        try:
            out[name] = cell.cell_contents
        except ValueError:  # a cell not yet filled: the name is defined later
            continue
    return out


def caller_namespace() -> dict[str, Any]:
    """The local names of the user code that is registering something (a tool, a workflow, a
    schema): those of the first frame outside Stalwart, then of its callers in the same module
    (a nearer frame wins). Models defined inside a function are found there when the module
    uses `from __future__ import annotations` and its globals cannot resolve them."""
    frame: types.FrameType | None = sys._getframe(1)
    while frame is not None and _is_stalwart(frame):
        frame = frame.f_back
    names: dict[str, Any] = {}
    module = frame.f_globals if frame is not None else None
    while frame is not None and frame.f_globals is module and frame.f_code.co_name != "<module>":
        for name, value in frame.f_locals.items():
            names.setdefault(name, value)
        frame = frame.f_back
    del frame  # frames hold their locals alive: drop the reference at once
    return names


def _is_stalwart(frame: types.FrameType) -> bool:
    name = str(frame.f_globals.get("__name__", ""))
    return name == "stalwart" or name.startswith("stalwart.")


def complete_model(
    model: type[BaseModel],
    namespace: Mapping[str, Any],
    where: str,
    error: type[ConfigurationError],
) -> None:
    """Finish a pydantic model whose annotations pydantic could not resolve when the class was
    made (a local model named before it was defined), with the registering code's names;
    raise `error` naming the annotation when that fails too."""
    if model.__pydantic_complete__:
        return
    try:
        model.model_rebuild(_types_namespace=dict(namespace))
    except PydanticUndefinedAnnotation as exc:
        missing = exc.name or str(exc)
        raise error(
            f"{where}: model {model.__name__} has an annotation that cannot be resolved "
            f"({missing!r} is not defined): {_fix(missing)}",
            annotation=missing,
        ) from exc
    except PydanticUserError as exc:  # a type pydantic cannot build a schema for
        raise error(f"{where}: model {model.__name__} is not usable: {exc}") from exc
