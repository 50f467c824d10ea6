"""The demo, end to end, in-process: flaky service, two workers, approvals, a dead letter, an
agent step whose refund call the support lead approves, a redrive and a resume, on a temporary
SQLite database."""

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
from examples.app import SERVICE_URL_ENV, build_app
from examples.service import FlakyService

from stalwart import Client, Settings
from stalwart.domain.agents import Transcript
from stalwart.domain.records import DeadLetterRecord, JobRecord, ReviewRecord, StepRecord
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
    by_input = {_key(j): j for j in jobs}
    assert len(jobs) == len(demo.ONBOARDING_USERS) + len(demo.INVOICES) + 2
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

    # The support agent ran to completion within the first run: the support lead approved its
    # refund call, which ran once; the summary prints its transcript turn by turn.
    support = by_input[demo.SUPPORT_ORDER]
    assert support.status == "completed"
    assert support.id not in waiting
    transcript, steps = with_client(url, lambda c: agent_run(c, support.id))
    check_support_agent(transcript, steps, out)

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
    assert "Agent transcript of support" in capsys.readouterr().out  # the resume's summary too

    # Every effect happened once: retries and timeouts replayed, never repeated.
    effects = [
        json.loads(line) for line in demo.effects_path_for(url).read_text().splitlines() if line
    ]
    keys = Counter(e["idempotency_key"] for e in effects)
    assert keys and max(keys.values()) == 1
    kinds = Counter(e["kind"] for e in effects)
    assert kinds["payment"] == len(demo.INVOICES)
    assert kinds["ticket"] == len(demo.ONBOARDING_USERS)
    assert kinds["refund"] == 1


def _key(job: JobRecord) -> str:
    return str(job.input.get("invoice_id") or job.input.get("user_id") or job.input["order_id"])


async def agent_run(client: Client, job_id: str) -> tuple[Transcript, list[StepRecord]]:
    [transcript] = await client.store.agent_transcripts(job_id)
    return transcript, await client.steps(job_id)


def check_support_agent(transcript: Transcript, steps: list[StepRecord], out: str) -> None:
    """The support agent looked the order up, checked the policy and refunded the duplicate
    charge after the support lead approved that call; the summary shows every turn."""
    calls = transcript.calls
    assert [c.tool for c in calls] == ["lookup_order", "check_refund_policy", "issue_refund"]
    assert {c.status for c in calls} == {"succeeded"}
    [approved] = [c for c in calls if c.decision is not None]
    assert approved.tool == "issue_refund" and approved.review_id is not None
    assert approved.decision == {
        "decision": "approved",
        "reviewer": demo.SUPPORT_REVIEWER,
        "comment": demo.SUPPORT_COMMENT,
    }
    assert approved.parsed() == {
        "order_id": demo.SUPPORT_ORDER,
        "amount": 59.9,
        "reason": "duplicate_charge",
    }
    refund_id = approved.result["refund_id"]
    assert len(transcript.turns) == 4 and not transcript.turns[-1].tool_calls
    assert all(t.input_tokens > 0 and t.output_tokens > 0 for t in transcript.turns)
    [step] = steps
    assert step.kind == "agent" and step.status == "succeeded"
    assert step.output["refund_id"] == refund_id and step.output["refunded"] == 59.9

    # The summary: a heading with the totals, then one row a turn with its tokens, each call
    # with its arguments and result, the reviewer's decision on the refund, and the answer.
    summary = out[out.index("Agent transcript of support") :]
    summary = summary[: summary.index("Waiting for a reviewer")]
    flat = " ".join(summary.split())
    tokens = sum(t.input_tokens + t.output_tokens for t in transcript.turns)
    assert (
        f"Agent transcript of support {demo.SUPPORT_ORDER}, step resolve on "
        f"scripted:support-agent: 4 turns, {tokens:,} tokens, $0.0000" in flat
    )
    for turn in transcript.turns:
        row = f"{turn.turn} {turn.input_tokens}/{turn.output_tokens} $0.0000"
        assert row in flat, row
    for expected in (
        f'lookup_order(order_id="{demo.SUPPORT_ORDER}") → succeeded',
        "charges=[2 items]",
        'check_refund_policy(reason="duplicate_charge", amount=59.9) → succeeded',
        f'issue_refund(order_id="{demo.SUPPORT_ORDER}", amount=59.9, reason="duplicate_charge") '
        f"approved by {demo.SUPPORT_REVIEWER}: {demo.SUPPORT_COMMENT} → succeeded",
        f'refund_id="{refund_id}"',
        f'answer: order_id="{demo.SUPPORT_ORDER}", refund_id="{refund_id}", refunded=59.9',
    ):
        assert expected in flat, expected
    # The narration said so while it ran, and the jobs table names the refund.
    assert re.search(rf"approved +support {re.escape(demo.SUPPORT_ORDER)} · resolve · by", out)
    assert re.search(
        rf"support {re.escape(demo.SUPPORT_ORDER)} +completed +refund {refund_id}", out
    )


@pytest.mark.parametrize(
    ("order", "reviewer_says"),
    [("ORD-2033-59.90", "reject"), ("ORD-2030-59.90", None)],
    ids=["charged-twice-refund-rejected", "charged-once"],
)
async def test_the_support_agent_answers_from_what_its_tools_returned(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, order: str, reviewer_says: str | None
) -> None:
    """The demo's scripted agent decides on its tool results: a rejected refund is not made and
    the customer hears a colleague will look; an order charged once gets no policy check."""
    with FlakyService(seed=1) as service:
        monkeypatch.setenv(SERVICE_URL_ENV, service.url)
        settings = Settings(
            database_url=f"sqlite:///{tmp_path}/support.db",
            poll_interval_seconds=0.05,
            embedder="none",
        )
        app = build_app(settings)
        store = app.store()
        await store.migrate()
        client = app.client(store)
        worker = app.worker(store=store, worker_id="w-support")
        task = asyncio.create_task(worker.run())
        try:
            submitted = await client.submit(
                "support", {"order_id": order, "message": demo.SUPPORT_MESSAGE}
            )
            job = submitted.job.id
            if reviewer_says is not None:
                await until(client, job, "waiting_approval")
                [review] = await client.reviews()
                assert review.kind == "agent_call" and review.context["tool"] == "issue_refund"
                await client.reject(review.id, reviewer="lead", comment="ask for the statement")
            await until(client, job, "completed")
            [transcript] = await store.agent_transcripts(job)
            [step] = await client.steps(job)
        finally:
            worker.stop()
            await asyncio.wait_for(task, 30)
            await store.close()
        refunds = [e for e in service.effects() if e["kind"] == "refund"]

    assert refunds == []
    assert step.output["refund_id"] is None and step.output["refunded"] == 0.0
    tools = [(c.tool, c.status) for c in transcript.calls]
    if reviewer_says == "reject":
        assert tools == [
            ("lookup_order", "succeeded"),
            ("check_refund_policy", "succeeded"),
            ("issue_refund", "rejected"),
        ]
        assert "a colleague will get back to you" in step.output["reply"]
    else:
        assert tools == [("lookup_order", "succeeded")]
        assert "charged once" in step.output["reply"]


async def until(client: Client, job_id: str, status: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60
    while (now := (await client.get(job_id)).status) != status:
        assert loop.time() < deadline, f"job {job_id} still {now}, not {status}"
        await asyncio.sleep(0.02)
