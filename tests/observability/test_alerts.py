"""Alert rules on store-built data, on both backends: each rule fires for its condition, once per
incident however often and by however many evaluators it is evaluated, closes when the
condition clears, and fires again (a new incident) when it recurs; and the hooks."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from tests.observability.conftest import settings_for
from tests.store.conformance import (
    ACTOR,
    claim_one,
    decision,
    failure,
    make_step,
    run_sql,
    submit,
)

from stalwart.domain.budgets import CallResult, CallScope, NewCall
from stalwart.domain.failures import Outcome
from stalwart.errors import ConfigurationError
from stalwart.observability.alerts import (
    AlertEvaluator,
    CallbackHook,
    CommandHook,
    Hook,
    LogHook,
    WebhookHook,
    hooks_from_settings,
    parse_hook,
)
from stalwart.settings import Settings
from stalwart.store import Store, open_store


class Recorder(Hook):
    """Remembers every incident it is given."""

    name = "recorder"

    def __init__(self) -> None:
        self.got: list[dict[str, Any]] = []

    async def notify(self, incident: dict[str, Any]) -> None:
        self.got.append(incident)

    def rules(self) -> list[str]:
        return [i["rule"] for i in self.got]


class Receiver:
    """A webhook endpoint on 127.0.0.1 that keeps the JSON bodies POSTed to it."""

    def __init__(self, status: int = 200) -> None:
        received: list[dict[str, Any]] = []
        self.received = received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers["Content-Length"])
                received.append(json.loads(self.rfile.read(length)))
                self.send_response(status)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    try:
        yield r
    finally:
        r.close()


def evaluator(store: Store, *hooks: Hook, **settings: Any) -> AlertEvaluator:
    return AlertEvaluator(store, settings_for(store.url, **settings), list(hooks))


async def dead_letter(store: Store, workflow: str = "wf") -> str:
    job = await submit(store, workflow=workflow)
    claim = await claim_one(store)
    await store.step_fail(claim, failure(), decision(Outcome.DEAD_LETTER), worker_id="w1")
    return job.id


async def complete(store: Store, workflow: str, cost_nanos: int = 0) -> str:
    job = await submit(store, workflow=workflow)
    claim = await claim_one(store)
    if cost_nanos:
        await store.llm_record(
            NewCall(CallScope("acme", job.id, "a"), 1, "scripted", "m", None, 0, 0, 60.0),
            CallResult("ok", input_tokens=10, cost_nanos=cost_nanos),
            actor=ACTOR,
        )
    assert (await store.step_complete(claim, {}, worker_id="w1")).recorded
    return job.id


async def fail(store: Store, workflow: str) -> str:
    job = await submit(store, workflow=workflow)
    claim = await claim_one(store)
    await store.step_fail(claim, failure("budget"), decision(Outcome.FAIL_JOB), worker_id="w1")
    return job.id


async def backdate(store: Store, job_ids: list[str], seconds: float = 3600.0) -> None:
    """Move jobs' outcomes into the past (out of the recent window, into the baseline)."""
    for job_id in job_ids:
        await run_sql(
            store,
            "UPDATE jobs SET finished = finished - ?, updated = updated - ? WHERE id = ?",
            (seconds, seconds, job_id),
        )


# -- once per incident ----------------------------------------------------------------------------


async def test_a_burst_of_dead_letters_is_one_incident_notified_once(
    store: Store, db_url: str, tmp_path: Path, receiver: Receiver
) -> None:
    out = tmp_path / "hook.jsonl"
    command = CommandHook(f"cat >> {out}; echo >> {out}")
    recorder = Recorder()
    other_store = open_store(db_url, settings_for(db_url))
    try:
        hooks = (recorder, command, WebhookHook(receiver.url))  # the same in every process
        first = evaluator(store, *hooks, alert_min_jobs=100)
        second = evaluator(other_store, *hooks, alert_min_jobs=100)
        jobs = [await dead_letter(store) for _ in range(10)]

        for _ in range(3):  # evaluated again and again, by two processes at once
            await asyncio.gather(first.evaluate(), second.evaluate(), first.evaluate())

        [incident] = await store.alert_list(rule="dead_letters_appearing")
        assert (incident.status, incident.scope, incident.details["count"]) == ("open", "", 10)
        assert incident.notified is not None
        assert recorder.rules() == ["dead_letters_appearing"]
        lines = [json.loads(line) for line in out.read_text().splitlines() if line]
        assert [(i["id"], i["rule"], i["status"]) for i in lines] == [
            (incident.id, "dead_letters_appearing", "open")
        ]
        assert lines[0]["kind"] == "alert" and lines[0]["details"]["by_workflow"] == {"wf": 10}
        assert [i["id"] for i in receiver.received] == [incident.id]

        # Cleared: every dead letter resolved; the incident closes, nobody is called.
        for job_id in jobs:
            await store.job_cancel(job_id, actor=ACTOR)
        await asyncio.gather(first.evaluate(), second.evaluate())
        [closed] = await store.alert_list(rule="dead_letters_appearing")
        assert (closed.id, closed.status) == (incident.id, "closed")
        assert closed.closed is not None
        assert len(recorder.got) == 1

        # It recurs: a new incident, notified once more.
        await dead_letter(store)
        await asyncio.gather(first.evaluate(), second.evaluate(), second.evaluate())
        newest, oldest = await store.alert_list(rule="dead_letters_appearing")
        assert (newest.status, oldest.id) == ("open", incident.id)
        assert newest.id != incident.id
        assert [i["id"] for i in recorder.got] == [incident.id, newest.id]
        assert len([line for line in out.read_text().splitlines() if line]) == 2
        assert len(receiver.received) == 2
    finally:
        await other_store.close()


# -- each rule ------------------------------------------------------------------------------------


async def test_success_rate_drop_compares_the_window_with_the_baseline_per_workflow(
    store: Store,
) -> None:
    recorder = Recorder()
    rules = evaluator(store, recorder)
    baseline = [await complete(store, "alpha") for _ in range(10)]
    await backdate(store, baseline)
    recent = [await complete(store, "alpha") for _ in range(3)]
    recent += [await fail(store, "alpha") for _ in range(5)]
    for _ in range(5):
        await complete(store, "beta")  # beta is fine (no baseline: judged against 100%)
    await fail(store, "gamma")  # one job: too few to judge

    result = await rules.evaluate()

    [incident] = result.opened
    assert (incident.rule, incident.scope) == ("success_rate_drop", "alpha")
    assert incident.details["window_jobs"] == 8
    assert incident.details["success_rate"] == 0.375
    assert incident.details["baseline_success_rate"] == 1.0
    assert "38%" in incident.summary
    assert recorder.rules() == ["success_rate_drop"]
    await rules.evaluate()
    assert len(recorder.got) == 1

    await backdate(store, recent, 1200)  # the window empties: the rule has nothing to judge
    closed = (await rules.evaluate()).closed
    assert [(i.rule, i.scope) for i in closed] == [("success_rate_drop", "alpha")]


async def test_a_workflow_without_a_baseline_is_judged_against_full_success(
    store: Store,
) -> None:
    rules = evaluator(store, Recorder(), alert_min_jobs=3)
    for _ in range(3):
        await dead_letter(store, "new")
    fired = await rules.check()
    assert [(f.rule, f.scope) for f in fired if f.rule == "success_rate_drop"] == [
        ("success_rate_drop", "new")
    ]


async def test_cost_per_job_spike_fires_above_the_factor_of_the_baseline(store: Store) -> None:
    recorder = Recorder()
    rules = evaluator(store, recorder)
    usual = [await complete(store, "alpha", 1000) for _ in range(5)]
    usual += [await complete(store, "beta", 1000) for _ in range(5)]
    await backdate(store, usual)
    for _ in range(5):
        await complete(store, "alpha", 5000)  # 5x the usual
        await complete(store, "beta", 1500)  # 1.5x: within the factor of 2

    result = await rules.evaluate()

    assert [(i.rule, i.scope) for i in result.opened] == [("cost_per_job_spike", "alpha")]
    details = result.opened[0].details
    assert details["cost_per_job_usd"] == pytest.approx(5e-6)
    assert details["baseline_cost_per_job_usd"] == pytest.approx(1e-6)
    assert recorder.rules() == ["cost_per_job_spike"]


async def test_approvals_past_their_sla_fire_until_decided(store: Store) -> None:
    recorder = Recorder()
    rules = evaluator(store, recorder)
    # An SLA no stall outlasts between submitting and the first evaluation.
    await submit(
        store, make_step("pay", requires_approval=True), workflow="gated", review_sla_seconds=2.0
    )
    assert await store.step_claim("w1", limit=1, lease_seconds=30) == []  # parked for review
    assert (await rules.evaluate()).opened == []  # within its SLA

    deadline = time.monotonic() + 60
    while not (opened := (await rules.evaluate()).opened):
        assert time.monotonic() < deadline, "the review never went past its SLA"
        await asyncio.sleep(0.05)
    [incident] = opened
    assert (incident.rule, incident.details["count"]) == ("approvals_past_sla", 1)
    assert incident.details["by_workflow"] == {"gated": 1}
    [review] = await store.review_list(statuses=["pending"])
    await store.review_decide(review.id, approve=True, reviewer="ops")

    [closed] = (await rules.evaluate()).closed
    assert (closed.id, closed.rule) == (incident.id, "approvals_past_sla")
    assert recorder.rules() == ["approvals_past_sla"]


async def test_one_process_evaluates_per_interval(store: Store, db_url: str) -> None:
    other = open_store(db_url, settings_for(db_url))
    try:
        turns = await asyncio.gather(*(s.alert_turn(30) for s in (store, other, store, other)))
        assert sorted(turns) == [False, False, False, True]
        assert await store.alert_turn(30) is False
        assert await store.alert_turn(0) is True  # the interval passed
        rules = evaluator(store, Recorder(), alert_interval_seconds=30)
        assert await rules.tick() is None  # taken just now
        # The turn row is bookkeeping, never an incident.
        assert await store.alert_list(statuses=("open", "closed", "turn")) != []
        assert await store.alert_list() == []
    finally:
        await other.close()


# -- hooks ----------------------------------------------------------------------------------------


async def test_the_log_hook_writes_a_warning_with_the_incident(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    await dead_letter(store)
    with caplog.at_level(logging.WARNING, logger="stalwart.alerts"):
        await evaluator(store, LogHook()).evaluate()
    [record] = [r for r in caplog.records if getattr(r, "action", "") == "alert_fired"]
    assert record.levelno == logging.WARNING
    assert record.incident["rule"] == "dead_letters_appearing"  # type: ignore[attr-defined]
    assert "dead_letters_appearing" in record.getMessage()


async def test_a_failing_hook_is_logged_and_the_others_still_run(
    store: Store, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    await dead_letter(store)
    refused = Receiver(status=500)
    recorder = Recorder()
    try:
        hooks = [
            CommandHook("exit 3"),
            CommandHook("sleep 5", timeout=0.2),
            WebhookHook(refused.url),
            WebhookHook("http://127.0.0.1:9/nothing-listens", timeout=1),
            recorder,
        ]
        with caplog.at_level(logging.WARNING, logger="stalwart.alerts"):
            await evaluator(store, *hooks).evaluate()
    finally:
        refused.close()
    assert recorder.rules() == ["dead_letters_appearing"]
    assert len(refused.received) == 1
    failures = [r.getMessage() for r in caplog.records if r.action == "alert_hook_failed"]  # type: ignore[attr-defined]
    assert len(failures) == 4
    assert any("exited with 3" in f for f in failures)
    assert any("timed out" in f for f in failures)
    assert any("answered 500" in f for f in failures)


async def test_the_python_callback_gets_incidents_sync_or_async(store: Store) -> None:
    await dead_letter(store)
    seen: list[str] = []

    async def async_hook(incident: dict[str, Any]) -> None:
        seen.append(f"async:{incident['rule']}")

    sync = hooks_from_settings(
        Settings(alert_hooks=[]), on_alert=lambda i: seen.append(f"sync:{i['kind']}")
    )
    hooks = [*sync, CallbackHook(async_hook)]
    await evaluator(store, *hooks).evaluate()
    assert seen == ["sync:alert", "async:dead_letters_appearing"]


def test_hooks_are_parsed_from_settings() -> None:
    hooks = hooks_from_settings(
        Settings(alert_hooks=["log", "command: notify-ops --page", "https://ops.internal/hook"])
    )
    assert [type(h) for h in hooks] == [LogHook, CommandHook, WebhookHook]
    assert isinstance(hooks[1], CommandHook) and hooks[1].command == "notify-ops --page"
    assert isinstance(hooks[2], WebhookHook) and hooks[2].url == "https://ops.internal/hook"
    for bad in ("email:ops@example.com", "command:", "ftp://x"):
        with pytest.raises(ConfigurationError):
            parse_hook(bad)
