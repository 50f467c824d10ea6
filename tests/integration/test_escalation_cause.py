"""An escalation keeps its cause: a job parked for a person says which step failed, which check
and with what value, on the job, its dead letter, `stalwart dlq show`, the API and the web UI;
not only the last symptom ("the planner produced a plan already tried").

The main path runs end to end through an in-process worker on both backends: a hard check fails,
the job replans, the template planner can only produce the same plan again, and the job escalates.
The other escalation paths (a critical check, no replans left, a reviewer's rejection that cannot
replan, a review past its SLA, a step whose leases all expired) are checked on the job and its
dead letter.
"""

from __future__ import annotations

import asyncio
import html
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel
from starlette.testclient import TestClient
from tests.browser.conftest import csrf_of

from stalwart import App, ApprovalPolicy, Client, Settings, ToolContext
from stalwart.api import create_api
from stalwart.domain.records import DeadLetterRecord, JobRecord, StepRecord
from stalwart.errors import BudgetExceeded
from stalwart.planning.planner import TemplatePlanner
from stalwart.store import open_store
from stalwart.worker.worker import Worker

REPO = Path(__file__).resolve().parents[2]
FAST = {
    "lease_seconds": 2.0,
    "poll_interval_seconds": 0.02,
    "reaper_interval_seconds": 0.05,
    "drain_seconds": 5.0,
}
PARKED = ("escalated", "dead_lettered", "completed", "failed", "rejected")
CHECK = "amount > 0"
VALUE = "-42.5"


class InvoiceInput(BaseModel):
    document: str = "inv-7"


class ExtractArgs(BaseModel):
    document: str


class Extracted(BaseModel):
    vendor: str
    amount: float


class PayArgs(BaseModel):
    vendor: str
    amount: float


class Paid(BaseModel):
    payment_id: str


def invoice_app(db_url: str, *, check: str = "hard", **workflow: Any) -> App:
    """Extract an invoice (its amount comes out negative, failing the check), then pay it."""
    app = App(Settings(database_url=db_url, **FAST))

    @app.tool(timeout=5, idempotent=True)
    async def extract(args: ExtractArgs, ctx: ToolContext) -> Extracted:
        return Extracted(vendor="ACME", amount=float(VALUE))

    @app.tool(timeout=5, idempotent=True)
    async def pay(args: PayArgs, ctx: ToolContext) -> Paid:
        return Paid(payment_id=f"pay-{ctx.idempotency_key}")

    app.workflow(
        "invoice",
        input=InvoiceInput,
        templates=[
            {
                "name": "invoice",
                "steps": [
                    {
                        "id": "extract",
                        "tool": "extract",
                        "args": {"document": "${input.document}"},
                        "checks": [{"expect": CHECK, "on_fail": check}],
                    },
                    {
                        "id": "pay",
                        "tool": "pay",
                        "args": {
                            "vendor": "${steps.extract.output.vendor}",
                            "amount": "${steps.extract.output.amount}",
                        },
                    },
                ],
            }
        ],
        **workflow,
    )
    return app


async def run_until_parked(app: App, job_id: str, within: float = 30.0) -> JobRecord:
    """Run one worker until the job is parked or finished."""
    worker: Worker = app.worker(worker_id="w-cause")
    task = asyncio.create_task(worker.run())
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while True:
            job = await app.client().get(job_id)
            if job.status in PARKED:
                return job
            assert loop.time() < deadline, f"job is still {job.status}"
            await asyncio.sleep(0.02)
    finally:
        worker.stop()
        await asyncio.wait_for(task, 15)


async def escalate(app: App, **submit: Any) -> tuple[JobRecord, DeadLetterRecord, list[StepRecord]]:
    """Submit an invoice, run it until it parks; the job, its dead letter and every step."""
    store = app.store()
    await store.migrate()
    try:
        client = app.client()
        job_id = (await client.submit("invoice", {"document": "inv-7"}, **submit)).job.id
        job = await run_until_parked(app, job_id)
        letter = await client.dead_letter(job_id)
        steps = await client.steps(job_id, all_versions=True)
        return job, letter, steps
    finally:
        await store.close()


def names_the_cause(text: str) -> None:
    """The text names the failed step, the check and the value it saw."""
    assert "extract" in text, text
    assert CHECK in text, text
    assert VALUE in text, text


def stalwart(db_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI in a subprocess on `db_url`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STALWART_")}
    env["COLUMNS"] = "200"
    return subprocess.run(
        [sys.executable, "-m", "stalwart.cli.main", "--database-url", db_url, *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


async def admin_key(db_url: str) -> str:
    """An admin key of the default tenant, on a store of its own."""
    store = open_store(db_url, Settings(database_url=db_url))
    try:
        created = await Client(store).key_create(tenant="default", role="admin", name="ops")
        return created.token
    finally:
        await store.close()


def test_a_failed_hard_check_that_escalates_keeps_its_cause_everywhere(db_url: str) -> None:
    app = invoice_app(db_url, max_replans=1)
    job, letter, steps = asyncio.run(escalate(app))

    # The job: escalated because replanning could only repeat the plan; its error is the check.
    assert job.status == "escalated", job
    assert job.error is not None, "the escalated job has no error"
    assert job.error["error_class"] == "semantic"
    assert job.error["code"] == "check_failed"
    names_the_cause(job.error["message"])
    assert job.error["details"]["check"] == CHECK

    # The dead letter: the step, the error, the step's context, and why it was parked.
    [extract] = [s for s in steps if s.key == "extract"]
    assert letter.step_key == "extract"
    assert letter.step_id == extract.id
    assert letter.error == job.error
    assert "already tried" in letter.reason
    names_the_cause(letter.reason)
    assert letter.context["step"]["id"] == "extract"
    assert letter.context["step"]["checks"] == [{"expect": CHECK, "on_fail": "hard", "message": ""}]
    assert letter.context["attempt"] == 1
    assert "already tried" in letter.context["escalation"]["message"]

    # `stalwart dlq show`: the step and the error, no "step None", a context that is not empty.
    shown = stalwart(db_url, "dlq", "show", job.id)
    assert shown.returncode == 0, shown.stderr
    assert "step extract" in shown.stdout and "step None" not in shown.stdout, shown.stdout
    names_the_cause(shown.stdout.split("error:", 1)[1])
    assert '"checks"' in shown.stdout
    as_json = stalwart(db_url, "--json", "dlq", "show", job.id)
    assert json.loads(as_json.stdout)["error"] == job.error

    # The API and the web UI, over the same database.
    token = asyncio.run(admin_key(db_url))
    settings = Settings(database_url=db_url)
    with TestClient(create_api(app, settings=settings, workers=0)) as http:
        auth = {"Authorization": f"Bearer {token}"}
        body = http.get(f"/v1/jobs/{job.id}", headers=auth).json()
        assert body["status"] == "escalated"
        assert body["error"] == job.error
        dead = http.get(f"/v1/dlq/{letter.id}", headers=auth).json()
        assert dead["step_key"] == "extract" and dead["step_id"] == extract.id
        assert dead["error"] == job.error
        assert dead["context"]["step"]["id"] == "extract"

        form = http.get("/ui/login")
        signed = http.post(
            "/ui/login",
            data={"key": token, "csrf": csrf_of(form.text)},
            follow_redirects=False,
        )
        assert signed.status_code == 303, signed.text
        job_page = html.unescape(http.get(f"/ui/jobs/{job.id}").text)
        names_the_cause(job_page.split('id="job-error"', 1)[1].split("</section>", 1)[0])
        letter_page = html.unescape(http.get(f"/ui/dlq/{letter.id}").text)
        names_the_cause(letter_page.split("<h1>", 1)[1].split("</h1>", 1)[0])
        step_fact = letter_page.split("<dt>Step</dt>", 1)[1].split("</dd>", 1)[0]
        assert "extract" in step_fact


# -- the other escalation paths --------------------------------------------------------------------


def test_a_failed_critical_check_escalates_with_the_check(db_url: str) -> None:
    job, letter, _ = asyncio.run(escalate(invoice_app(db_url, check="critical")))
    assert job.status == "escalated"
    assert job.error is not None and job.error["error_class"] == "critical"
    names_the_cause(job.error["message"])
    assert letter.step_key == "extract" and letter.error == job.error
    assert letter.context["step"]["id"] == "extract"


def test_no_replans_left_escalates_with_the_check(db_url: str) -> None:
    job, letter, _ = asyncio.run(escalate(invoice_app(db_url, max_replans=0)))
    assert job.status == "escalated"
    assert job.error is not None and job.error["code"] == "check_failed"
    names_the_cause(job.error["message"])
    assert letter.step_key == "extract" and letter.error == job.error
    names_the_cause(letter.reason)


def test_a_replan_refused_by_the_budget_escalates_with_the_check(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    first_plan = TemplatePlanner.plan

    def plan(self: TemplatePlanner, workflow: Any, job_input: Any, **kwargs: Any) -> Any:
        if kwargs.get("version", 1) > 1:
            raise BudgetExceeded("planning would pass the job's budget", budget="job:j:usd")
        return first_plan(self, workflow, job_input, **kwargs)

    monkeypatch.setattr(TemplatePlanner, "plan", plan)
    job, letter, _ = asyncio.run(escalate(invoice_app(db_url, max_replans=1)))
    assert job.status == "escalated"
    assert job.error is not None and job.error["code"] == "check_failed"
    names_the_cause(job.error["message"])
    assert letter.step_key == "extract" and letter.error == job.error
    assert "refused by the budget" in letter.reason
    assert letter.context["escalation"]["error_class"] == "budget"


def review_app(db_url: str, **review: Any) -> App:
    """The invoice app whose check passes and whose payment waits for a reviewer."""
    app = App(Settings(database_url=db_url, **FAST))

    @app.tool(timeout=5, idempotent=True)
    async def extract(args: ExtractArgs, ctx: ToolContext) -> Extracted:
        return Extracted(vendor="ACME", amount=42.5)

    @app.tool(timeout=5, idempotent=True)
    async def pay(args: PayArgs, ctx: ToolContext) -> Paid:
        return Paid(payment_id="p")

    app.workflow(
        "invoice",
        input=InvoiceInput,
        max_replans=1,
        approval=ApprovalPolicy(on_reject="replan"),
        templates=[
            {
                "name": "invoice",
                "steps": [
                    {"id": "extract", "tool": "extract", "args": {"document": "${input.document}"}},
                    {
                        "id": "pay",
                        "tool": "pay",
                        "requires_approval": True,
                        "review": review,
                        "args": {
                            "vendor": "${steps.extract.output.vendor}",
                            "amount": "${steps.extract.output.amount}",
                        },
                    },
                ],
            }
        ],
    )
    return app


async def _decide_then_park(
    app: App, decide: Callable[[Any, str], Any] | None
) -> tuple[JobRecord, DeadLetterRecord]:
    store = app.store()
    await store.migrate()
    worker = app.worker(worker_id="w-review")
    task = asyncio.create_task(worker.run())
    client = app.client()
    try:
        job_id = (await client.submit("invoice", {"document": "inv-7"})).job.id
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        decided = False
        while True:
            job = await client.get(job_id)
            if job.status in PARKED:
                break
            assert loop.time() < deadline, f"job is still {job.status}"
            waiting = [r for r in await client.reviews() if r.job_id == job_id]
            if waiting and decide is not None and not decided:
                await decide(client, waiting[0].id)
                decided = True
            await asyncio.sleep(0.02)
        return job, await client.dead_letter(job_id)
    finally:
        worker.stop()
        await asyncio.wait_for(task, 15)
        await store.close()


def test_a_rejection_that_cannot_replan_escalates_with_the_rejection(db_url: str) -> None:
    async def reject(client: Any, review_id: str) -> None:
        await client.reject(review_id, reviewer="bob", comment="wrong vendor")

    app = review_app(db_url)
    job, letter = asyncio.run(_decide_then_park(app, reject))
    assert job.status == "escalated"
    assert job.error is not None and job.error["error_class"] == "rejected"
    assert "bob" in job.error["message"] and "wrong vendor" in job.error["message"]
    assert letter.step_key == "pay" and letter.error == job.error
    assert "already tried" in letter.reason and "wrong vendor" in letter.reason


def test_a_review_past_its_sla_escalates_naming_the_review(db_url: str) -> None:
    app = review_app(db_url, sla_seconds=0.05)
    job, letter = asyncio.run(_decide_then_park(app, None))
    assert job.status == "escalated"
    assert job.error is not None and job.error["code"] == "review_overdue"
    assert "pay" in job.error["message"] and "SLA" in job.error["message"]
    assert letter.step_key == "pay" and letter.error == job.error

    async def approve_late() -> JobRecord:
        store = open_store(db_url, Settings(database_url=db_url))
        try:
            client = Client(store)
            [review] = [r for r in await client.reviews() if r.job_id == job.id]
            await client.approve(review.id, reviewer="alice")
            return await client.get(job.id)
        finally:
            await store.close()

    # A late approval resumes the job: the SLA was its only trouble, so its error goes.
    resumed = asyncio.run(approve_late())
    assert resumed.status == "executing" and resumed.error is None
