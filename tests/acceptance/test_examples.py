"""The demo, end to end, in-process: flaky service, two workers, approvals, a dead letter, a
redrive and a resume, on a temporary SQLite database."""

from __future__ import annotations

import asyncio
import json
import re
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeAlias, TypeVar

import pytest
from examples import demo

from stalwart import Client
from stalwart.domain.records import DeadLetterRecord, JobRecord, ReviewRecord
from stalwart.store import open_store

T = TypeVar("T")
State: TypeAlias = tuple[list[JobRecord], list[ReviewRecord], list[DeadLetterRecord]]


def with_client(database_url: str, fn: Callable[[Client], Awaitable[T]]) -> T:
    """Run `fn` with a Client on the demo database (its own event loop, store closed after)."""

    async def go() -> T:
        store = open_store(database_url)
        try:
            return await fn(Client(store))
        finally:
            await store.close()

    return asyncio.run(go())


async def snapshot(client: Client) -> State:
    """Every job, the reviews waiting for a decision, the open dead letters."""
    return await client.list(limit=100), await client.reviews(), await client.dead_letters()


def test_demo_runs_parks_work_for_people_and_resumes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # SQLite only: the demo takes a SQLite URL by design (examples/demo.py refuses any other),
    # since it deletes and keeps its database file and writes its effect log next to it.
    url = f"sqlite:///{tmp_path}/demo.db"

    # First run: everything that can finish without a person finishes; then the server starts
    # on the result and, under CI=true, answers /readyz and stops by itself.
    monkeypatch.setenv("CI", "true")
    assert demo.run(database_url=url, serve=True) == 0
    out = capsys.readouterr().out
    assert re.search(r"Web UI +http://127\.0\.0\.1:\d+/ui/", out)
    assert "answered /readyz with 200" in out
    tokens = dict(re.findall(r"(Reviewer|Operator) key +(stw_\S+)", out))
    principals = with_client(
        url, lambda c: asyncio.gather(*(c.authenticate(t) for t in tokens.values()))
    )
    assert sorted(p.role for p in principals) == ["operator", "reviewer"]

    jobs, reviews, dead = with_client(url, snapshot)
    by_input = {j.input.get("invoice_id") or j.input["user_id"]: j for j in jobs}
    assert len(jobs) == len(demo.ONBOARDING_USERS) + len(demo.INVOICES) + 1
    # The earlier initech invoice, rejected by finance, is recalled in INV-1003's review packet.
    history = by_input[demo.HISTORY_INVOICE]
    assert history.status == "rejected"
    words = [
        "similar past case: invoice",
        demo.HISTORY_INVOICE,
        f"({history.id}), rejected, rejected by {demo.HISTORY_REVIEWER}:",
        demo.HISTORY_COMMENT,
    ]
    pattern = r"\s+".join(re.escape(w) for part in words for w in part.split())
    packet = out[out.index("invoice INV-1003-4200.00, step pay") :]
    end = packet.find("rev_", 5)
    assert re.search(pattern, packet[: end if end > 0 else len(packet)]), packet

    assert len(reviews) >= 1
    assert {r.status for r in reviews} == {"pending"}
    assert len(dead) == 1
    dead_job = by_input["INV-1005-75.50"]
    assert dead[0].job_id == dead_job.id
    assert dead_job.status == "dead_lettered"
    waiting = {r.job_id for r in reviews}
    assert by_input["INV-1003-4200.00"].id in waiting  # over 1000 EUR
    assert by_input["u-1009"].id in waiting  # enterprise plan
    for key in ("INV-1001-250.00", "INV-1002-89.90", "u-1001", "u-1004"):
        assert by_input[key].status == "completed", key
    # The next commands are printed with the real ids and database URL.
    for review in reviews:
        assert f"--database-url {url} review approve {review.id}" in out
    assert f"dlq redrive {dead_job.id}" in out
    assert "demo --resume" in out

    # A reviewer approves, an operator redrives; the resume run finishes the work.
    async def act(client: Client) -> None:
        for review in reviews:
            await client.approve(review.id, reviewer="tester@example.com", comment="ok")
        await client.redrive(dead_job.id, actor="tester")

    with_client(url, act)
    assert demo.run(database_url=url, resume=True, serve=False) == 0

    jobs, reviews, dead = with_client(url, snapshot)
    assert {j.id for j in jobs if j.status != "completed"} == {history.id}
    assert reviews == [] and dead == []

    # Every effect happened once: retries and timeouts replayed, never repeated.
    effects = [
        json.loads(line) for line in demo.effects_path_for(url).read_text().splitlines() if line
    ]
    keys = Counter(e["idempotency_key"] for e in effects)
    assert keys and max(keys.values()) == 1
    kinds = Counter(e["kind"] for e in effects)
    assert kinds["payment"] == len(demo.INVOICES)
    assert kinds["ticket"] == len(demo.ONBOARDING_USERS)
