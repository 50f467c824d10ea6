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

import functools
import json
import logging
import os
import time
from contextvars import ContextVar, Token
from types import TracebackType
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.trace.sampling import Sampler
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


def tracer_provider(
    *exporters: SpanExporter, service_name: str = "stalwart", sampler: Sampler | None = None
) -> TracerProvider:
    """An SDK provider with Stalwart's id generator, exporting to `exporters` in batches. The
    sampler defaults to the SDK's: `OTEL_TRACES_SAMPLER`, else parent-based always-on."""
    provider = TracerProvider(
        sampler=sampler,
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


def new_trace_context(name: str = "invoke_workflow") -> str:
    """A fresh traceparent for a job: the ids its root span will have, and whether the job is
    traced at all (head sampling, decided once here by this process's sampler, e.g.
    `OTEL_TRACES_SAMPLER=parentbased_traceidratio`; every process follows the flag)."""
    ids = RandomIdGenerator()
    trace_id = ids.generate_trace_id()
    return format_traceparent(trace_id, ids.generate_span_id(), sampled=_sampled(trace_id, name))


def _sampled(trace_id: int, name: str) -> bool:
    """The sampler's decision for a job's root span; sampled where this process has no SDK
    provider (the processes that run the job then decide nothing: they follow the flag)."""
    sampler = getattr(trace.get_tracer_provider(), "sampler", None)
    if sampler is None:
        return True
    return bool(sampler.should_sample(None, trace_id, name).decision.is_sampled())


def format_traceparent(trace_id: int, span_id: int, *, sampled: bool = True) -> str:
    """A W3C traceparent."""
    return f"00-{trace_id:032x}-{span_id:016x}-{'01' if sampled else '00'}"


def parse_traceparent(value: str | None) -> tuple[int, int] | None:
    """(trace id, span id) of a traceparent, or None when it is missing or malformed."""
    parsed = _parse(value)
    return parsed[:2] if parsed else None


def is_sampled(value: str | None) -> bool:
    """Whether a valid traceparent says its trace is recorded."""
    parsed = _parse(value)
    return parsed is not None and parsed[2]


def _parse(value: str | None) -> tuple[int, int, bool] | None:
    parts = (value or "").split("-")
    if len(parts) != 4 or len(parts[1]) != 32 or len(parts[2]) != 16 or len(parts[3]) != 2:
        return None
    try:
        trace_id, span_id, flags = int(parts[1], 16), int(parts[2], 16), int(parts[3], 16)
    except ValueError:
        return None
    return (trace_id, span_id, bool(flags & 0x01)) if trace_id and span_id else None


def trace_id_of(value: str | None) -> str | None:
    """The hex trace id of a traceparent (for logs and links), or None."""
    ids = parse_traceparent(value)
    return f"{ids[0]:032x}" if ids else None


@functools.lru_cache(maxsize=4096)
def job_context(traceparent: str | None) -> Context | None:
    """A context whose parent is the job's root span; None without a valid traceparent.
    (Cached: a job's steps, often in the same worker, share it; a context is immutable.)"""
    parsed = _parse(traceparent)
    if parsed is None:
        return None
    flags = TraceFlags(0x01 if parsed[2] else 0x00)
    parent = SpanContext(parsed[0], parsed[1], is_remote=True, trace_flags=flags)
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


class span:  # named as the function it replaced: `with span(...) as current:`
    """A span under the job's root span (or the current span when the job has no context),
    current while the block runs; an exception records itself on the span, marks it as an
    error and propagates.

    A class rather than a generator: a step makes two spans, and the SDK's own
    `start_as_current_span` nests three generator context managers per span (measured: a
    quarter of a span's cost)."""

    __slots__ = ("_attributes", "_kind", "_name", "_span", "_token", "_traceparent")

    def __init__(
        self,
        name: str,
        traceparent: str | None,
        attributes: dict[str, Any],
        *,
        kind: SpanKind = SpanKind.INTERNAL,
    ) -> None:
        self._name = name
        self._traceparent = traceparent
        self._attributes = attributes
        self._kind = kind
        self._token: Token[Context] | None = None

    def __enter__(self) -> Span:
        parent = job_context(self._traceparent) if self._traceparent else None
        current = tracer().start_span(
            self._name, context=parent, kind=self._kind, attributes=self._attributes
        )
        self._span = current
        if current.get_span_context().is_valid:  # no provider: nothing to make current
            self._token = otel_context.attach(trace.set_span_in_context(current))
        return current

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        current = self._span
        if self._token is not None:
            otel_context.detach(self._token)
        if isinstance(exc, Exception) and current.is_recording():
            current.record_exception(exc)
            current.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
        current.end()


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
    parsed = _parse(traceparent)
    if parsed is None or not parsed[2]:
        return  # no context, or a job left out by sampling
    token = _PRESET.set(parsed[:2])
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
