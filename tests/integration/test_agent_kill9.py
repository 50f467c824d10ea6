"""Agent steps under kill -9, in worker processes, on both backends.

The model is the local provider server (OpenAI protocol), scripted by the tool results already in
each request: turn 1 calls `tool_a`, turn 2 `tool_b`, turn 3 a third tool, turn 4 answers. The
tools of apps/agent_app.py append a line per execution to a file and record their effect with
`ctx.on_commit` into the test's own table `agent_effects`.

- The worker dies while the server holds turn 3's request, right after call 2 committed: a new
  worker asks turn 3 again from the recorded transcript (the same request the dead worker sent,
  both tool results in it), never asks turns 1 and 2 again, never runs tools A and B again.
- The worker dies while the third call runs: an idempotent tool runs again under the same key; a
  tool that is not idempotent is not run blindly: the step parks with an `agent_interrupted`
  review, and once approved the call runs again under the same key and the job completes.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.fakes.provider_server import Answer, CallTools, ProviderServer, RecordedRequest
from tests.integration.apps import agent_app
from tests.integration.conftest import Worker, Workers, execute, query, wait_until

from stalwart.client import Client
from stalwart.store import open_store

PRICE = {"input_per_mtok": 100.0, "output_per_mtok": 100.0}  # $0.0001 a token
DONE = ("completed", "failed", "escalated", "dead_lettered", "rejected", "cancelled")
THIRD = {"plain": "tool_c", "hold": "tool_c", "idempotent": "slow_idem", "write": "slow_write"}
ANSWER = "All three things are done."
THIRD_ORDER = ("tool_a", "tool_b", "tool_c")
MODE = re.compile(r"Mode (\w+):")
DEADLINE = 90.0  # generous: worker starts take seconds on a loaded machine
# No lease expires under load while a worker lives: a restarted worker takes back the dead
# one's lease at once anyway (same host, dead pid).
LEASE_SECONDS = "15"


class Script:
    """The responder: the next turn by the tool results the request already carries. In mode
    `hold`, the first request for turn 3 is held until `release` is set."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.held = threading.Event()

    def __call__(self, request: RecordedRequest) -> Answer:
        done = len(request.tool_results)
        found = MODE.search(request.message_texts[1])
        assert found is not None, request.message_texts[1]
        mode = found.group(1)
        if done == 0:
            return CallTools((("tool_a", {"label": "a"}),), text="First A.")
        if done == 1:
            return CallTools((("tool_b", {"label": "b"}),))
        if done == 2:
            if mode == "hold" and not self.held.is_set():
                self.held.set()
                self.release.wait(DEADLINE)
            return CallTools(((THIRD[mode], {"label": "c"}),))
        return ANSWER


@pytest.fixture
def script() -> Iterator[Script]:
    script = Script()
    try:
        yield script
    finally:
        script.release.set()  # never leave a server thread waiting


@pytest.fixture
def server(script: Script) -> Iterator[ProviderServer]:
    with ProviderServer(script) as running:
        yield running


async def _submit(db_url: str, mode: str) -> str:
    store = open_store(db_url)
    try:
        await store.migrate()
        client = Client(store, app=agent_app.app)
        return (await client.submit("agent_kill", {"mode": mode})).job.id
    finally:
        await store.close()


async def _approve(db_url: str, review_id: str) -> None:
    store = open_store(db_url)
    try:
        await Client(store, app=agent_app.app).approve(review_id, reviewer="alice")
    finally:
        await store.close()


def _prepare(db_url: str, mode: str) -> str:
    job = asyncio.run(_submit(db_url, mode))
    execute(
        db_url,
        "CREATE TABLE IF NOT EXISTS agent_effects "
        "(job TEXT NOT NULL, tool TEXT NOT NULL, call_key TEXT NOT NULL)",
    )
    return job


def _env(server: ProviderServer, folder: Path, **extra: str) -> dict[str, str]:
    return {
        "STALWART_LLM_ENDPOINTS": json.dumps(
            {"local": {"kind": "openai", "base_url": server.openai_base_url}}
        ),
        "STALWART_LLM_PRICES": json.dumps({"local:cheap": PRICE}),
        "AGENT_APP_LOG": str(folder / "executions.jsonl"),
        "AGENT_APP_GATE": str(folder / "gate"),
        "STALWART_LEASE_SECONDS": LEASE_SECONDS,
        **extra,
    }


def _executions(folder: Path) -> list[dict[str, Any]]:
    path = folder / "executions.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _status(db_url: str, job: str) -> str:
    return str(query(db_url, "SELECT status FROM jobs WHERE id = ?", (job,))[0][0])


def _call_status(db_url: str, job: str, turn: int) -> str | None:
    rows = query(
        db_url, "SELECT status FROM agent_calls WHERE job_id = ? AND turn = ?", (job, turn)
    )
    return str(rows[0][0]) if rows else None


def _wait_status(db_url: str, job: str, statuses: tuple[str, ...], workers: Workers) -> str:
    wait_until(
        lambda: _status(db_url, job) in statuses,
        DEADLINE,
        0.1,
        f"job {job} to become one of {statuses}\n{workers.logs()}",
    )
    return _status(db_url, job)


def _wait_running(
    db_url: str, job: str, workers: Workers, predicate: Callable[[], bool], what: str
) -> None:
    """Wait for `predicate` while the job runs; fail at once (with the logs) if it ends."""

    def check() -> bool:
        if _status(db_url, job) in DONE:
            pytest.fail(f"job {job} ended before {what}\n{workers.logs()}")
        return predicate()

    wait_until(check, DEADLINE, 0.05, what)


def _kill(worker: Worker, db_url: str, job: str) -> None:
    """SIGKILL the worker; its lease on the step is still there for the next one to take."""
    worker.kill()
    [(status, owner)] = query(
        db_url, "SELECT status, lease_owner FROM steps WHERE job_id = ?", (job,)
    )
    assert (status, owner is not None) == ("running", True), (status, owner)


def _effects(db_url: str, job: str) -> Counter[tuple[str, str]]:
    rows = query(db_url, "SELECT tool, call_key FROM agent_effects WHERE job = ?", (job,))
    return Counter((str(t), str(k)) for t, k in rows)


def _turns(db_url: str, job: str) -> list[tuple[int, int, int | None]]:
    rows = query(
        db_url,
        "SELECT turn, attempt, llm_call_id FROM agent_turns WHERE job_id = ? ORDER BY turn",
        (job,),
    )
    return [(int(t), int(a), c) for t, a, c in rows]


def _calls(db_url: str, job: str) -> list[tuple[int, int, str, str, int]]:
    rows = query(
        db_url,
        "SELECT turn, idx, tool, status, attempts FROM agent_calls WHERE job_id = ? "
        "ORDER BY turn, idx",
        (job,),
    )
    return [(int(t), int(i), str(n), str(s), int(a)) for t, i, n, s, a in rows]


def _check_ledger(db_url: str, job: str) -> None:
    """Every turn points at a settled `ok` ledger row of this job, one row per turn."""
    ok = {
        int(r[0])
        for r in query(
            db_url, "SELECT id FROM llm_calls WHERE job_id = ? AND outcome = 'ok'", (job,)
        )
    }
    pointed = [c for _, _, c in _turns(db_url, job)]
    assert None not in pointed and sorted(pointed) == sorted(ok), (pointed, ok)


def test_a_kill_after_a_committed_call_resumes_from_the_transcript(
    tmp_path: Path, workers: Workers, db_url: str, server: ProviderServer, script: Script
) -> None:
    job = _prepare(db_url, "hold")
    env = _env(server, tmp_path)
    first = workers.start(db_url, "agent_app", env=env, concurrency=2)
    # The server holds turn 3's request: calls 1 and 2 have committed (the request carries
    # both results), turn 3 is not answered, so not recorded.
    _wait_running(
        db_url,
        job,
        workers,
        lambda: script.held.is_set() and _call_status(db_url, job, 2) == "succeeded",
        "turn 3's request to arrive after call 2 committed",
    )
    assert server.count() == 3
    assert [t for t, _, _ in _turns(db_url, job)] == [1, 2]
    _kill(first, db_url, job)
    script.release.set()  # its answer goes to a dead connection

    workers.start(db_url, "agent_app", env=env, concurrency=2)
    assert _wait_status(db_url, job, DONE, workers) == "completed", workers.logs()

    # One request per turn, plus the one for turn 3 that died with the worker: turns 1 and 2
    # were never asked again.
    requests = server.requests
    assert len(requests) == 5, [len(r.tool_results) for r in requests]
    assert [len(r.tool_results) for r in requests] == [0, 1, 2, 2, 3]
    # The new worker's first request is rebuilt from the recorded transcript: the same request
    # the dead worker sent, with both tool calls and both results.
    resumed, lost = requests[3], requests[2]
    assert resumed.body is not None and lost.body is not None
    assert resumed.body["messages"] == lost.body["messages"]
    asked = [c["id"] for c in resumed.assistant_tool_calls]
    assert [c["name"] for c in resumed.assistant_tool_calls] == ["tool_a", "tool_b"]
    assert [r["tool_call_id"] for r in resumed.tool_results] == asked
    assert all(a.startswith("call_fake") for a in asked) and len(set(asked)) == 2
    keys = {tool: f"default:{job}:agent:{turn}.0" for turn, tool in enumerate(THIRD_ORDER, 1)}
    assert json.loads(resumed.tool_results[0]["content"])["key"] == keys["tool_a"]
    assert json.loads(resumed.tool_results[1]["content"])["key"] == keys["tool_b"]

    # Each tool ran once, and its effect committed once, under its call's key.
    executed = Counter((e["tool"], e["key"]) for e in _executions(tmp_path))
    assert executed == Counter({(tool, key): 1 for tool, key in keys.items()})
    assert _effects(db_url, job) == executed

    [(output,)] = query(db_url, "SELECT output FROM steps WHERE job_id = ?", (job,))
    assert json.loads(output) == {"text": ANSWER}
    # Turns 1-2 by the first attempt, 3-4 by the second; every call once, succeeded.
    assert [(t, a) for t, a, _ in _turns(db_url, job)] == [(1, 1), (2, 1), (3, 2), (4, 2)]
    assert _calls(db_url, job) == [
        (1, 0, "tool_a", "succeeded", 1),
        (2, 0, "tool_b", "succeeded", 1),
        (3, 0, "tool_c", "succeeded", 1),
    ]
    _check_ledger(db_url, job)
    # The lost request's reservation was charged its worst case when the step was taken back
    # (it may have reached the provider), and nothing is left reserved.
    outcomes = query(db_url, "SELECT outcome FROM llm_calls WHERE job_id = ? ORDER BY id", (job,))
    assert [o for (o,) in outcomes] == ["ok", "ok", "cancelled", "ok", "ok"]
    assert query(db_url, "SELECT sum(reserved_nanos) FROM budgets") == [(0,)]


@pytest.mark.parametrize("mode", ["idempotent", "write"])
def test_a_kill_while_a_call_runs(
    tmp_path: Path, workers: Workers, db_url: str, server: ProviderServer, mode: str
) -> None:
    """A call cut off mid-run: idempotent, it runs again under the same key; not idempotent
    (and no reconcile function), a person decides first."""
    tool = THIRD[mode]
    job = _prepare(db_url, mode)
    key = f"default:{job}:agent:3.0"
    env = _env(server, tmp_path)
    first = workers.start(db_url, "agent_app", env=env, concurrency=2)
    _wait_running(
        db_url,
        job,
        workers,
        lambda: (
            _call_status(db_url, job, 3) == "running"
            and any(e["tool"] == tool for e in _executions(tmp_path))
        ),
        "call 3 to be running",
    )
    _kill(first, db_url, job)
    (tmp_path / "gate").touch()  # from now on the tool returns at once
    assert server.count() == 3

    workers.start(db_url, "agent_app", env=env, concurrency=2)
    if mode == "write":
        assert _wait_status(db_url, job, ("waiting_approval", *DONE), workers) == (
            "waiting_approval"
        )
        [(review, kind, status)] = query(
            db_url, "SELECT id, kind, status FROM reviews WHERE job_id = ?", (job,)
        )
        assert (kind, status) == ("agent_interrupted", "pending")
        # Not run blindly: one execution (the one cut off), the model not asked again.
        assert [e["key"] for e in _executions(tmp_path) if e["tool"] == tool] == [key]
        assert _call_status(db_url, job, 3) == "awaiting_approval"
        assert server.count() == 3
        asyncio.run(_approve(db_url, str(review)))
    assert _wait_status(db_url, job, DONE, workers) == "completed", workers.logs()

    # The cut-off call ran again under the same key; its effect committed once.
    assert [e["key"] for e in _executions(tmp_path) if e["tool"] == tool] == [key, key]
    assert _effects(db_url, job)[(tool, key)] == 1
    assert sum(_effects(db_url, job).values()) == 3
    assert [(t, s, a) for t, _, _, s, a in _calls(db_url, job)] == [
        (1, "succeeded", 1),
        (2, "succeeded", 1),
        (3, "succeeded", 2),
    ]
    reviews = query(db_url, "SELECT kind, decision FROM reviews WHERE job_id = ?", (job,))
    assert reviews == ([("agent_interrupted", "approved")] if mode == "write" else [])
    # Turns 1-3 were not asked again: one more request, for the answer.
    assert server.count() == 4
    assert [t for t, _, _ in _turns(db_url, job)] == [1, 2, 3, 4]
    _check_ledger(db_url, job)
