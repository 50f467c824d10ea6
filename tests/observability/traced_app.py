"""An app whose process records its spans: an in-memory exporter, written as JSON lines to
`$STALWART_TEST_SPANS` when the process exits (worker subprocesses load it with --app)."""

from __future__ import annotations

import atexit
import json
import os
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from pydantic import BaseModel

from stalwart import App, ApprovalPolicy, Settings, ToolContext
from stalwart.observability.tracing import tracer_provider

SPANS_ENV = "STALWART_TEST_SPANS"


def span_dict(span: ReadableSpan) -> dict[str, Any]:
    """What the tests look at in a span."""
    ctx = span.get_span_context()
    assert ctx is not None
    return {
        "name": span.name,
        "trace_id": f"{ctx.trace_id:032x}",
        "span_id": f"{ctx.span_id:016x}",
        "parent_id": f"{span.parent.span_id:016x}" if span.parent else None,
        "attributes": dict(span.attributes or {}),
        "status": span.status.status_code.name,
        "start": span.start_time,
        "end": span.end_time,
        "pid": os.getpid(),
    }


def install(path: str | None) -> InMemorySpanExporter:
    """A provider with an in-memory exporter for this process; with `path`, its spans are
    written there at exit."""
    exporter = InMemorySpanExporter()
    provider = tracer_provider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    if path:

        def dump() -> None:
            with open(path, "a", encoding="utf-8") as out:
                for span in exporter.get_finished_spans():
                    out.write(json.dumps(span_dict(span), default=str) + "\n")

        atexit.register(dump)
    return exporter


class Order(BaseModel):
    customer: str
    amount: float


class Found(BaseModel):
    value: str


class Key(BaseModel):
    key: str


def build_app(settings: Settings | None = None) -> App:
    """Two steps; the second waits for a reviewer, so another worker can run it."""
    app = App(settings or Settings())

    @app.tool(timeout=5, idempotent=True)
    async def lookup(args: Key, ctx: ToolContext) -> Found:
        """Echo the key."""
        return Found(value=args.key)

    app.workflow(
        "order",
        input=Order,
        approval=ApprovalPolicy(sla_seconds=3600),
        templates=[
            {
                "name": "order",
                "steps": [
                    {"id": "find", "tool": "lookup", "args": {"key": "${input.customer}"}},
                    {
                        "id": "pay",
                        "tool": "lookup",
                        "depends_on": ["find"],
                        "args": {"key": "${steps.find.output.value}"},
                        "requires_approval": True,
                    },
                ],
            }
        ],
    )
    return app


if os.environ.get(SPANS_ENV):
    install(os.environ[SPANS_ENV])
app = build_app()
