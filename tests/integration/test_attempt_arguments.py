"""Reviewers and operators see what actually runs: a step's arguments with every reference
resolved, as its attempts were called with them, on the review page, the job page, `stalwart
jobs show` and `GET /v1/jobs/{id}`; the template (`${steps.extract.output.amount}`) only where
nothing has run yet. End to end through an in-process worker, on both backends."""

from __future__ import annotations

import asyncio
import html
import json
from typing import Any

from pydantic import BaseModel
from starlette.testclient import TestClient
from tests.browser.conftest import csrf_of
from tests.integration.test_escalation_cause import admin_key, stalwart

from stalwart import App, Client, Settings, ToolContext
from stalwart.api import create_api
from stalwart.store import open_store

FAST = {"lease_seconds": 2.0, "poll_interval_seconds": 0.02, "reaper_interval_seconds": 0.05}
TEMPLATE = "${steps.extract.output.amount}"
RESOLVED = {"vendor": "Zephyrine Holdings", "amount": 4312.75}


class InvoiceInput(BaseModel):
    document: str


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


def invoice_app(db_url: str, paid_with: list[dict[str, Any]]) -> App:
    """Extract an invoice, then pay it once a reviewer approves."""
    app = App(Settings(database_url=db_url, **FAST))

    @app.tool(timeout=5, idempotent=True)
    async def extract(args: ExtractArgs, ctx: ToolContext) -> Extracted:
        return Extracted(**RESOLVED)

    @app.tool(timeout=5, idempotent=True)
    async def pay(args: PayArgs, ctx: ToolContext) -> Paid:
        paid_with.append(args.model_dump())
        return Paid(payment_id="pay-1")

    app.workflow(
        "invoice",
        input=InvoiceInput,
        templates=[
            {
                "name": "invoice",
                "steps": [
                    {"id": "extract", "tool": "extract", "args": {"document": "${input.document}"}},
                    {
                        "id": "pay",
                        "tool": "pay",
                        "requires_approval": True,
                        "args": {"vendor": "${steps.extract.output.vendor}", "amount": TEMPLATE},
                    },
                ],
            }
        ],
    )
    return app


async def until(check: Any, within: float = 30.0) -> Any:
    """Poll an async check until it returns something truthy."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not (found := await check()):
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)
    return found


async def run_job(app: App, decide: Any) -> str:
    """Submit an invoice and run a worker until it completes; `decide(review_id)` is called
    (in the loop, the worker still running) when the payment waits for its reviewer."""
    store = app.store()
    await store.migrate()
    client = app.client()
    worker = app.worker(worker_id="w-args")
    task = asyncio.create_task(worker.run())
    try:
        job_id = (await client.submit("invoice", {"document": "inv-7"})).job.id

        async def waiting() -> Any:
            return [r for r in await client.reviews() if r.job_id == job_id]

        [review] = await until(waiting)
        await asyncio.to_thread(decide, review.id, job_id)
        await client.approve(review.id, reviewer="alice")

        async def done() -> bool:
            return (await client.get(job_id)).status in ("completed", "escalated", "failed")

        await until(done)
        assert (await client.get(job_id)).status == "completed"
        return job_id
    finally:
        worker.stop()
        await asyncio.wait_for(task, 15)
        await store.close()


def signed_in(http: TestClient, token: str) -> None:
    form = http.get("/ui/login")
    answer = http.post(
        "/ui/login", data={"key": token, "csrf": csrf_of(form.text)}, follow_redirects=False
    )
    assert answer.status_code == 303, answer.text


def steps_row(page: str, key: str) -> str:
    """The job page's row of one step."""
    return page.split(f'<tr id="step-{key}">', 1)[1].split("</tr>", 1)[0]


def shows_resolved(text: str) -> None:
    assert "4312.75" in text and "Zephyrine Holdings" in text, text
    assert TEMPLATE not in text, text


def test_the_resolved_arguments_are_stored_and_shown_everywhere(db_url: str) -> None:
    paid_with: list[dict[str, Any]] = []
    app = invoice_app(db_url, paid_with)
    settings = Settings(database_url=db_url)
    token = asyncio.run(_migrated_key(app, db_url))
    seen: dict[str, str] = {}

    def look_while_waiting(review_id: str, job_id: str) -> None:
        """The review page and job page while the payment waits for its reviewer."""
        with TestClient(create_api(app, settings=settings, workers=0)) as http:
            signed_in(http, token)
            review_page = html.unescape(http.get(f"/ui/reviews/{review_id}").text)
            # What the agent was trying to do, up to the job's input (shown as it was given).
            seen["review"] = review_page.split('id="doing"', 1)[1].split("The job's input", 1)[0]
            seen["waiting"] = steps_row(html.unescape(http.get(f"/ui/jobs/{job_id}").text), "pay")
        shown = stalwart(db_url, "review", "show", review_id)
        seen["cli_review"] = shown.stdout

    job_id = asyncio.run(run_job(app, look_while_waiting))

    # What the tool was called with is what was stored, and what the reviewer saw.
    assert paid_with == [RESOLVED]
    shows_resolved(seen["review"])
    shows_resolved(seen["waiting"])
    shows_resolved(seen["cli_review"])
    assert "arguments:" in seen["cli_review"]
    steps = asyncio.run(_steps(db_url, job_id))
    assert steps["pay"].args == RESOLVED
    assert steps["extract"].args == {"document": "inv-7"}

    # `jobs show`, as JSON and as a table.
    as_json = stalwart(db_url, "--json", "jobs", "show", job_id)
    assert as_json.returncode == 0, as_json.stderr
    by_key = {s["key"]: s for s in json.loads(as_json.stdout)["steps"]}
    assert by_key["pay"]["args"] == RESOLVED
    table = stalwart(db_url, "jobs", "show", job_id)
    assert "arguments" in table.stdout and "4312.75" in table.stdout, table.stdout

    # The API and the job page.
    with TestClient(create_api(app, settings=settings, workers=0)) as http:
        auth = {"Authorization": f"Bearer {token}"}
        body = http.get(f"/v1/jobs/{job_id}", headers=auth).json()
        api_steps = {s["key"]: s for s in body["steps"]}
        assert api_steps["pay"]["args"] == RESOLVED
        assert api_steps["pay"]["spec"]["args"]["amount"] == TEMPLATE
        signed_in(http, token)
        page = html.unescape(http.get(f"/ui/jobs/{job_id}").text)
        shows_resolved(steps_row(page, "pay"))


async def _migrated_key(app: App, db_url: str) -> str:
    store = open_store(db_url, Settings(database_url=db_url))
    try:
        await store.migrate()
    finally:
        await store.close()
    return await admin_key(db_url)


async def _steps(db_url: str, job_id: str) -> dict[str, Any]:
    store = open_store(db_url, Settings(database_url=db_url))
    try:
        return {s.key: s for s in await Client(store).steps(job_id)}
    finally:
        await store.close()
