"""MCP tools against a real MCP server (tests/fakes/mcp_server.py, written with the official
SDK) over stdio and over streamable HTTP on 127.0.0.1: registration from the server's schemas,
calls, structured output, errors mapped to error classes, timeouts, reconnection, and a job
whose steps are MCP tools completing on a worker (both backends)."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel
from tests.integration.conftest import Workers, query, wait_until

from stalwart import App, Settings
from stalwart.errors import ErrorClass
from stalwart.store import open_store
from stalwart.tools.context import ToolContext
from stalwart.tools.invoke import invoke_tool
from stalwart.tools.mcp import SESSIONS, McpConfigurationError, McpTool

REPO = Path(__file__).resolve().parents[2]
STDIO = [sys.executable, "-m", "tests.fakes.mcp_server", "stdio"]
FAST = {"lease_seconds": 2.0, "poll_interval_seconds": 0.02, "reaper_interval_seconds": 0.05}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_http_server(port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.fakes.mcp_server", "http", str(port)],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return proc
        except OSError:
            assert proc.poll() is None, "the MCP server exited"
            assert time.monotonic() < deadline, "the MCP server did not listen in time"
            time.sleep(0.05)


@pytest.fixture(scope="module")
def http_url() -> Iterator[str]:
    port = free_port()
    proc = start_http_server(port)
    try:
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(params=["stdio", "http"])
def server(request: pytest.FixtureRequest) -> dict[str, Any]:
    """How to reach the fake server: `command=` or `url=`."""
    if request.param == "stdio":
        return {"command": STDIO, "cwd": str(REPO)}
    return {"url": request.getfixturevalue("http_url")}


def ctx(step: str = "s1") -> ToolContext:
    return ToolContext(
        tenant_id="t",
        job_id="j",
        step_id=step,
        attempt=1,
        idempotency_key=f"t:j:{step}",
        deadline=time.time() + 60,
    )


def mcp_app(server: dict[str, Any], db_url: str = "sqlite:///:memory:", **kw: Any) -> App:
    app = App(Settings(database_url=db_url, **FAST))
    app.mcp(
        "fake",
        prefix="fake_",
        timeout=20,
        tools={
            "count": McpTool(idempotent=True, concurrency=2, rate_limit="5/s"),
            "sleepy": McpTool(timeout=0.5, risk="high"),
        },
        **server,
        **kw,
    )
    return app


def test_the_tools_are_registered_from_the_servers_schemas(server: dict[str, Any]) -> None:
    app = mcp_app(server)
    assert "fake_add" not in app.tools  # nothing is listed (nor connected) at declaration
    app.load_mcp()
    names = {n for n in app.tools.names() if n.startswith("fake_")}
    tools = ("add", "weather", "fail", "busy", "sleepy", "count", "whoami")
    assert names == {f"fake_{n}" for n in tools}

    add = app.tools.get("fake_add")
    assert add is not None
    schema = add.args_model.model_json_schema()
    assert schema["properties"]["a"]["type"] == "integer" and schema["required"] == ["a", "b"]
    assert set(add.args_model.model_fields) == {"a", "b"}
    assert add.description == "Add two integers and say the sum as text."
    # Defaults: not idempotent, low risk, the server's timeout; per-tool contracts override.
    assert (add.idempotent, add.risk, add.timeout_seconds) == (False, "low", 20)
    count = app.tools.get("fake_count")
    sleepy = app.tools.get("fake_sleepy")
    assert count is not None and sleepy is not None
    assert count.idempotent is True and (sleepy.timeout_seconds, sleepy.risk) == (0.5, "high")
    limit = app.limits["tool:fake_count"]
    assert limit.concurrency == 2 and limit.rate == 5.0
    weather = app.tools.get("fake_weather")
    assert weather is not None
    assert set(weather.result_model.model_fields) == {"city", "celsius", "sunny"}
    assert weather.args_model.model_fields["days"].is_required() is False
    # What an agent step offers a model: the server's own schemas.
    described = weather.describe()
    assert described["args_schema"]["title"] == "weatherArguments"
    assert set(described["result_schema"]["properties"]) == {"city", "celsius", "sunny"}


def test_include_takes_only_the_named_tools_and_names_a_missing_one(
    server: dict[str, Any],
) -> None:
    app = App(Settings(database_url="sqlite:///:memory:"))
    app.mcp("fake", include=["add"], **server)
    app.load_mcp()
    assert "add" in app.tools and "weather" not in app.tools

    app = App(Settings(database_url="sqlite:///:memory:"))
    app.mcp("fake", include=["ad"], **server)
    with pytest.raises(McpConfigurationError, match="no tool named ad"):
        app.load_mcp()


def test_a_server_that_does_not_start_fails_at_load_not_at_declaration() -> None:
    app = App(Settings(database_url="sqlite:///:memory:"))
    app.mcp("broken", command=[sys.executable, "-c", "import sys; sys.exit(3)"])
    with pytest.raises(McpConfigurationError, match="could not be listed"):
        app.load_mcp()


async def test_calls_results_errors_and_timeouts(server: dict[str, Any]) -> None:
    app = mcp_app(server)
    await app.load_mcp_async()

    async def call(name: str, args: dict[str, Any]) -> Any:
        spec = app.tools.get(name)
        assert spec is not None
        return await invoke_tool(spec, args, ctx(), timeout_seconds=spec.timeout_seconds or 20)

    try:
        assert (await call("fake_add", {"a": 2, "b": 3})).output == {"result": "5"}
        # The step's idempotency key is sent in the request's _meta.
        assert (await call("fake_whoami", {})).output == {"result": "t:j:s1"}
        weather = await call("fake_weather", {"city": "Oslo", "days": 2})
        assert weather.output == {"city": "Oslo", "celsius": 23.5, "sunny": True}

        failed = (await call("fake_fail", {"reason": "no"})).error
        assert failed.error_class is ErrorClass.NON_RETRIABLE
        assert "refused: no" in failed.message and failed.code == "mcp_tool_error"
        busy = (await call("fake_busy", {})).error
        assert busy.error_class is ErrorClass.TRANSIENT

        # Arguments are checked against the server's schema before any call.
        bad = (await call("fake_add", {"a": "x"})).error
        assert bad.error_class is ErrorClass.INVALID_ARGUMENTS
        fields = {d["field"] for d in bad.details["errors"]}
        assert fields == {"a", "b"}

        slow = (await call("fake_sleepy", {"seconds": 5})).error
        assert slow.error_class is ErrorClass.TRANSIENT and slow.code == "timeout"
        # The session is still usable after a call that was cut off, by many steps at once.
        sums = await asyncio.gather(*(call("fake_add", {"a": n, "b": 1}) for n in range(8)))
        assert [s.output for s in sums] == [{"result": str(n + 1)} for n in range(8)]
    finally:
        await SESSIONS.aclose()


async def test_one_session_per_server_and_a_new_one_after_a_failure(tmp_path: Path) -> None:
    count_file = tmp_path / "count.txt"
    app = App(Settings(database_url="sqlite:///:memory:"))
    app.mcp(
        "fake",
        command=STDIO,
        cwd=str(REPO),
        env={"FAKE_MCP_COUNT_FILE": str(count_file)},
        tools={"count": McpTool(idempotent=True)},
    )
    await app.load_mcp_async()
    server = app.mcp_servers["fake"]
    spec = app.tools.get("count")
    assert spec is not None
    try:
        for label in ("a", "b"):
            out = await invoke_tool(spec, {"label": label}, ctx(), timeout_seconds=20)
            assert out.output == {"result": f"counted {label}"}
        first = await SESSIONS.client(server)
        assert await SESSIONS.client(server) is first  # reused, not reopened per call

        # The server process dies: the call in flight fails as transient, the next one
        # opens a new session (a new process) and succeeds.
        await first.call_tool("fail", {"reason": "warm"})
        _kill_children()
        broken = await invoke_tool(spec, {"label": "c"}, ctx(), timeout_seconds=20)
        assert broken.error is not None
        assert broken.error.error_class is ErrorClass.TRANSIENT, broken.error
        again = await invoke_tool(spec, {"label": "d"}, ctx(), timeout_seconds=20)
        assert again.output == {"result": "counted d"}
        assert await SESSIONS.client(server) is not first
        assert count_file.read_text().split() == ["a", "b", "d"]
    finally:
        await SESSIONS.aclose()


def _kill_children() -> None:
    """Kill the stdio MCP servers this process started."""
    import os
    import signal

    out = subprocess.run(
        ["pgrep", "-P", str(os.getpid()), "-f", "tests.fakes.mcp_server stdio"],
        capture_output=True,
        text=True,
        check=False,
    )
    pids = [int(p) for p in out.stdout.split()]
    assert pids, "no stdio MCP server to kill"
    for pid in pids:
        os.kill(pid, signal.SIGKILL)


class CityInput(BaseModel):
    a: int
    b: int


async def _run_job(app: App) -> dict[str, Any]:
    store = app.store()
    await store.migrate()
    client = app.client()
    # Submitting lists the MCP tools (off the event loop) to validate the plan.
    job_id = (await client.submit("mcp_job", {"a": 4, "b": 5})).job.id
    assert "fake_add" in app.tools
    worker = app.worker(worker_id="w-mcp")
    task = asyncio.create_task(worker.run())
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 60
        while (job := await client.get(job_id)).status not in ("completed", "failed", "escalated"):
            assert loop.time() < deadline, "the job did not finish in time"
            await asyncio.sleep(0.05)
        assert job.status == "completed", job
        steps = await client.steps(job_id)
        return {s.key: s.output for s in steps}
    finally:
        worker.stop()
        await asyncio.wait_for(task, 15)
        await SESSIONS.aclose()
        await store.close()


def test_a_job_whose_steps_are_mcp_tools_completes_on_a_worker(
    db_url: str, server: dict[str, Any]
) -> None:
    app = mcp_app(server, db_url)
    app.workflow(
        "mcp_job",
        input=CityInput,
        templates=[
            {
                "name": "mcp_job",
                "steps": [
                    {
                        "id": "add",
                        "tool": "fake_add",
                        "args": {"a": "${input.a}", "b": "${input.b}"},
                    },
                    {
                        "id": "weather",
                        "tool": "fake_weather",
                        "args": {"city": "${steps.add.output.result}"},
                    },
                ],
            }
        ],
    )
    outputs = asyncio.run(_run_job(app))
    assert outputs["add"] == {"result": "9"}
    assert outputs["weather"] == {"city": "9", "celsius": 22.5, "sunny": True}


def test_a_stalwart_worker_process_runs_mcp_steps(
    db_url: str, workers: Workers, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through `stalwart worker` (a subprocess): it lists the server's tools at start, off its
    event loop, launches the stdio server itself, and each call runs exactly once."""
    count_file = tmp_path / "count.txt"
    monkeypatch.setenv("FAKE_MCP_COUNT_FILE", str(count_file))

    async def submit() -> str:
        from tests.integration.apps.mcp_app import app

        store = open_store(db_url, Settings(database_url=db_url))
        try:
            await store.migrate()
            return (await app.client(store).submit("mcp_count", {"label": "x"})).job.id
        finally:
            await store.close()

    job_id = asyncio.run(submit())
    worker = workers.start(db_url, "mcp_app", env={"FAKE_MCP_COUNT_FILE": str(count_file)})

    def finished() -> bool:
        rows = query(db_url, "SELECT status FROM jobs WHERE id = ?", (job_id,))
        return bool(rows) and rows[0][0] in ("completed", "failed", "escalated")

    try:
        wait_until(finished, 90, what="the MCP job to finish")
    except BaseException:
        print(workers.logs())
        raise
    assert query(db_url, "SELECT status FROM jobs WHERE id = ?", (job_id,)) == [("completed",)]
    assert count_file.read_text().split() == ["x-1", "counted", "x-1"]
    # A drained worker closes its MCP session (and the server process) without a traceback.
    assert worker.stop(timeout=30) == 0, workers.logs()
    assert "Traceback" not in worker.output(), worker.output()


async def test_an_http_server_that_restarts_is_reached_again() -> None:
    port = free_port()
    proc = await asyncio.to_thread(start_http_server, port)
    app = App(Settings(database_url="sqlite:///:memory:"))
    app.mcp("web", url=f"http://127.0.0.1:{port}/mcp", timeout=10)
    await app.load_mcp_async()
    spec = app.tools.get("add")
    assert spec is not None
    try:
        assert (await invoke_tool(spec, {"a": 1, "b": 2}, ctx(), timeout_seconds=10)).output
        proc.kill()
        await asyncio.to_thread(proc.wait)
        down = await invoke_tool(spec, {"a": 1, "b": 2}, ctx(), timeout_seconds=10)
        assert down.error is not None and down.error.error_class is ErrorClass.TRANSIENT
        assert down.error.code == "connection", down.error
        proc = await asyncio.to_thread(start_http_server, port)
        up = await invoke_tool(spec, {"a": 2, "b": 2}, ctx(), timeout_seconds=10)
        assert up.output == {"result": "4"}, up.error
    finally:
        await SESSIONS.aclose()
        proc.kill()
        proc.wait()


async def test_a_server_that_never_finishes_its_handshake_is_given_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from stalwart.tools import mcp as mcp_module

    monkeypatch.setattr(mcp_module, "CONNECT_TIMEOUT_SECONDS", 1.0)
    server = mcp_module.declare(
        "mute",
        command=[sys.executable, "-c", "import time; time.sleep(120)"],
        url=None,
        env=None,
        cwd=None,
        headers=None,
        prefix=None,
        include=None,
        defaults=McpTool(),
        tools=None,
    )
    call = mcp_module.make_tool_function(server, "anything")
    model = mcp_module.args_model("anything", {"type": "object", "properties": {}})
    try:
        for _ in range(2):  # the second call opens a new session, and gives up as well
            with pytest.raises(mcp_module.TransientError, match="handshake"):
                await asyncio.wait_for(call(model(), ctx()), 60)
    finally:
        await SESSIONS.aclose()


def test_an_agent_step_calls_mcp_tools(db_url: str, server: dict[str, Any]) -> None:
    """MCP tools are ordinary tools to an agent step: offered with the server's schemas, called
    with the model's arguments, their structured output read back by the model."""
    from stalwart.llm import CallTools, ScriptedModel
    from stalwart.llm.types import ModelRequest

    def answer(request: ModelRequest) -> Any:
        done = [m.content for m in request.messages if m.role == "tool"]
        if not done:
            offered = sorted(t.name for t in request.tools)
            assert "fake_weather" in offered and "fake_add" in offered, offered
            return CallTools(("fake_add", {"a": 4, "b": 5}))
        if len(done) == 1:
            return CallTools(("fake_weather", {"city": "Oslo"}))
        return f"sum {done[0]}; weather {done[1]}"

    model = ScriptedModel("agent").on_step("agent", answer)
    app = mcp_app(server, db_url)
    app.model("scripted:agent", model)
    app.route("small", ["scripted:agent"])
    app.workflow(
        "mcp_job",
        input=CityInput,
        templates=[
            {
                "name": "mcp_job",
                "steps": [
                    {
                        "id": "agent",
                        "kind": "agent",
                        "prompt": "Add ${input.a} and ${input.b}, then get the weather.",
                        "tools": ["fake_add", "fake_weather"],
                        "tier": "small",
                    }
                ],
            }
        ],
    )
    outputs = asyncio.run(_run_job(app))
    text = outputs["agent"]["text"]
    assert '"result": "9"' in text and '"celsius": 22.5' in text
