"""Structured logs: one JSON object a line for machines, a short line for people on a terminal.

Every line names what happened (`action`) and whom it concerns (`tenant`, `job`, `step`,
`attempt`) and carries the trace id, so a log line leads to its trace (`stalwart jobs trace`, or a
collector). Standard library `logging` only: code logs as it always did, with its fields in
`extra={...}`; this module formats them.

The API:

    configure_logging(level="info", fmt="auto", stream=sys.stderr) -> logging.Handler
        Install one handler on the root logger (replacing one installed earlier by this
        function). `fmt`: "json", "text", or "auto" (text when `stream` is a terminal, else
        JSON). uvicorn's loggers are routed through it too.

    bind(**fields) -> context manager
        with bind(tenant="acme", job=job_id, step="fetch", attempt=2, trace_id=trace_id):
            ...   # every line logged inside (this task, its callees) carries these fields
        Nested binds add to (and override) the outer ones; None values are left out. A field
        given in a call's `extra` wins over a bound one. `trace_id` may be a 32-hex trace id or
        a W3C traceparent (`00-<trace id>-<span id>-<flags>`), which gives `span_id` as well.

    bound() -> dict
        The fields bound in this context now.

A JSON line: `ts` (ISO 8601 UTC with milliseconds, `...Z`), `level`, `logger`, `message`, then
`action`, `tenant`, `job`, `step`, `attempt`, `trace_id`, `span_id` when known, then every other
`extra` field, then `exc_type` and `exc` (the traceback) when an exception is logged. The trace
and span ids come from the current OpenTelemetry span when there is one (a valid span context),
else from the fields. Aliases are normalised: `tenant_id` -> `tenant`, `job_id` -> `job`,
`step_key` -> `step`.

A text line: `HH:MM:SS LEVEL logger message key=value ...` (local time; no span id).
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import sys
import time
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from datetime import UTC, datetime
from types import MappingProxyType
from typing import IO, Any, Literal

from opentelemetry import trace

from stalwart.observability.tracing import parse_traceparent

LogFormat = Literal["auto", "json", "text"]

# The fields every line names first, in this order, when they are known.
CORE = ("action", "tenant", "job", "step", "attempt", "trace_id", "span_id")
ALIASES = {"tenant_id": "tenant", "job_id": "job", "step_key": "step"}

# What a LogRecord carries of its own: everything else in its __dict__ came from `extra`.
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message",
    "asctime",
    "taskName",
    "color_message",  # uvicorn's: the message again, with terminal colour codes
}
_TRACE_ID = re.compile(r"^[0-9a-f]{32}$")
_INVALID_TRACE = "0" * 32
_UVICORN = ("uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi")

_NOTHING: Mapping[str, Any] = MappingProxyType({})
_BOUND: ContextVar[Mapping[str, Any]] = ContextVar("stalwart_log_fields", default=_NOTHING)


@contextlib.contextmanager
def bind(**fields: Any) -> Iterator[None]:
    """Bind `fields` to every log line written inside the block (this context only)."""
    merged = dict(_BOUND.get())
    merged.update({ALIASES.get(k, k): v for k, v in fields.items() if v is not None})
    token = _BOUND.set(merged)
    try:
        yield
    finally:
        _BOUND.reset(token)


def bound() -> dict[str, Any]:
    """The fields bound in this context now."""
    return dict(_BOUND.get())


def _trace_ids(value: Any) -> tuple[str, str | None] | None:
    """(trace id, span id or None) from a 32-hex trace id or a W3C traceparent."""
    if not isinstance(value, str):
        return None
    text = value.strip().lower()
    ids = parse_traceparent(text)
    if ids is not None:
        return f"{ids[0]:032x}", f"{ids[1]:016x}"
    if _TRACE_ID.match(text) and text != _INVALID_TRACE:
        return text, None
    return None


def record_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The structured fields of a record: bound ones, then its `extra`, then the trace ids
    (the current span's when there is one), the core fields first."""
    fields: dict[str, Any] = dict(_BOUND.get())
    for key, value in record.__dict__.items():
        if key in _STANDARD or key.startswith("_"):
            continue
        fields[ALIASES.get(key, key)] = value
    if record.name == "uvicorn.access" and isinstance(record.args, tuple) and len(record.args) == 5:
        client, method, path, _, status = record.args
        fields.setdefault("action", "http_request")
        fields.update(client=client, method=method, path=path, status=status)
    context = trace.get_current_span().get_span_context()
    if context.is_valid:
        fields["trace_id"] = format(context.trace_id, "032x")
        fields["span_id"] = format(context.span_id, "016x")
    elif "trace_id" in fields:
        ids = _trace_ids(fields["trace_id"])
        if ids is None:
            fields.pop("trace_id")
        else:
            fields["trace_id"] = ids[0]
            if ids[1] and not fields.get("span_id"):
                fields["span_id"] = ids[1]
    ordered = {k: fields.pop(k) for k in CORE if fields.get(k) is not None}
    ordered.update((k, v) for k, v in fields.items() if v is not None)
    return ordered


class JsonFormatter(logging.Formatter):
    """One JSON object a line: ts, level, logger, message, the fields, the exception."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line of JSON."""
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record_fields(record).items():
            out.setdefault(key, value)
        if record.exc_info and record.exc_info[0] is not None:
            out["exc_type"] = record.exc_info[0].__name__
            out["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exc"] = record.exc_text
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """`HH:MM:SS LEVEL logger message key=value ...`, the traceback below."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as a short line for people."""
        clock = time.strftime("%H:%M:%S", time.localtime(record.created))
        line = f"{clock} {record.levelname:<7} {record.name} {record.getMessage()}"
        fields = record_fields(record)
        fields.pop("span_id", None)  # the trace id leads to the trace; keep the line short
        pairs = " ".join(f"{k}={_text_value(v)}" for k, v in fields.items())
        if pairs:
            line += "  " + pairs
        if record.exc_info and record.exc_info[0] is not None:
            line += "\n" + self.formatException(record.exc_info)
        if record.stack_info:
            line += "\n" + self.formatStack(record.stack_info)
        return line


def _text_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    if not text or any(c.isspace() or c in '"=' for c in text):
        return json.dumps(text, ensure_ascii=False)
    return text


def _is_tty(stream: IO[str]) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def resolve_format(fmt: str, stream: IO[str]) -> Literal["json", "text"]:
    """`fmt` with "auto" decided: text on a terminal, else JSON."""
    if fmt == "json":
        return "json"
    if fmt == "text":
        return "text"
    if fmt != "auto":
        raise ValueError(f"log format must be auto, json or text, not {fmt!r}")
    return "text" if _is_tty(stream) else "json"


_INSTALLED: list[logging.Handler] = []


def configure_logging(
    level: str | int = "info", fmt: str = "auto", stream: IO[str] | None = None
) -> logging.Handler:
    """Send every log line (stalwart's, uvicorn's, libraries') to `stream` in `fmt`, at
    `level` and above. Calling it again replaces the handler it installed before."""
    out = stream if stream is not None else sys.stderr
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter() if resolve_format(fmt, out) == "json" else TextFormatter())
    root = logging.getLogger()
    for old in _INSTALLED:
        root.removeHandler(old)
    _INSTALLED[:] = [handler]
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    for name in _UVICORN:
        # uvicorn's own configuration gives these loggers handlers of their own: route them
        # through ours instead (the server is configured with log_config=None).
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.setLevel(logging.NOTSET)  # the root's level decides, not a level uvicorn left
        logger.propagate = True
    return handler
