"""Models defined inside a function, in a module with `from __future__ import annotations`
(this one): registration resolves their string annotations with the registering function's
locals, or refuses with an error naming the annotation and the fix."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel

from stalwart import App, Settings
from stalwart.errors import ToolDefinitionError, WorkflowDefinitionError
from stalwart.tools.context import ToolContext
from stalwart.tools.registry import ToolRegistry


def app() -> App:
    return App(Settings(database_url="sqlite:///:memory:", embedder="none"))


def validated(model: type[BaseModel], data: dict[str, Any]) -> BaseModel:
    """Validate far from the function that defined `model`, as a worker or a submit does."""

    def deeper(depth: int) -> BaseModel:
        return model.model_validate(data) if depth == 0 else deeper(depth - 1)

    return deeper(8)


def test_a_tool_with_local_models_registers() -> None:
    class StepArgs(BaseModel):
        query: str

    class StepResult(BaseModel):
        hits: list[str]

    async def search(args: StepArgs, ctx: ToolContext) -> StepResult:
        return StepResult(hits=[args.query])

    spec = ToolRegistry().register(search, idempotent=True)

    assert (spec.args_model, spec.result_model) == (StepArgs, StepResult)


def test_app_tool_decorator_sees_the_locals_of_the_decorating_function() -> None:
    class StepArgs(BaseModel):
        query: str

    class StepResult(BaseModel):
        hits: list[Hit]  # defined below: the model is completed at registration

    class Hit(BaseModel):
        text: str

    application = app()

    @application.tool(idempotent=True)
    async def search(args: StepArgs, ctx: ToolContext) -> StepResult:
        return StepResult(hits=[Hit(text=args.query)])

    spec = application.tools.get("search")
    assert spec is not None and spec.result_model is StepResult
    assert validated(StepResult, {"hits": [{"text": "a"}]}) == StepResult(hits=[Hit(text="a")])


def test_only_the_args_and_return_annotations_must_resolve() -> None:
    class StepArgs(BaseModel):
        query: str

    class StepResult(BaseModel):
        hits: list[str]

    # The context's annotation may name something imported only for the type checker.
    async def search(args: StepArgs, ctx: OnlyForTypeCheckers) -> StepResult:  # type: ignore[name-defined]  # noqa: F821
        return StepResult(hits=[])

    spec = ToolRegistry().register(search, idempotent=True)

    assert spec.args_model is StepArgs


def test_a_model_defined_after_the_tool_is_named_in_the_error() -> None:
    tools = ToolRegistry()

    async def search(args: StepArgs, ctx: ToolContext) -> StepResult:
        return StepResult(hits=[])

    with pytest.raises(ToolDefinitionError) as info:
        tools.register(search, idempotent=True)

    class StepArgs(BaseModel):
        query: str

    class StepResult(BaseModel):
        hits: list[str]

    message = info.value.message
    assert "tool 'search'" in message
    assert "annotation 'StepArgs' of its parameter 'args' cannot be resolved" in message
    assert "module level" in message
    assert tools.names() == []


def test_an_unresolvable_field_of_a_local_model_is_named() -> None:
    class StepArgs(BaseModel):
        query: Missing  # type: ignore[name-defined]  # noqa: F821

    class StepResult(BaseModel):
        hits: list[str]

    async def search(args: StepArgs, ctx: ToolContext) -> StepResult:
        return StepResult(hits=[])

    with pytest.raises(ToolDefinitionError) as info:
        ToolRegistry().register(search, idempotent=True)

    message = info.value.message
    assert "model StepArgs" in message and "'Missing'" in message
    assert "module level" in message


def test_a_workflow_input_model_with_a_later_local_model_is_completed() -> None:
    class OrderInput(BaseModel):
        customer: Customer

    class Customer(BaseModel):
        name: str

    application = app()
    flow = application.workflow(
        "orders",
        input=OrderInput,
        templates=[{"name": "t", "steps": [{"id": "a", "kind": "human"}]}],
    )

    assert validated(flow.input_model, {"customer": {"name": "x"}}) == OrderInput(
        customer=Customer(name="x")
    )


def test_an_unresolvable_workflow_input_model_is_refused_by_name() -> None:
    class OrderInput(BaseModel):
        customer: Nowhere  # type: ignore[name-defined]  # noqa: F821

    with pytest.raises(WorkflowDefinitionError) as info:
        app().workflow(
            "orders",
            input=OrderInput,
            templates=[{"name": "t", "steps": [{"id": "a", "kind": "human"}]}],
        )

    message = info.value.message
    assert "workflow 'orders'" in message and "OrderInput" in message and "'Nowhere'" in message
    assert "module level" in message


def test_an_output_schema_with_a_later_local_model_is_completed() -> None:
    class Extraction(BaseModel):
        vendor: Vendor

    class Vendor(BaseModel):
        name: str

    application = app()
    application.schema(Extraction)

    assert validated(Extraction, {"vendor": {"name": "acme"}}) == Extraction(
        vendor=Vendor(name="acme")
    )
