"""One OpenTelemetry trace per job, whichever processes run its steps.

At submit, a job gets a W3C traceparent (`jobs.trace_context`): the ids of its root span,
`invoke_workflow {workflow}`. Every span made for the job is a child of that context: `plan
{workflow}` at submit and at each replan, one `step {key}` span per attempt (in whatever worker
claimed it), and under an attempt `execute_tool {tool}` or `chat {model}` (one per model call).
The root span itself is emitted when the job finishes, by the process that sees it finish,
with the job's start and end times and the ids chosen at submit; that needs the provider to use
`StalwartIdGenerator` (`setup_tracing` and `tracer_provider` install it).

Attributes follow the OpenTelemetry GenAI conventions where they apply (`gen_ai.*`), with
`stalwart.*` for tenant, job, step, attempt, cost, cache hits, idempotency keys and decisions.
Prompts, completions, tool arguments and results are recorded only with `trace_content=True`.

Nothing is exported unless the user configures it: `setup_tracing` installs an OTLP exporter
only when the standard `OTEL_EXPORTER_OTLP_*` / `OTEL_TRACES_EXPORTER` variables ask for one
(and the `otlp` extra is installed). Without a provider, spans cost almost nothing.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import time
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.trace import (
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
)

log = logging.getLogger("stalwart.tracing")

SCOPE = "stalwart"
FINISHED_OK = frozenset({"completed"})
# The ids the next span made in this context must take (the job's root span, at its end).
_PRESET: ContextVar[tuple[int, int] | None] = ContextVar("stalwart_preset_ids", default=None)


class StalwartIdGenerator(RandomIdGenerator):
    """Random ids, except for a job's root span, which takes the ids chosen at submit."""

    def generate_span_id(self) -> int:
        """The preset span id, else a random one."""
        preset = _PRESET.get()
        return preset[1] if preset is not None else super().generate_span_id()

    def generate_trace_id(self) -> int:
        """The preset trace id, else a random one."""
        preset = _PRESET.get()
        return preset[0] if preset is not None else super().generate_trace_id()


def tracer_provider(*exporters: SpanExporter, service_name: str = "stalwart") -> TracerProvider:
    """An SDK provider with Stalwart's id generator, exporting to `exporters` in batches."""
    provider = TracerProvider(
        resource=Resource.create({"service.name": service_name}),
        id_generator=StalwartIdGenerator(),
    )
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


def setup_tracing() -> TracerProvider | None:
    """Install a provider exporting over OTLP when the environment asks for it (the standard
    `OTEL_*` variables) and no provider is set yet; else leave tracing as it is."""
    if os.environ.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return None
    wanted = os.environ.get("OTEL_TRACES_EXPORTER", "").lower()
    endpoint = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT"
    )
    if wanted in ("", "none") and not endpoint:
        return None
    if wanted not in ("", "otlp"):
        log.warning("OTEL_TRACES_EXPORTER=%s is not supported; use otlp", wanted)
        return None
    if isinstance(trace.get_tracer_provider(), TracerProvider):
        return None  # the user configured one
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # type: ignore[import-not-found,unused-ignore]
            OTLPSpanExporter,
        )
    except ImportError:
        log.warning(
            "OTLP export is configured but its exporter is not installed: "
            "pip install 'stalwart[otlp]'"
        )
        return None
    provider = tracer_provider(
        OTLPSpanExporter(), service_name=os.environ.get("OTEL_SERVICE_NAME", "stalwart")
    )
    trace.set_tracer_provider(provider)
    return provider


@functools.cache
def tracer() -> trace.Tracer:
    """Stalwart's tracer (made once: before a provider is set it is a proxy that follows the
    provider set later; making one per span cost more than the span)."""
    return trace.get_tracer(SCOPE)


# -- the job's context ----------------------------------------------------------------------------


def new_trace_context() -> str:
    """A fresh traceparent for a job: the ids its root span will have."""
    ids = RandomIdGenerator()
    return format_traceparent(ids.generate_trace_id(), ids.generate_span_id())


def format_traceparent(trace_id: int, span_id: int) -> str:
    """A W3C traceparent, sampled."""
    return f"00-{trace_id:032x}-{span_id:016x}-01"


def parse_traceparent(value: str | None) -> tuple[int, int] | None:
    """(trace id, span id) of a traceparent, or None when it is missing or malformed."""
    parts = (value or "").split("-")
    if len(parts) != 4 or len(parts[1]) != 32 or len(parts[2]) != 16:
        return None
    try:
        trace_id, span_id = int(parts[1], 16), int(parts[2], 16)
    except ValueError:
        return None
    return (trace_id, span_id) if trace_id and span_id else None


def trace_id_of(value: str | None) -> str | None:
    """The hex trace id of a traceparent (for logs and links), or None."""
    ids = parse_traceparent(value)
    return f"{ids[0]:032x}" if ids else None


def job_context(traceparent: str | None) -> Context | None:
    """A context whose parent is the job's root span; None without a valid traceparent."""
    ids = parse_traceparent(traceparent)
    if ids is None:
        return None
    parent = SpanContext(ids[0], ids[1], is_remote=True, trace_flags=TraceFlags(0x01))
    return trace.set_span_in_context(NonRecordingSpan(parent))


def job_attributes(
    tenant: str, job_id: str, workflow: str | None = None, **more: Any
) -> dict[str, Any]:
    """`stalwart.*` attributes naming a job (None values left out)."""
    out: dict[str, Any] = {"stalwart.tenant": tenant, "stalwart.job": job_id}
    if workflow:
        out["stalwart.workflow"] = workflow
    for key, value in more.items():
        if value is not None:
            out[f"stalwart.{key}"] = value
    return out


@contextlib.contextmanager
def span(
    name: str,
    traceparent: str | None,
    attributes: dict[str, Any],
    *,
    kind: SpanKind = SpanKind.INTERNAL,
) -> Iterator[Span]:
    """A span under the job's root span (or the current span when the job has no context),
    current while the block runs; an exception marks it as an error and propagates."""
    parent = job_context(traceparent)
    with tracer().start_as_current_span(
        name, context=parent, kind=kind, attributes=attributes, record_exception=True
    ) as current:
        yield current


def fail(current: Span, error_type: str, message: str = "") -> None:
    """Mark a span as failed with `error.type` (the error class or code)."""
    current.set_attribute("error.type", error_type)
    current.set_status(Status(StatusCode.ERROR, message[:500] or None))


def content(value: Any) -> str:
    """A value as a span attribute: compact JSON, cut at 16 KiB."""
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text[:16_384]


def emit_job_span(
    *,
    traceparent: str | None,
    tenant: str,
    job_id: str,
    workflow: str,
    status: str,
    created: float,
    finished: float | None,
    error: dict[str, Any] | None = None,
) -> None:
    """Emit the job's root span `invoke_workflow {workflow}` now that the job has finished,
    with the ids chosen at submit and the job's own start and end times."""
    ids = parse_traceparent(traceparent)
    if ids is None:
        return
    token = _PRESET.set(ids)
    try:
        root = tracer().start_span(
            f"invoke_workflow {workflow}",
            context=Context(),
            kind=SpanKind.INTERNAL,
            start_time=int(created * 1e9),
            attributes={
                "gen_ai.operation.name": "invoke_workflow",
                **job_attributes(tenant, job_id, workflow, status=status),
            },
        )
    finally:
        _PRESET.reset(token)
    if status not in FINISHED_OK:
        kind = (error or {}).get("error_class") or status
        fail(root, str(kind), str((error or {}).get("message", "")))
    # It ends when this process saw the job finish (its last step's span has closed by then).
    root.end(end_time=int(max(finished or created, time.time()) * 1e9))
