"""Resuming an agent loop whose worker died, in process, on both backends: the dead worker's
lease is taken back with the call it had started still `running`, and the next attempt follows
the tool-step rules for it: an idempotent tool runs again under the same key, a tool with a
reconcile function is reconciled first, any other parks the step for a person. Recorded turns
are not asked again."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import BaseModel
from tests.integration.test_agent_steps import Harness, Lookup, Order, results

from stalwart import App, ToolContext
from stalwart.domain.agents import AgentCall, AgentTurn, TurnCheckpoint
from stalwart.llm.scripted import ScriptedModel
from stalwart.llm.types import ModelRequest


class Charge(BaseModel):
    order: int


class Charged(BaseModel):
    charge_id: str


def tools(app: App, h: Harness) -> list[str]:
    h.ran = []  # type: ignore[attr-defined]
    h.reconciled = []  # type: ignore[attr-defined]
    h.effects = set()  # type: ignore[attr-defined]

    async def find_charge(args: Charge, ctx: ToolContext) -> Charged | None:
        h.reconciled.append(ctx.idempotency_key)  # type: ignore[attr-defined]
        if ctx.idempotency_key in h.effects:  # type: ignore[attr-defined]
            return Charged(charge_id=f"ch-{args.order}")
        return None

    @app.tool(idempotent=False, reconcile=find_charge)
    async def charge(args: Charge, ctx: ToolContext) -> Charged:
        """Charge an order (finds out, after a crash, whether it did)."""
        h.ran.append(("charge", ctx.idempotency_key))  # type: ignore[attr-defined]
        return Charged(charge_id=f"ch-{args.order}")

    @app.tool(idempotent=False)
    async def send_mail(args: Lookup, ctx: ToolContext) -> Order:
        """Send the customer a mail (cannot tell whether it did)."""
        h.ran.append(("send_mail", ctx.idempotency_key))  # type: ignore[attr-defined]
        return Order(order=args.order, amount=0.0)

    @app.tool(idempotent=True)
    async def peek(args: Lookup, ctx: ToolContext) -> Order:
        """Look an order up (harmless twice)."""
        h.ran.append(("peek", ctx.idempotency_key))  # type: ignore[attr-defined]
        return Order(order=args.order, amount=4.0)

    return ["charge", "send_mail", "peek"]


def final(request: ModelRequest) -> Any:
    done = results(request)
    assert done, "the resumed request lost the cut-off call's result"
    return {"refunded": False, "amount": 4.0}


async def cut_off(h: Harness, tool: str, args: dict[str, Any]) -> str:
    """A job whose first turn asked for `tool(args)`, recorded, and whose worker died with that
    call running: its lease taken back as a restart under the dead worker's id would."""
    store = h.app.store()
    await store.migrate()
    job = (await h.app.client(store).submit("support", {"question": "q"})).job.id
    [claim] = await store.step_claim("ghost", limit=1, lease_seconds=60)
    turn = AgentTurn(
        turn=1,
        attempt=claim.attempt,
        text="",
        tool_calls=[{"id": "c1", "name": tool, "arguments": json.dumps(args)}],
    )
    point = TurnCheckpoint(claim.step_id, claim.lease_token, 1, claim.attempt)
    assert await store.agent_turn_record(claim, point, turn, actor="ghost")
    call = AgentCall(1, 0, "c1", tool, json.dumps(args), "new")
    assert (await store.agent_call_start(claim, call, actor="ghost")).started
    assert await store.leases_reclaim(["ghost"], actor="test") == 1
    return job  # the app's store: the harness closes it


async def test_an_idempotent_call_cut_off_runs_again_under_the_same_key(db_url: str) -> None:
    model = ScriptedModel("agent").on_step("agent", final)
    h = Harness(db_url, model, extra=tools)
    job = await cut_off(h, "peek", {"order": 7})
    async with h:
        assert await h.until(job) == "completed"
        transcript = await h.transcript(job)
    assert h.ran == [("peek", f"default:{job}:agent:1.0")]  # type: ignore[attr-defined]
    assert len(model.requests) == 1  # turn 1 was not asked again
    assert '"amount": 4.0' in results(model.requests[0])[0]
    assert transcript["turns"][0]["calls"][0]["attempts"] == 2


@pytest.mark.parametrize("happened", [True, False])
async def test_a_call_with_a_reconcile_function_is_reconciled_first(
    db_url: str, happened: bool
) -> None:
    model = ScriptedModel("agent").on_step("agent", final)
    h = Harness(db_url, model, extra=tools)
    job = await cut_off(h, "charge", {"order": 7})
    key = f"default:{job}:agent:1.0"
    if happened:
        h.effects.add(key)  # type: ignore[attr-defined]
    async with h:
        assert await h.until(job) == "completed"
    assert h.reconciled == [key]  # type: ignore[attr-defined]
    assert h.ran == ([] if happened else [("charge", key)])  # type: ignore[attr-defined]
    assert len(model.requests) == 1


@pytest.mark.parametrize("decision", ["approve", "reject"])
async def test_any_other_call_cut_off_waits_for_a_person(db_url: str, decision: str) -> None:
    model = ScriptedModel("agent").on_step("agent", final)
    h = Harness(db_url, model, extra=tools)
    job = await cut_off(h, "send_mail", {"order": 7})
    async with h:
        assert await h.until(job, ("waiting_approval",)) == "waiting_approval"
        [review] = [r for r in await h.client.reviews() if r.job_id == job]
        assert review.kind == "agent_interrupted" and h.ran == []  # type: ignore[attr-defined]
        assert review.context["tool"] == "send_mail" and review.context["args"] == {"order": 7}
        if decision == "approve":
            await h.client.approve(review.id, reviewer="alice")
        else:
            await h.client.reject(review.id, reviewer="alice", comment="it was sent")
        assert await h.until(job) == "completed"
        transcript = await h.transcript(job)
    key = f"default:{job}:agent:1.0"
    call = transcript["turns"][0]["calls"][0]
    if decision == "approve":
        assert h.ran == [("send_mail", key)]  # type: ignore[attr-defined]
        assert call["status"] == "succeeded"
    else:
        assert h.ran == []  # type: ignore[attr-defined]
        assert call["status"] == "rejected"
        assert "it was sent" in results(model.requests[0])[0]
