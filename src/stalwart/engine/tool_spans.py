"""A tool's run in its `execute_tool {tool}` span (GenAI conventions), for tool steps and for the
tool calls of agent steps alike."""

from __future__ import annotations

from typing import Any

from stalwart.observability import tracing
from stalwart.tools.context import ToolContext
from stalwart.tools.invoke import ToolOutcome, invoke_tool
from stalwart.tools.registry import ToolSpec


async def traced_invoke(
    spec: ToolSpec,
    args: Any,
    ctx: ToolContext,
    *,
    call_id: str,
    timeout_seconds: float,
    content: bool,
    reconcile: bool = False,
    **more: Any,
) -> ToolOutcome:
    """`invoke_tool` in an `execute_tool {tool}` span: the tool, the call's id and idempotency
    key (and `more` attributes); its arguments and result only with `content` (opted in)."""
    attributes: dict[str, Any] = {
        "gen_ai.operation.name": "execute_tool",
        "gen_ai.tool.name": spec.name,
        "gen_ai.tool.call.id": call_id,
        "gen_ai.tool.type": "function",
        "stalwart.idempotency_key": ctx.idempotency_key,
        **more,
    }
    if reconcile:
        attributes["stalwart.tool.reconcile"] = True
    if content:
        attributes["gen_ai.tool.call.arguments"] = tracing.content(args)
    with tracing.span(f"execute_tool {spec.name}", None, attributes) as current:
        outcome = await invoke_tool(
            spec, args, ctx, timeout_seconds=timeout_seconds, reconcile=reconcile
        )
        if outcome.error is not None:
            tracing.fail(current, outcome.error.error_class, outcome.error.message)
        elif content:
            current.set_attribute("gen_ai.tool.call.result", tracing.content(outcome.output))
    return outcome


__all__ = ["traced_invoke"]
