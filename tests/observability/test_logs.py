"""Structured logs (`observability.logs`): JSON lines that name the action, tenant, job, step,
attempt and trace (from `extra`, from `bind(...)`, from the current OpenTelemetry span), text for
people on a terminal, exceptions serialised; and `stalwart worker --log-format json` in a
subprocess, whose every stderr line is JSON and whose step lines lead to the job's trace."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider

from stalwart import Client, Settings
from stalwart.observability.logs import (
    JsonFormatter,
    TextFormatter,
    bind,
    bound,
    configure_logging,
    resolve_format,
)
from stalwart.observability.tracing import trace_id_of
from stalwart.store import open_store

REPO = Path(__file__).resolve().parents[2]
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
UVICORN = ("uvicorn", "uvicorn.error", "uvicorn.access")


class Capture:
    """A logger of its own whose lines land in a buffer, formatted by `formatter`."""

    def __init__(self, formatter: logging.Formatter, name: str = "stalwart.test") -> None:
        self.buffer = io.StringIO()
        handler = logging.StreamHandler(self.buffer)
        handler.setFormatter(formatter)
        self.log = logging.getLogger(name)
        self.log.handlers = [handler]
        self.log.propagate = False
        self.log.setLevel(logging.DEBUG)

    def lines(self) -> list[str]:
        return self.buffer.getvalue().splitlines()

    def json(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.lines()]


@pytest.fixture
def capture() -> Iterator[Capture]:
    cap = Capture(JsonFormatter())
    yield cap
    cap.log.handlers = []
    cap.log.propagate = True


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """Put the root and uvicorn loggers back as they were (configure_logging changes them)."""
    root = logging.getLogger()
    saved = list(root.handlers), root.level
    loggers = {n: logging.getLogger(n) for n in UVICORN}
    before = {n: (list(lg.handlers), lg.propagate, lg.level) for n, lg in loggers.items()}
    yield
    root.handlers = saved[0]
    root.setLevel(saved[1])
    for name, (handlers, propagate, level) in before.items():
        loggers[name].handlers = handlers
        loggers[name].propagate = propagate
        loggers[name].setLevel(level)


def test_a_json_line_carries_the_fields_from_extra(capture: Capture) -> None:
    capture.log.info(
        "step failed: %s",
        "boom",
        extra={
            "action": "step_failed",
            "job": "job_1",
            "step": "fetch",
            "attempt": 2,
            "tenant_id": "acme",  # an alias: written as `tenant`
            "error_class": "transient",
            "seconds": 0.25,
            "owners": ["w1", "w2"],
            "opaque": object(),  # not JSON: written as its str()
        },
    )
    [line] = capture.json()
    assert list(line)[:9] == [
        "ts", "level", "logger", "message", "action", "tenant", "job", "step", "attempt",
    ]  # fmt: skip
    assert line["message"] == "step failed: boom" and line["level"] == "info"
    assert line["logger"] == "stalwart.test"
    assert (line["action"], line["tenant"], line["job"], line["step"], line["attempt"]) == (
        "step_failed",
        "acme",
        "job_1",
        "fetch",
        2,
    )
    assert line["error_class"] == "transient" and line["owners"] == ["w1", "w2"]
    assert line["opaque"].startswith("<object object")
    assert line["ts"].endswith("Z") and datetime.fromisoformat(line["ts"]).tzinfo is not None
    assert "trace_id" not in line  # none known: left out, not null


def test_bound_fields_reach_every_line_inside_and_only_there(capture: Capture) -> None:
    with bind(tenant="acme", job="job_1", trace_id=TRACEPARENT):
        with bind(step="fetch", attempt=3, worker=None):
            capture.log.info("inside", extra={"action": "tool_called"})
            assert bound() == {
                "tenant": "acme",
                "job": "job_1",
                "trace_id": TRACEPARENT,
                "step": "fetch",
                "attempt": 3,
            }
        capture.log.info("outer", extra={"job": "job_2"})  # extra wins over a bound field
    capture.log.info("after")
    inside, outer, after = capture.json()
    assert (inside["tenant"], inside["job"], inside["step"], inside["attempt"]) == (
        "acme",
        "job_1",
        "fetch",
        3,
    )
    # A traceparent gives the trace id and the span id, as hex.
    assert inside["trace_id"] == "0af7651916cd43dd8448eb211c80319c"
    assert inside["span_id"] == "b7ad6b7169203331" and "worker" not in inside
    assert outer["job"] == "job_2" and "step" not in outer
    assert not {"tenant", "job", "trace_id"} & set(after)


async def test_bound_fields_stay_with_their_task(capture: Capture) -> None:
    async def step(job: str) -> None:
        with bind(job=job, trace_id="a" * 32):
            await asyncio.sleep(0.01)
            capture.log.info("done")

    await asyncio.gather(step("job_a"), step("job_b"))
    assert sorted(line["job"] for line in capture.json()) == ["job_a", "job_b"]
    assert {line["trace_id"] for line in capture.json()} == {"a" * 32}


def test_the_current_span_gives_the_trace_id(capture: Capture) -> None:
    # A provider of this test's own: the global one is left alone.
    tracer = TracerProvider().get_tracer("test")
    with bind(trace_id=TRACEPARENT), tracer.start_as_current_span("step fetch") as span:
        capture.log.info("in a span")
        context = span.get_span_context()
    capture.log.info("no span", extra={"trace_id": "not a trace id"})
    in_span, outside = capture.json()
    assert in_span["trace_id"] == f"{context.trace_id:032x}" != TRACEPARENT.split("-")[1]
    assert in_span["span_id"] == f"{context.span_id:016x}"
    assert "trace_id" not in outside  # a malformed id is dropped, not passed on


def test_exceptions_are_serialised(capture: Capture) -> None:
    try:
        raise ValueError("bad input")
    except ValueError:
        capture.log.exception("it failed", extra={"action": "alert_hook_failed"})
    [line] = capture.json()
    assert line["level"] == "error" and line["exc_type"] == "ValueError"
    assert "Traceback" in line["exc"] and "ValueError: bad input" in line["exc"]
    assert len(capture.lines()) == 1  # the traceback stays inside the one line


def test_text_lines_are_short_and_readable() -> None:
    cap = Capture(TextFormatter(), "stalwart.text")
    with bind(job="job_1"):
        cap.log.warning("lease lost", extra={"action": "step_lease_lost", "why": "two words"})
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        cap.log.exception("crashed")
    first, second, *trace = cap.lines()
    assert re.fullmatch(
        r"\d\d:\d\d:\d\d WARNING stalwart\.text lease lost  "
        r'action=step_lease_lost job=job_1 why="two words"',
        first,
    ), first
    assert re.fullmatch(r"\d\d:\d\d:\d\d ERROR   stalwart\.text crashed", second), second
    assert trace[0].startswith("Traceback") and trace[-1] == "RuntimeError: boom"


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_auto_is_json_unless_the_stream_is_a_terminal(restore_logging: None) -> None:
    assert resolve_format("auto", io.StringIO()) == "json"
    assert resolve_format("auto", Terminal()) == "text"
    assert resolve_format("text", io.StringIO()) == "text"
    with pytest.raises(ValueError, match="auto, json or text"):
        resolve_format("yaml", io.StringIO())

    piped = io.StringIO()
    handler = configure_logging("info", "auto", piped)
    assert isinstance(handler.formatter, JsonFormatter)
    again = configure_logging("warning", "auto", Terminal())  # replaces the first handler
    assert isinstance(again.formatter, TextFormatter)
    root = logging.getLogger()
    assert handler not in root.handlers and again in root.handlers
    assert root.level == logging.WARNING


def test_uvicorns_loggers_go_through_the_same_handler(restore_logging: None) -> None:
    access = logging.getLogger("uvicorn.access")
    access.addHandler(logging.NullHandler())  # as uvicorn's own configuration would
    access.propagate = False
    out = io.StringIO()
    configure_logging("info", "json", out)
    access.info('%s - "%s %s HTTP/%s" %d', "127.0.0.1:5000", "GET", "/v1/jobs", "1.1", 200)
    logging.getLogger("uvicorn.error").info("Application startup complete.")
    access_line, error_line = (json.loads(line) for line in out.getvalue().splitlines())
    assert access_line["action"] == "http_request" and access_line["status"] == 200
    assert (access_line["method"], access_line["path"]) == ("GET", "/v1/jobs")
    assert error_line["logger"] == "uvicorn.error"


# -- a worker process ----------------------------------------------------------------------------


async def _submit(db: str) -> tuple[Any, Any]:
    from tests.api.server_app import app

    store = open_store(db, Settings(database_url=db))
    try:
        await store.migrate()
        client = Client(store, app=app)
        doomed = await client.submit("doomed", {"customer": "c", "amount": 5}, tenant="acme")
        order = await client.submit("order", {"customer": "c", "amount": 5}, tenant="acme")
        return doomed.job, order.job
    finally:
        await store.close()


def _statuses(path: Path) -> list[str]:
    with sqlite3.connect(path) as con:
        return [r[0] for r in con.execute("SELECT status FROM jobs ORDER BY id")]


def test_a_worker_writes_json_lines_that_lead_to_the_job_and_its_trace(tmp_path: Path) -> None:
    path = tmp_path / "worker.db"
    db = f"sqlite:///{path}"
    doomed, _ = asyncio.run(_submit(db))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STALWART_", "OTEL_"))}
    env.update(STALWART_POLL_INTERVAL_SECONDS="0.05", PYTHONUNBUFFERED="1")
    with (tmp_path / "stderr").open("w") as err, (tmp_path / "stdout").open("w") as out:
        proc = subprocess.Popen(
            [
                sys.executable, "-m", "stalwart.cli.main", "--app", "tests.api.server_app:app",
                "--database-url", db, "worker", "--worker-id", "w-json", "--log-format", "json",
            ],
            cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 30
            while sorted(_statuses(path)) != ["completed", "dead_lettered"]:
                assert time.monotonic() < deadline, _statuses(path)
                assert proc.poll() is None, (tmp_path / "stderr").read_text()
                time.sleep(0.1)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    text = (tmp_path / "stderr").read_text()
    lines = [json.loads(line) for line in text.splitlines()]  # every line is JSON
    assert lines and all({"ts", "level", "logger", "message"} <= set(x) for x in lines)
    actions = [x.get("action") for x in lines]
    assert actions[0] == "worker_ready" and "worker_stopped" in actions
    failed = [x for x in lines if x.get("action") == "step_failed"]
    assert [(x["job"], x["step"], x["attempt"]) for x in failed] == [
        (doomed.id, "call", 1),
        (doomed.id, "call", 2),
    ]
    # The step's lines carry the trace id of the job's trace.
    assert {x["trace_id"] for x in failed} == {trace_id_of(doomed.trace_context)}
    assert (tmp_path / "stdout").read_text() == ""


def test_serve_writes_uvicorns_lines_as_json_too(tmp_path: Path) -> None:
    import httpx

    from stalwart.api.server import free_port

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STALWART_", "OTEL_"))}
    with (tmp_path / "stderr").open("w") as err:
        proc = subprocess.Popen(
            [
                sys.executable, "-m", "stalwart.cli.main", "--app", "tests.api.server_app:app",
                "--database-url", f"sqlite:///{tmp_path / 'serve.db'}", "serve", "--port",
                str(port), "--workers", "0", "--log-format", "json",
            ],
            cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    assert httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200
                    break
                except httpx.TransportError:
                    assert time.monotonic() < deadline and proc.poll() is None
                    time.sleep(0.1)
            proc.send_signal(signal.SIGTERM)
            # uvicorn drains, then re-raises the signal: that is how serve ends.
            assert proc.wait(timeout=30) in (0, -signal.SIGTERM)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    lines = [json.loads(line) for line in (tmp_path / "stderr").read_text().splitlines()]
    assert lines[0]["action"] == "server_ready"
    assert {"uvicorn.error", "uvicorn.access"} <= {x["logger"] for x in lines}
    [request] = [x for x in lines if x.get("action") == "http_request"]
    assert (request["method"], request["path"], request["status"]) == ("GET", "/healthz", 200)
    assert not any("color_message" in x for x in lines)
