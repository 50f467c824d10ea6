"""The job's trace context: traceparents, and what `setup_tracing` does with the environment."""

from __future__ import annotations

import pytest
from opentelemetry import trace

from stalwart.observability import tracing


def test_a_new_trace_context_round_trips() -> None:
    value = tracing.new_trace_context()
    ids = tracing.parse_traceparent(value)
    assert ids is not None
    assert tracing.format_traceparent(*ids) == value
    assert tracing.trace_id_of(value) == f"{ids[0]:032x}"
    assert tracing.new_trace_context() != value
    # Without an SDK provider here the job is sampled: the processes that run it record it.
    assert tracing.is_sampled(value) and value.endswith("-01")


def test_the_sampled_flag_is_read_and_written() -> None:
    value = tracing.format_traceparent(7, 9, sampled=False)
    assert value == f"00-{7:032x}-{9:016x}-00"
    assert tracing.parse_traceparent(value) == (7, 9)
    assert not tracing.is_sampled(value)
    assert tracing.is_sampled(tracing.format_traceparent(7, 9))
    context = tracing.job_context(value)
    assert context is not None
    parent = trace.get_current_span(context).get_span_context()
    assert (parent.trace_id, parent.span_id, parent.trace_flags.sampled) == (7, 9, False)


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "00-abc-def-01",
        "00-" + "0" * 32 + "-" + "1" * 16 + "-01",  # an all-zero trace id is invalid
        "00-" + "z" * 32 + "-" + "1" * 16 + "-01",
        "00-" + "1" * 32 + "-" + "1" * 15 + "-01",
        "00-" + "1" * 32 + "-" + "1" * 16 + "-1",  # flags are two hex digits
        "00-" + "1" * 32 + "-" + "1" * 16 + "-zz",
    ],
)
def test_malformed_traceparents_give_no_context(value: str | None) -> None:
    assert tracing.parse_traceparent(value) is None
    assert tracing.job_context(value) is None
    assert tracing.trace_id_of(value) is None


def test_setup_tracing_does_nothing_unless_the_environment_asks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in (
        "OTEL_TRACES_EXPORTER",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_SDK_DISABLED",
    ):
        monkeypatch.delenv(name, raising=False)
    assert tracing.setup_tracing() is None
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    assert tracing.setup_tracing() is None
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    assert tracing.setup_tracing() is None


def test_spans_without_a_provider_still_carry_the_jobs_trace_id() -> None:
    # With no SDK installed (the default) a span costs nothing, yet code inside it (logs)
    # still sees the job's trace id.
    value = tracing.new_trace_context()
    with tracing.span("step x", value, {"stalwart.job": "job_1"}) as current:
        ctx = current.get_span_context()
    ids = tracing.parse_traceparent(value)
    assert ids is not None and ctx.trace_id == ids[0]
