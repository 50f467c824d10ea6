"""`stalwart jobs trace ID` in a subprocess, on a database whose jobs an in-process worker ran:
the span tree with times, durations, tokens and cost, the totals, `--json`, tenant scoping, and
an unknown id as one line on stderr with exit 1."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from tests.observability.test_timeline import DONE, build_app

from stalwart.domain.budgets import ledger_totals

REPO = Path(__file__).resolve().parents[2]
CASES = ("retried", "classify", "approved")


def stalwart(db_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STALWART_")}
    env["COLUMNS"] = "100"
    return subprocess.run(
        [sys.executable, "-m", "stalwart.cli.main", "--database-url", db_url, *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


async def _run_jobs(db_url: str) -> dict[str, Any]:
    app = build_app(db_url)
    store = app.store()
    await store.migrate()
    client = app.client()
    jobs = {w: (await client.submit(w, {"value": "v"}, tenant="acme")).job.id for w in CASES}
    worker = app.worker(worker_id="w-cli")
    task = asyncio.create_task(worker.run())
    try:
        for _ in range(400):
            waiting = [r for r in await client.reviews() if r.job_id == jobs["approved"]]
            if waiting:
                await client.approve(waiting[0].id, reviewer="alice")
            states = [(await client.get(j)).status for j in jobs.values()]
            if all(s in DONE for s in states):
                break
            await asyncio.sleep(0.05)
    finally:
        worker.stop()
        await asyncio.wait_for(task, 15)
    ledger = ledger_totals(await client.llm_calls(jobs["classify"]))
    await store.close()
    return {"jobs": jobs, "ledger": ledger}


@pytest.fixture(scope="module")
def ran(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, Any]]:
    db = f"sqlite:///{tmp_path_factory.mktemp('trace') / 'cli.db'}"
    return db, asyncio.run(_run_jobs(db))


def test_the_tree_shows_each_attempt_with_times_and_the_totals(
    ran: tuple[str, dict[str, Any]],
) -> None:
    db, info = ran
    done = stalwart(db, "jobs", "trace", info["jobs"]["retried"])
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("invoke_workflow retried  +0.00s  ")
    assert "completed" in lines[0] and info["jobs"]["retried"] in lines[0]
    assert lines[1].startswith("├── plan retried  +0.00s")
    assert lines[2].startswith("├── step call #1  +") and "retry  transient" in lines[2]
    assert "execute_tool flaky" in lines[3] and lines[3].startswith("│   └── ")
    assert lines[4].startswith("└── step call #2  +") and "succeeded" in lines[4]
    assert any(unit in lines[4] for unit in (" ms", " s"))
    assert "total: 1 step, 2 attempts (1 failed), 0 model calls" in done.stdout
    assert "trace id: " in done.stdout


def test_model_calls_show_tokens_and_cost_and_the_reviewer_shows(
    ran: tuple[str, dict[str, Any]],
) -> None:
    db, info = ran
    ledger = info["ledger"]
    done = stalwart(db, "jobs", "trace", info["jobs"]["classify"])
    assert done.returncode == 0, done.stderr
    tokens = f"{ledger['input_tokens']} in / {ledger['output_tokens']} out tokens"
    chat = next(line for line in done.stdout.splitlines() if "chat writer" in line)
    assert tokens in chat and f"${ledger['cost_usd']:.6f}" in chat
    assert f"{ledger['input_tokens']} tokens in" in done.stdout.splitlines()[-2]
    approved = stalwart(db, "jobs", "trace", info["jobs"]["approved"])
    assert "approval pay" in approved.stdout and "approved  by alice" in approved.stdout


def test_json_is_the_tree_with_its_totals(ran: tuple[str, dict[str, Any]]) -> None:
    db, info = ran
    done = stalwart(db, "--json", "jobs", "trace", info["jobs"]["classify"])
    assert done.returncode == 0, done.stderr
    body = json.loads(done.stdout)
    assert body["job_id"] == info["jobs"]["classify"] and len(body["trace_id"]) == 32
    root = body["root"]
    assert (root["name"], root["kind"], root["status"]) == ("invoke_workflow classify", "job", "ok")
    step = next(c for c in root["children"] if c["kind"] == "step")
    assert step["name"] == "step label" and step["attributes"]["attempt"] == 1
    chat = step["children"][0]
    assert chat["name"] == "chat writer" and chat["duration_ms"] is not None
    ledger = info["ledger"]
    totals = body["totals"]
    assert (totals["model_calls"], totals["input_tokens"], totals["cost_usd"]) == (
        ledger["calls"],
        ledger["input_tokens"],
        ledger["cost_usd"],
    )


def test_an_unknown_or_other_tenants_job_is_one_line_and_exit_1(
    ran: tuple[str, dict[str, Any]],
) -> None:
    db, info = ran
    for args in (
        ("jobs", "trace", "job_nope"),
        ("--tenant", "globex", "jobs", "trace", info["jobs"]["retried"]),
    ):
        done = stalwart(db, *args)
        assert done.returncode == 1, done
        assert done.stdout == "" and len(done.stderr.strip().splitlines()) == 1
        assert "no job" in done.stderr
    scoped = stalwart(db, "--tenant", "acme", "jobs", "trace", info["jobs"]["retried"])
    assert scoped.returncode == 0, scoped.stderr
    as_json = stalwart(db, "--json", "jobs", "trace", "job_nope")
    assert as_json.returncode == 1 and json.loads(as_json.stderr)["code"] == "not_found"
