"""LLM steps in worker processes, on both backends: a shared tenant budget that 50 concurrent
jobs cannot overshoot, LLM planning that loops or names an unknown tool, review triggers and
consensus."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.fakes.provider_server import ProviderServer
from tests.integration.apps import llm_app
from tests.integration.conftest import REPO, Workers, query, wait_until

from stalwart.client import Client
from stalwart.store import open_store

PRICE = {"input_per_mtok": 100.0, "output_per_mtok": 100.0}  # $0.0001 a token
DONE = ("completed", "failed", "escalated", "dead_lettered", "rejected", "cancelled")


@pytest.fixture
def server() -> Iterator[ProviderServer]:
    with ProviderServer(lambda request: {"label": "spam", "score": 0.9}) as running:
        yield running


async def _submit(db_url: str, workflow: str, count: int, tenant: str = "acme") -> list[str]:
    store = open_store(db_url)
    try:
        await store.migrate()
        client = Client(store, app=llm_app.app)
        return [
            (await client.submit(workflow, {"n": n}, tenant=tenant)).job.id for n in range(count)
        ]
    finally:
        await store.close()


def _statuses(db_url: str, ids: list[str]) -> dict[str, str]:
    marks = ",".join("?" * len(ids))
    return dict(query(db_url, f"SELECT id, status FROM jobs WHERE id IN ({marks})", tuple(ids)))


def _wait_done(db_url: str, ids: list[str], workers: Workers, timeout: float = 180) -> None:
    wait_until(
        lambda: all(s in DONE for s in _statuses(db_url, ids).values()),
        timeout,
        0.2,
        f"every job to finish\n{workers.logs()}",
    )


def _escalation(db_url: str, job: str) -> str:
    [(reason,)] = query(
        db_url,
        "SELECT reason FROM events WHERE job_id = ? AND to_status = 'escalated'",
        (job,),
    )
    return str(reason)


def _env(server: ProviderServer, **extra: str) -> dict[str, str]:
    return {
        "STALWART_LLM_ENDPOINTS": json.dumps(
            {"local": {"kind": "openai", "base_url": server.openai_base_url}}
        ),
        "STALWART_LLM_PRICES": json.dumps({"local:cheap": PRICE}),
        "STALWART_NOTIFY_POLL_INTERVAL_SECONDS": "0.1",
        **extra,
    }


def test_fifty_jobs_never_overshoot_a_shared_tenant_budget(
    tmp_path: Path, workers: Workers, db_url: str, server: ProviderServer
) -> None:
    alerts = tmp_path / "alerts.jsonl"
    daily = 0.2
    ids = asyncio.run(_submit(db_url, "classify", 50))
    env = _env(server, LLM_APP_DAILY_USD=str(daily), LLM_APP_ALERTS=str(alerts))
    for _ in range(2):
        workers.start(db_url, "llm_app", env=env, concurrency=10)
    _wait_done(db_url, ids, workers)

    statuses = _statuses(db_url, ids)
    [(key, limit, spent, held, warned)] = query(
        db_url,
        "SELECT key, limit_nanos, spent_nanos, reserved_nanos, warned FROM budgets "
        "WHERE scope = 'tenant_day' AND tenant_id = 'acme'",
    )
    calls = query(db_url, "SELECT outcome, cost_nanos FROM llm_calls WHERE tenant_id = 'acme'")
    sent = [c for c in calls if c[0] != "refused"]
    refused = [c for c in calls if c[0] == "refused"]
    # The settled spend never passes the budget, and nothing is left reserved.
    assert limit == int(daily * 1e9)
    assert spent == sum(c[1] for c in calls) <= limit
    assert held == 0
    # Some calls were refused, and none of those reached the provider's server.
    assert refused and sent
    assert server.count() == len(sent)
    assert all(c[0] == "ok" for c in sent)
    assert sorted(set(statuses.values())) == ["completed", "escalated"]
    assert list(statuses.values()).count("completed") == len(sent)
    # One warning for the tenant's budget: one event, one alert.
    events = query(
        db_url,
        "SELECT data FROM events WHERE kind = 'budget_warning' AND data LIKE ?",
        (f'%"{key}"%',),
    )
    assert warned and len(events) == 1
    # The app's on_alert also hears alert-rule incidents (kind "alert"): count budget warnings.
    heard = [json.loads(line) for line in alerts.read_text().splitlines()]
    assert [a["key"] for a in heard if a["kind"] == "budget_warning"].count(key) == 1


def test_a_model_that_keeps_planning_the_same_failing_plan_is_escalated(
    workers: Workers, db_url: str, server: ProviderServer
) -> None:
    [job] = asyncio.run(_submit(db_url, "looping", 1))
    workers.start(db_url, "llm_app", env=_env(server))
    _wait_done(db_url, [job], workers)
    [(status, replans)] = query(db_url, "SELECT status, replans FROM jobs WHERE id = ?", (job,))
    assert status == "escalated"
    assert replans <= 2  # max_replans
    assert "already tried" in _escalation(db_url, job)
    # Every attempt ran the same step of the plan the model kept writing.
    steps = query(db_url, "SELECT DISTINCT tool FROM steps WHERE job_id = ?", (job,))
    assert steps == [("always_wrong",)]


def test_a_planned_unknown_tool_is_rejected_before_anything_runs(
    workers: Workers, db_url: str, server: ProviderServer
) -> None:
    [job] = asyncio.run(_submit(db_url, "unknown_tool", 1))
    workers.start(db_url, "llm_app", env=_env(server))
    _wait_done(db_url, [job], workers)
    assert _statuses(db_url, [job]) == {job: "escalated"}
    assert "launch_rockets" in _escalation(db_url, job)
    assert query(db_url, "SELECT count(*) FROM steps WHERE job_id = ?", (job,)) == [(0,)]
    asks = query(
        db_url, "SELECT count(*) FROM llm_calls WHERE job_id = ? AND purpose = 'planning'", (job,)
    )
    assert asks == [(3,)]  # one ask and two re-asks with the problems


def test_low_confidence_parks_the_consuming_step_and_consensus_takes_the_majority(
    workers: Workers, db_url: str, server: ProviderServer
) -> None:
    [reviewed] = asyncio.run(_submit(db_url, "reviewed", 1))
    [voted] = asyncio.run(_submit(db_url, "consensus", 1))
    workers.start(db_url, "llm_app", env=_env(server))
    wait_until(
        lambda: (
            _statuses(db_url, [reviewed]) == {reviewed: "waiting_approval"}
            and _statuses(db_url, [voted]) == {voted: "completed"}
        ),
        30,
        0.2,
        f"the review and the vote\n{workers.logs()}",
    )
    [(reason, context)] = query(
        db_url, "SELECT reason, context FROM reviews WHERE job_id = ?", (reviewed,)
    )
    assert "confidence of step extract is below 0.8" in reason
    upstream: dict[str, Any] = json.loads(context)["upstream"]
    assert upstream["extract"]["confidence"] == 0.4
    [(output,)] = query(db_url, "SELECT output FROM steps WHERE job_id = ?", (voted,))
    assert json.loads(output)["label"].strip().lower() == "spam"
    assert query(db_url, "SELECT count(*) FROM llm_calls WHERE job_id = ?", (voted,)) == [(3,)]

    # `jobs show` prints the calls and their totals; `budgets list` the tenant's budgets.
    shown = _cli("jobs", "show", voted, db_url=db_url)
    assert sorted(c["model"] for c in shown["llm_calls"]) == ["a", "b", "c"]
    assert shown["llm_totals"]["calls"] == 3 and shown["llm_totals"]["cost_usd"] == 0
    text = _cli("jobs", "show", voted, db_url=db_url, json_out=False)
    assert "llm calls" in text and "scripted:a" in text and "llm totals: 3 calls" in text
    listed = _cli("budgets", "list", db_url=db_url)
    assert f"job:{voted}" in {b["key"] for b in listed}


def _cli(*args: str, db_url: str, json_out: bool = True) -> Any:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "stalwart.cli.main",
            "--database-url",
            db_url,
            *(["--json"] if json_out else []),
            *args,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout) if json_out else done.stdout
