"""One trace per job: a job whose steps run in two worker processes produces one trace with the
expected span tree and attributes; content is recorded only when opted in."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from pydantic import BaseModel
from tests.integration.conftest import Workers
from tests.observability.traced_app import SPANS_ENV, build_app, span_dict

from stalwart import App, Client, ScriptedModel, Settings
from stalwart.observability.tracing import is_sampled, parse_traceparent, tracer_provider
from stalwart.store import open_store

_EXPORTER: InMemorySpanExporter | None = None


@pytest.fixture
def spans() -> InMemorySpanExporter:
    """This process's spans, in memory (the global provider is set once per process)."""
    global _EXPORTER
    if _EXPORTER is None:
        _EXPORTER = InMemorySpanExporter()
        provider = trace.get_tracer_provider()
        if not isinstance(provider, TracerProvider):
            provider = tracer_provider()
            trace.set_tracer_provider(provider)
        provider.add_span_processor(SimpleSpanProcessor(_EXPORTER))
    _EXPORTER.clear()
    return _EXPORTER


def settings(url: str, **more: Any) -> Settings:
    return Settings(
        database_url=url, poll_interval_seconds=0.05, reaper_interval_seconds=0.2, **more
    )


async def wait_status(client: Client, job_id: str, status: str, within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while (job := await client.get(job_id)).status != status:
        assert time.monotonic() < deadline, f"job is {job.status}, not {status}"
        await asyncio.sleep(0.05)


def read_spans(*paths: Path) -> list[dict[str, Any]]:
    out = []
    for path in paths:
        if path.exists():
            out += [json.loads(line) for line in path.read_text().splitlines() if line]
    return out


def test_a_job_run_by_two_worker_processes_is_one_trace(
    tmp_path: Path, spans: InMemorySpanExporter
) -> None:
    url = f"sqlite:///{tmp_path / 'traced.db'}"
    app = build_app(settings(url))
    workers = Workers(tmp_path)

    async def submit() -> Any:
        store = open_store(url)
        await store.migrate()
        try:
            return (
                await Client(store, app=app).submit("order", {"customer": "c", "amount": 5})
            ).job
        finally:
            await store.close()

    async def wait(status: str) -> Any:
        store = open_store(url)
        try:
            client = Client(store)
            await wait_status(client, job.id, status)
            if status == "waiting_approval":
                review = (await client.reviews())[0]
                await client.approve(review.id, reviewer="alice", comment="fine")
            return await client.get(job.id)
        finally:
            await store.close()

    job = asyncio.run(submit())
    files = [tmp_path / "spans-a.jsonl", tmp_path / "spans-b.jsonl"]
    try:
        # Worker A runs `find`; `pay` then waits for a reviewer. A stops; B runs `pay`.
        a = workers.start(url, "tests.observability.traced_app:app", env={SPANS_ENV: str(files[0])})
        asyncio.run(wait("waiting_approval"))
        a.signal(signal.SIGTERM)
        assert a.stop() == 0
        b = workers.start(url, "tests.observability.traced_app:app", env={SPANS_ENV: str(files[1])})
        finished = asyncio.run(wait("completed"))
        b.signal(signal.SIGTERM)
        assert b.stop() == 0
    finally:
        workers.close()

    here = [span_dict(s) for s in spans.get_finished_spans()]
    everything = here + read_spans(*files)
    ids = parse_traceparent(finished.trace_context)
    assert ids is not None
    trace_id, root_id = f"{ids[0]:032x}", f"{ids[1]:016x}"
    mine = [s for s in everything if s["trace_id"] == trace_id]
    by_name: dict[str, list[dict[str, Any]]] = {}
    for s in mine:
        by_name.setdefault(s["name"], []).append(s)

    # One trace: the root made at submit, emitted by the process that saw the job finish.
    (root,) = by_name["invoke_workflow order"]
    assert root["span_id"] == root_id and root["parent_id"] is None
    assert root["attributes"]["stalwart.job"] == job.id
    assert root["attributes"]["stalwart.status"] == "completed"
    (plan,) = by_name["plan order"]
    (find,) = by_name["step find"]
    (pay,) = by_name["step pay"]
    (review,) = by_name["review approved"]
    for child in (plan, find, pay, review):
        assert child["parent_id"] == root_id
    # The two steps ran in two different worker processes, neither of them this one.
    pids = {find["pid"], pay["pid"]}
    assert len(pids) == 2 and plan["pid"] not in pids
    assert root["pid"] == pay["pid"]
    tools = by_name["execute_tool lookup"]
    assert sorted(t["parent_id"] for t in tools) == sorted([find["span_id"], pay["span_id"]])
    for tool in tools:
        attrs = tool["attributes"]
        assert attrs["gen_ai.operation.name"] == "execute_tool"
        assert attrs["gen_ai.tool.name"] == "lookup"
        assert attrs["gen_ai.tool.call.id"]
        assert attrs["stalwart.idempotency_key"].startswith(f"default:{job.id}:")
        # Content only when opted in.
        assert "gen_ai.tool.call.arguments" not in attrs
        assert "gen_ai.tool.call.result" not in attrs
    assert find["attributes"]["stalwart.attempt"] == 1
    assert find["attributes"]["stalwart.tenant"] == "default"
    assert review["attributes"]["stalwart.review.reviewer"] == "alice"
    # The plan is made at submit, just before the job (and its clock) is stored.
    assert abs(plan["start"] - root["start"]) < 1e9 and pay["end"] <= root["end"]
    assert all(s["status"] != "ERROR" for s in mine)


class Reading(BaseModel):
    vendor: str
    amount: float


def llm_app(url: str, *, content: bool) -> App:
    app = App(settings(url, trace_content=content))
    app.schema(Reading)
    reader = ScriptedModel("reader")
    reader.on_step("read", {"vendor": "acme", "amount": 12.5})
    app.model("scripted:reader", reader)
    app.route("small", ["scripted:reader"])
    app.workflow(
        "read",
        input=Reading,
        templates=[
            {
                "name": "read",
                "steps": [
                    {
                        "id": "read",
                        "kind": "llm",
                        "purpose": "extraction",
                        "prompt": "Read ${input.vendor}",
                        "output": "Reading",
                        "max_tokens": 50,
                    }
                ],
            }
        ],
    )
    return app


async def run_llm_job(url: str, *, content: bool) -> Any:
    app = llm_app(url, content=content)
    store = open_store(url, app.settings)
    await store.migrate()
    worker = app.worker(store=store, worker_id="tracer")
    task = asyncio.create_task(worker.run())
    try:
        client = Client(store, app=app)
        job = (await client.submit("read", {"vendor": "acme", "amount": 1})).job
        await wait_status(client, job.id, "completed")
        return await client.get(job.id)
    finally:
        worker.stop()
        await task
        await store.close()


@pytest.mark.parametrize("content", [False, True])
async def test_model_calls_are_chat_spans_with_genai_attributes(
    tmp_path: Path, spans: InMemorySpanExporter, content: bool
) -> None:
    job = await run_llm_job(f"sqlite:///{tmp_path / 'llm.db'}", content=content)
    ids = parse_traceparent(job.trace_context)
    assert ids is not None
    mine = [span_dict(s) for s in spans.get_finished_spans()]
    mine = [s for s in mine if s["trace_id"] == f"{ids[0]:032x}"]
    (chat,) = [s for s in mine if s["name"] == "chat reader"]
    (step,) = [s for s in mine if s["name"] == "step read"]
    assert chat["parent_id"] == step["span_id"]
    attrs = chat["attributes"]
    assert attrs["gen_ai.operation.name"] == "chat"
    assert attrs["gen_ai.provider.name"] == "scripted"
    assert attrs["gen_ai.request.model"] == "reader"
    assert attrs["gen_ai.response.model"]
    assert attrs["gen_ai.usage.input_tokens"] > 0
    assert attrs["gen_ai.usage.output_tokens"] > 0
    assert "gen_ai.usage.cache_read.input_tokens" in attrs
    assert attrs["stalwart.cost_usd"] == 0.0
    assert attrs["stalwart.cache_hit"] is False
    assert attrs["stalwart.job"] == job.id
    assert ("gen_ai.input.messages" in attrs) is content
    assert ("gen_ai.output.messages" in attrs) is content
    if content:
        assert "Read acme" in attrs["gen_ai.input.messages"]
        assert "12.5" in attrs["gen_ai.output.messages"]
    (root,) = [s for s in mine if s["name"] == "invoke_workflow read"]
    assert root["span_id"] == f"{ids[1]:016x}"


async def test_a_job_the_sampler_leaves_out_has_no_span_in_any_process(
    tmp_path: Path, spans: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Head sampling is decided once, at submit, by the submitting process's sampler and stored
    # in the traceparent's flag; the worker follows the flag, whatever its own sampler says.
    provider = trace.get_tracer_provider()
    assert isinstance(provider, TracerProvider)
    url = f"sqlite:///{tmp_path / 'sampled.db'}"
    app = llm_app(url, content=False)
    store = open_store(url, app.settings)
    await store.migrate()
    try:
        client = Client(store, app=app)
        with monkeypatch.context() as patch:
            patch.setattr(provider, "sampler", ParentBased(TraceIdRatioBased(0.0)))
            left_out = (await client.submit("read", {"vendor": "acme", "amount": 1})).job
        kept = (await client.submit("read", {"vendor": "acme", "amount": 2})).job
        assert not is_sampled(left_out.trace_context) and is_sampled(kept.trace_context)
        worker = app.worker(store=store, worker_id="sampler")
        task = asyncio.create_task(worker.run())
        try:
            for job in (left_out, kept):
                await wait_status(client, job.id, "completed")
        finally:
            worker.stop()
            await task
    finally:
        await store.close()
    by_trace: dict[str, set[str]] = {}
    for s in spans.get_finished_spans():
        by_trace.setdefault(span_dict(s)["trace_id"], set()).add(s.name)
    ids = [parse_traceparent(j.trace_context) for j in (left_out, kept)]
    assert ids[0] is not None and ids[1] is not None
    assert f"{ids[0][0]:032x}" not in by_trace
    assert by_trace[f"{ids[1][0]:032x}"] == {
        "plan read",
        "step read",
        "chat reader",
        "invoke_workflow read",
    }


async def test_a_failed_job_has_an_error_root_and_error_type(
    tmp_path: Path, spans: InMemorySpanExporter
) -> None:
    url = f"sqlite:///{tmp_path / 'fail.db'}"
    app = build_app(settings(url))
    store = open_store(url, app.settings)
    await store.migrate()
    try:
        client = Client(store, app=app)
        job = (await client.submit("order", {"customer": "c", "amount": 5})).job
        cancelled = await client.cancel(job.id, actor="ops", reason="not needed")
    finally:
        await store.close()
    ids = parse_traceparent(cancelled.trace_context)
    assert ids is not None
    roots = [span_dict(s) for s in spans.get_finished_spans() if s.name == "invoke_workflow order"]
    (root,) = [r for r in roots if r["span_id"] == f"{ids[1]:016x}"]
    assert root["status"] == "ERROR"
    assert root["attributes"]["error.type"] == "cancelled"


async def test_an_agent_step_traces_its_loop(tmp_path: Path, spans: InMemorySpanExporter) -> None:
    """`invoke_agent {step}` under the step's span, a `chat {model}` per turn and an
    `execute_tool {tool}` per call under it (GenAI conventions)."""
    from tests.integration.test_agent_steps import Harness

    from stalwart.llm import CallTools

    model = ScriptedModel("agent").on_step(
        "agent",
        CallTools(("lookup_order", {"order": 7})),
        CallTools(("lookup_order", {"order": 8})),
        {"refunded": False, "amount": 25.0},
    )
    async with Harness(f"sqlite:///{tmp_path}/a.db", model) as h:
        job = await h.submit()
        assert await h.until(job) == "completed"
    finished = spans.get_finished_spans()
    by_name: dict[str, list[Any]] = {}
    for span in finished:
        by_name.setdefault(span.name, []).append(span)
    [agent] = by_name["invoke_agent agent"]
    [step] = by_name["step agent"]
    assert agent.parent is not None and agent.parent.span_id == step.context.span_id
    assert agent.attributes is not None
    assert agent.attributes["gen_ai.operation.name"] == "invoke_agent"
    chats = by_name["chat agent"]
    tools = by_name["execute_tool lookup_order"]
    assert len(chats) == 3 and len(tools) == 2
    for child in chats + tools:
        assert child.parent is not None and child.parent.span_id == agent.context.span_id
    assert [t.attributes["gen_ai.tool.call.id"] for t in tools] == ["call_1", "call_2"]
    assert all(t.attributes["stalwart.idempotency_key"].endswith(".0") for t in tools)
