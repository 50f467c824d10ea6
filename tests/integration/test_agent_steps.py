"""Agent steps in an in-process worker, on both backends: the loop runs turn by turn on the
scripted model, every turn and call is stored, invalid arguments go back to the model, a refused
call, a repeated call and max_turns escalate, and a call that needs approval parks the step
without holding a slot (approve and reject)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from pydantic import BaseModel
from tests.integration.conftest import query

from stalwart import App, Budget, ToolContext
from stalwart.client import Client
from stalwart.errors import AuthorizationError
from stalwart.llm import CallTools
from stalwart.llm.scripted import ScriptedModel
from stalwart.llm.types import ModelRequest
from stalwart.settings import Settings
from stalwart.worker.worker import Worker

DONE = ("completed", "failed", "escalated", "dead_lettered", "rejected", "cancelled")


class Ask(BaseModel):
    question: str


class Lookup(BaseModel):
    order: int


class Order(BaseModel):
    order: int
    amount: float


class Refund(BaseModel):
    order: int
    amount: float


class Refunded(BaseModel):
    refund_id: str


class Verdict(BaseModel):
    refunded: bool
    amount: float


class Harness:
    """An app with three tools and an agent workflow, its worker running in this loop."""

    def __init__(
        self,
        db_url: str,
        model: ScriptedModel,
        *,
        extra: Any = None,
        budget: dict[str, Any] | None = None,
        settings: dict[str, Any] | None = None,
        **agent: Any,
    ) -> None:
        self.model = model
        self.looked: list[str] = []
        self.refunds: list[str] = []
        app = App(Settings(database_url=db_url, poll_interval_seconds=0.05, **(settings or {})))
        app.model("scripted:agent", model)
        app.route("small", ["scripted:agent"])
        app.schema(Verdict)

        @app.tool(idempotent=True)
        async def lookup_order(args: Lookup, ctx: ToolContext) -> Order:
            """Look an order up by its number."""
            self.looked.append(ctx.idempotency_key)
            ctx.on_commit(
                "INSERT INTO agent_effects (job, call_key) VALUES (?, ?)",
                (ctx.job_id, ctx.idempotency_key),
            )
            return Order(order=args.order, amount=12.5)

        @app.tool(idempotent=False, risk="high")
        async def refund(args: Refund, ctx: ToolContext) -> Refunded:
            """Refund an order."""
            self.refunds.append(ctx.idempotency_key)
            return Refunded(refund_id=f"r-{args.order}")

        @app.tool(idempotent=True)
        async def read_ledger(args: Lookup, ctx: ToolContext) -> Order:
            """Read the finance ledger (the agent may not)."""
            raise AuthorizationError("the agent's key may not read the ledger", code="http_403")

        names = ["lookup_order", "refund", "read_ledger"]
        if extra is not None:
            names += extra(app, self)
        step = {
            "id": "agent",
            "kind": "agent",
            "prompt": "${input.question}",
            "tools": names,
            "output": "Verdict",
            "tier": "small",
            **agent,
        }
        app.workflow(
            "support",
            input=Ask,
            templates=[{"name": "support", "steps": [step]}],
            **({"budget": Budget(**budget)} if budget else {}),
        )
        self.app = app

    async def __aenter__(self) -> Harness:
        self.store = self.app.store()
        await self.store.migrate()
        await _effects_table(self.store)
        self.client: Client = self.app.client(self.store)
        self.worker: Worker = self.app.worker(store=self.store, worker_id="w-agent")
        self.task = asyncio.create_task(self.worker.run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.worker.stop()
        await asyncio.wait_for(self.task, 30)
        await self.store.close()

    async def submit(self, question: str = "Was order 7 refunded?") -> str:
        return (await self.client.submit("support", {"question": question})).job.id

    async def until(self, job_id: str, statuses: tuple[str, ...] = DONE) -> str:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 60
        while (status := (await self.client.get(job_id)).status) not in statuses:
            assert loop.time() < deadline, f"job {job_id} still {status}"
            await asyncio.sleep(0.02)
        return status

    async def transcript(self, job_id: str) -> dict[str, Any]:
        [one] = await self.store.agent_transcripts(job_id)
        return one.to_dict()


async def _effects_table(store: Any) -> None:
    def create(tx: Any) -> None:
        tx.con.execute(
            "CREATE TABLE IF NOT EXISTS agent_effects (job TEXT NOT NULL, call_key TEXT NOT NULL)"
        )

    await store._write("test", create)


def results(request: ModelRequest) -> list[str]:
    """The tool results the model was sent, in order."""
    return [m.content for m in request.messages if m.role == "tool"]


@pytest.fixture
def db(db_url: str) -> str:
    return db_url


async def test_the_loop_runs_turn_by_turn_and_stores_everything(db: str) -> None:
    model = ScriptedModel("agent").on_step(
        "agent",
        CallTools(("lookup_order", {"order": 7}), text="Looking it up."),
        {"refunded": False, "amount": 12.5},
    )
    async with Harness(db, model) as h:
        job = await h.submit()
        assert await h.until(job) == "completed"
        assert (await h.store.step_list(job))[0].output == {"refunded": False, "amount": 12.5}
        transcript = await h.transcript(job)
    turns = transcript["turns"]
    assert [len(t["calls"]) for t in turns] == [1, 0]
    [call] = turns[0]["calls"]
    assert call["tool"] == "lookup_order" and call["status"] == "succeeded"
    assert call["arguments"] == {"order": 7}
    assert call["result"] == {"order": 7, "amount": 12.5}
    assert all(t["input_tokens"] > 0 and t["cost_usd"] >= 0 for t in turns)
    # The second request carried the first turn and the tool's result.
    assert '"amount": 12.5' in results(model.requests[1])[0]
    # One idempotency key per call, and the tool's effect committed with the call, once.
    assert h.looked == [f"default:{job}:agent:1.0"]
    rows = query(db, "SELECT call_key FROM agent_effects WHERE job = ?", (job,))
    assert rows == [(f"default:{job}:agent:1.0",)]
    # Each turn's and call's event names the worker that ran the loop.
    actors = query(
        db,
        "SELECT DISTINCT actor FROM events WHERE job_id = ? AND kind IN (?, ?)",
        (job, "agent_turn", "agent_tool_call"),
    )
    assert actors == [("w-agent",)]


async def test_invalid_arguments_go_back_to_the_model_which_corrects_them(db: str) -> None:
    model = ScriptedModel("agent").on_step(
        "agent",
        CallTools(("lookup_order", {"order": "seven"})),
        CallTools(("lookup_order", {"order": 7})),
        {"refunded": False, "amount": 12.5},
    )
    async with Harness(db, model) as h:
        job = await h.submit()
        assert await h.until(job) == "completed"
        transcript = await h.transcript(job)
    first, second, _ = transcript["turns"]
    assert first["calls"][0]["status"] == "invalid"
    errors = first["calls"][0]["error"]["errors"]
    assert errors[0]["field"] == "order"
    # The model read which field was wrong before its second turn; the tool ran once, valid.
    assert '"field": "order"' in results(model.requests[1])[0]
    assert second["calls"][0]["status"] == "succeeded"
    assert len(h.looked) == 1


async def test_a_permission_error_escalates_without_another_turn(db: str) -> None:
    model = ScriptedModel("agent").on_step(
        "agent", CallTools(("read_ledger", {"order": 7})), {"refunded": True, "amount": 1.0}
    )
    async with Harness(db, model) as h:
        job = await h.submit()
        assert await h.until(job) == "escalated"
        record = await h.client.get(job)
        transcript = await h.transcript(job)
    assert len(model.requests) == 1  # the model was not asked again
    assert record.error is not None and record.error["code"] == "agent_tool_refused"
    assert transcript["turns"][0]["calls"][0]["status"] == "refused"


async def test_the_same_call_made_again_and_again_escalates(db: str) -> None:
    model = ScriptedModel("agent").on_step("agent", CallTools(("lookup_order", {"order": 7})))
    async with Harness(db, model, max_repeats=3) as h:
        job = await h.submit()
        assert await h.until(job) == "escalated"
        record = await h.client.get(job)
    assert record.error is not None and record.error["code"] == "agent_repeated_call"
    assert len(h.looked) == 2  # the third identical call did not run
    assert len(model.requests) == 3


async def test_max_turns_without_an_answer_escalates(db: str) -> None:
    counter = iter(range(100))

    def another(request: ModelRequest) -> CallTools:
        return CallTools(("lookup_order", {"order": next(counter)}))

    model = ScriptedModel("agent").on_step("agent", another)
    async with Harness(db, model, max_turns=3) as h:
        job = await h.submit()
        assert await h.until(job) == "escalated"
        record = await h.client.get(job)
    assert record.error is not None and record.error["code"] == "agent_max_turns"
    assert len(model.requests) == 3
    assert len(h.looked) == 2  # the last turn's call was not run: nobody would read it


@pytest.mark.parametrize("decision", ["approve", "reject"])
async def test_a_call_that_needs_approval_parks_the_step_holding_no_slot(
    db: str, decision: str
) -> None:
    def answer(request: ModelRequest) -> Any:
        done = results(request)
        if not done:
            return CallTools(("lookup_order", {"order": 7}))
        if len(done) == 1:
            return CallTools(("refund", {"order": 7, "amount": 12.5}))
        return {"refunded": "r-7" in done[-1], "amount": 12.5}

    model = ScriptedModel("agent").on_step("agent", answer)
    async with Harness(db, model) as h:
        job = await h.submit()
        assert await h.until(job, ("waiting_approval",)) == "waiting_approval"
        [review] = [r for r in await h.client.reviews() if r.job_id == job]
        # The step holds no lease and the worker no slot while the reviewer thinks.
        [step] = await h.store.step_list(job)
        assert step.status == "awaiting_approval" and step.lease_owner is None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while h.worker.busy:  # the attempt returns right after the park commits
            assert loop.time() < deadline, "the parked step still holds a worker slot"
            await asyncio.sleep(0.01)
        assert review.kind == "agent_call"
        assert review.context["tool"] == "refund"
        assert review.context["args"] == {"order": 7, "amount": 12.5}
        assert review.context["transcript"][0]["calls"][0]["tool"] == "lookup_order"
        asked = len(model.requests)
        if decision == "approve":
            await h.client.approve(review.id, reviewer="alice")
        else:
            await h.client.reject(review.id, reviewer="alice", comment="refunds need a ticket")
        assert await h.until(job) == "completed"
        output = (await h.store.step_list(job))[0].output
        transcript = await h.transcript(job)
    refund_call = transcript["turns"][1]["calls"][0]
    # The loop went on from storage: turns before the park were not asked again.
    assert len(model.requests) == asked + 1
    assert len(h.looked) == 1
    if decision == "approve":
        assert h.refunds == [f"default:{job}:agent:2.0"]
        assert refund_call["status"] == "succeeded" and output["refunded"] is True
    else:
        assert h.refunds == []
        assert refund_call["status"] == "rejected"
        assert "refunds need a ticket" in results(model.requests[-1])[-1]
        assert output["refunded"] is False


async def test_the_review_of_a_call_shows_the_goal_the_transcript_and_the_call(
    db: str,
) -> None:
    import html

    from starlette.testclient import TestClient
    from tests.integration.test_attempt_arguments import signed_in
    from tests.integration.test_escalation_cause import admin_key, stalwart

    from stalwart.api import create_api

    def answer(request: ModelRequest) -> Any:
        done = results(request)
        if not done:
            return CallTools(("lookup_order", {"order": 7}), text="First the order.")
        if len(done) == 1:
            return CallTools(("refund", {"order": 7, "amount": 12.5}))
        return {"refunded": True, "amount": 12.5}

    model = ScriptedModel("agent").on_step("agent", answer)
    async with Harness(db, model) as h:
        # Square brackets in the goal: shown as written, never read as rich markup.
        job = await h.submit("Refund order 7 if it was charged twice. [/] [bold]")
        await h.until(job, ("waiting_approval",))
        [review] = [r for r in await h.client.reviews() if r.job_id == job]
        token = await admin_key(db)

        def look() -> tuple[str, str]:
            settings = Settings(database_url=db)
            with TestClient(create_api(h.app, settings=settings, workers=0)) as http:
                signed_in(http, token)
                page = html.unescape(http.get(f"/ui/reviews/{review.id}").text)
            shown = stalwart(db, "review", "show", review.id).stdout
            return page, shown

        page, shown = await asyncio.to_thread(look)
        await h.client.approve(review.id, reviewer="alice")
        assert await h.until(job) == "completed"
    goal = page.split('id="agent-goal"', 1)[1].split("</p>", 1)[0]
    assert "Refund order 7 if it was charged twice." in goal
    transcript = page.split('id="transcript"', 1)[1].split("</section>", 1)[0]
    assert "First the order." in transcript and "lookup_order" in transcript
    assert '"amount": 12.5' in page and "refund" in page
    assert "goal:   Refund order 7 if it was charged twice. [/] [bold]" in shown
    assert "turn 1: lookup_order -> succeeded" in shown
