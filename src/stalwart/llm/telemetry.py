"""The `chat {model}` span of one model call, with the OpenTelemetry GenAI attributes."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from opentelemetry.trace import Span, SpanKind

from stalwart.domain.budgets import CallScope
from stalwart.errors import StalwartError
from stalwart.llm.types import Model, ModelRequest, ModelResponse
from stalwart.observability import tracing

if TYPE_CHECKING:
    from stalwart.llm.calls import LlmCall


@contextlib.contextmanager
def chat_span(
    model: Model,
    request: ModelRequest,
    call: LlmCall,
    scope: CallScope,
    tier: str,
    content: bool,
) -> Iterator[Span]:
    """A CLIENT span `chat {model}` under the current span (the step's attempt); a failure
    sets `error.type` to its error class."""
    attributes: dict[str, Any] = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": model.provider,
        "gen_ai.request.model": model.model,
        "gen_ai.request.max_tokens": request.max_tokens,
        "gen_ai.request.temperature": request.temperature,
        "stalwart.tenant": scope.tenant_id,
        "stalwart.job": scope.job_id,
        "stalwart.tier": tier,
        "stalwart.purpose": call.purpose,
        "stalwart.cache_hit": False,
    }
    if scope.step_key:
        attributes["stalwart.step"] = scope.step_key
    if content:
        attributes["gen_ai.input.messages"] = tracing.content(
            [m.to_dict() for m in request.messages]
        )
    attributes = {k: v for k, v in attributes.items() if v is not None}
    with tracing.span(f"chat {model.model}", None, attributes, kind=SpanKind.CLIENT) as current:
        try:
            yield current
        except StalwartError as exc:
            kind = getattr(exc, "error_class", None) or type(exc).__name__
            tracing.fail(current, str(kind), exc.message)
            raise


def record_chat(
    current: Span,
    response: ModelResponse,
    cost_nanos: int,
    error_type: str | None,
    *,
    content: bool = False,
) -> None:
    """Set what the answer brought: response model, token usage, cost, and its error."""
    current.set_attribute("gen_ai.response.model", response.model or "")
    current.set_attribute("gen_ai.usage.input_tokens", response.input_tokens)
    current.set_attribute("gen_ai.usage.output_tokens", response.output_tokens)
    current.set_attribute("gen_ai.usage.cache_read.input_tokens", response.cached_tokens)
    current.set_attribute("stalwart.cost_usd", cost_nanos / 1e9)
    if response.finish_reason:
        current.set_attribute("gen_ai.response.finish_reasons", [response.finish_reason])
    if response.tool_calls:
        current.set_attribute("stalwart.tool_calls", len(response.tool_calls))
    if content:
        output: Any = response.text
        if response.tool_calls:
            output = {
                "text": response.text,
                "tool_calls": [c.to_dict() for c in response.tool_calls],
            }
        current.set_attribute("gen_ai.output.messages", tracing.content(output))
    if error_type:
        tracing.fail(current, error_type, "the answer does not match the output schema")
