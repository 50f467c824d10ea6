"""Fifty agent jobs under one tenant daily budget, in two worker processes, on both backends.

Each job is an `agent_budget` loop of apps/agent_app.py: the model (the local provider server,
OpenAI protocol) calls `tool_a`, then `tool_b` on odd jobs, then answers: two or three turns.
The budget holds only part of that work. Every turn reserves its worst case before it is sent;
a refused turn escalates its job (the workflow's `on_exceeded`). Afterwards the spend never
passed the budget, nothing is left reserved, no refused turn reached the provider, every job
ended, and every transcript is whole: each turn is a settled `ok` ledger row and each `ok` row a
turn, and an escalated loop stopped between turns, never mid-call.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.fakes.provider_server import Answer, CallTools, ProviderServer, RecordedRequest
from tests.integration.apps import agent_app
from tests.integration.conftest import Workers, execute, query, wait_until

from stalwart.client import Client
from stalwart.store import open_store

JOBS = 50
DAILY_USD = 2.0  # about half the work: a turn costs some $0.035 at this price
PRICE = {"input_per_mtok": 100.0, "output_per_mtok": 100.0}  # $0.0001 a token
DONE = ("completed", "failed", "escalated", "dead_lettered", "rejected", "cancelled")
JOB = re.compile(r"Job (\d+):")


def respond(request: RecordedRequest) -> Answer:
    """Turn 1 calls tool_a; on odd jobs turn 2 calls tool_b; then the answer."""
    found = JOB.search(request.message_texts[1])
    assert found is not None, request.message_texts[1]
    n, done = int(found.group(1)), len(request.tool_results)
    if done == 0:
        return CallTools((("tool_a", {"label": f"a{n}"}),))
    if done == 1 and n % 2:
        return CallTools((("tool_b", {"label": f"b{n}"}),))
    return f"job {n} done"


@pytest.fixture
def server() -> Iterator[ProviderServer]:
    with ProviderServer(respond) as running:
        yield running


async def _submit(db_url: str) -> dict[str, int]:
    store = open_store(db_url)
    try:
        await store.migrate()
        client = Client(store, app=agent_app.app)
        ids = {}
        for n in range(JOBS):
            submitted = await client.submit("agent_budget", {"n": n}, tenant="acme")
            ids[submitted.job.id] = n
        return ids
    finally:
        await store.close()


def _statuses(db_url: str) -> dict[str, str]:
    return {
        str(j): str(s)
        for j, s in query(db_url, "SELECT id, status FROM jobs WHERE tenant_id = 'acme'")
    }


def test_fifty_agent_jobs_never_overshoot_a_shared_tenant_budget(
    tmp_path: Path, workers: Workers, db_url: str, server: ProviderServer
) -> None:
    jobs = asyncio.run(_submit(db_url))
    execute(
        db_url,
        "CREATE TABLE IF NOT EXISTS agent_effects "
        "(job TEXT NOT NULL, tool TEXT NOT NULL, call_key TEXT NOT NULL)",
    )
    log = tmp_path / "executions.jsonl"
    env = {
        "STALWART_LLM_ENDPOINTS": json.dumps(
            {"local": {"kind": "openai", "base_url": server.openai_base_url}}
        ),
        "STALWART_LLM_PRICES": json.dumps({"local:cheap": PRICE}),
        "AGENT_APP_DAILY_USD": str(DAILY_USD),
        "AGENT_APP_LOG": str(log),
        "AGENT_APP_GATE": str(tmp_path / "gate"),
        # No worker dies here: no lease may expire under load either (a lost lease would
        # rightly leave a paid turn unrecorded and run its call again).
        "STALWART_LEASE_SECONDS": "15",
    }
    for _ in range(2):
        workers.start(db_url, "agent_app", env=env, concurrency=10)
    wait_until(
        lambda: len(s := _statuses(db_url)) == JOBS and all(v in DONE for v in s.values()),
        180,
        0.2,
        "every job to finish",
    )
    statuses = _statuses(db_url)
    report = f"{Counter(statuses.values())}\n{workers.logs()}"

    # Every job ended: completed, or escalated by a refused turn; some of each.
    assert set(statuses.values()) == {"completed", "escalated"}, report
    for job, error in query(
        db_url, "SELECT id, error FROM jobs WHERE tenant_id = 'acme' AND status = 'escalated'"
    ):
        assert json.loads(error)["code"] == "budget_exceeded", (job, error)

    # The settled spend never passed the budget, and nothing is left reserved.
    [(limit, spent, held)] = query(
        db_url,
        "SELECT limit_nanos, spent_nanos, reserved_nanos FROM budgets "
        "WHERE scope = 'tenant_day' AND tenant_id = 'acme'",
    )
    calls = query(
        db_url, "SELECT id, job_id, outcome, cost_nanos FROM llm_calls WHERE tenant_id = 'acme'"
    )
    assert limit == int(DAILY_USD * 1e9)
    assert spent == sum(c[3] for c in calls) <= limit
    assert query(db_url, "SELECT sum(reserved_nanos) FROM budgets") == [(0,)]
    assert held == 0

    # Refused turns never reached the provider: it saw exactly the turns that were sent, and
    # each of those settled `ok`. One refusal per escalated job.
    sent = [c for c in calls if c[2] != "refused"]
    refused = Counter(c[1] for c in calls if c[2] == "refused")
    assert server.count() == len(sent)
    assert {c[2] for c in sent} == {"ok"}
    escalated = {j for j, s in statuses.items() if s == "escalated"}
    assert set(refused) == escalated and set(refused.values()) == {1}

    # Each turn is a settled `ok` row of its job, and each `ok` row a turn: no turn recorded
    # without its payment, no payment without its turn.
    turns = query(
        db_url,
        "SELECT job_id, turn, llm_call_id, response FROM agent_turns WHERE tenant_id = 'acme' "
        "ORDER BY job_id, turn",
    )
    ok = {int(c[0]): str(c[1]) for c in sent}
    pointed = [t[2] for t in turns]
    assert None not in pointed and sorted(pointed) == sorted(ok)
    assert all(ok[t[2]] == t[0] for t in turns)

    # Each loop stopped between turns, never mid-call: its turns are 1..k, every call of
    # them finished; a completed loop has all its turns, an escalated one fewer, the last
    # asking for a tool.
    by_job: dict[str, list[tuple[int, dict[str, object]]]] = defaultdict(list)
    for job, turn, _, response in turns:
        by_job[str(job)].append((int(turn), json.loads(response)))
    call_rows = query(
        db_url, "SELECT job_id, turn, tool, status FROM agent_calls WHERE tenant_id = 'acme'"
    )
    assert {c[3] for c in call_rows} == {"succeeded"}
    called = Counter((str(c[0]), int(c[1])) for c in call_rows)
    for job, n in jobs.items():
        recorded = by_job.get(job, [])
        numbers = [t for t, _ in recorded]
        assert numbers == list(range(1, len(numbers) + 1)), (job, numbers)
        full = 3 if n % 2 else 2
        asking = [t for t, r in recorded if r["tool_calls"]]
        assert all(called[(job, t)] == 1 for t in asking), (job, asking)
        if statuses[job] == "completed":
            assert len(numbers) == full, (job, numbers)
            [(output,)] = query(db_url, "SELECT output FROM steps WHERE job_id = ?", (job,))
            assert json.loads(output) == {"text": f"job {n} done"}
        else:
            assert len(numbers) < full and asking == numbers, (job, numbers)
    cut = [j for j in escalated if by_job.get(j)]
    print(
        f"{Counter(statuses.values())}; spent {spent / 1e9:.4f} of ${DAILY_USD}; {len(cut)} "
        f"loops refused after a turn, {len(escalated) - len(cut)} before their first"
    )
    assert cut, "no loop was refused mid-way: the budget did not bite between turns"

    # Each call ran its tool once, and its effect committed once.
    executed = Counter(
        json.loads(line)["key"] for line in log.read_text().splitlines() if line.strip()
    )
    assert set(executed.values()) == {1}
    assert len(executed) == len(call_rows)
    effects = Counter(k for (k,) in query(db_url, "SELECT call_key FROM agent_effects"))
    assert effects == executed
