"""An agent step's transcript written as the engine writes it, for the tests that show it (the
client, the API, the CLI, the web UI): a claim of the agent step, then its turns and tool calls
through the store's fenced writes, under the claim's lease token. What the model and the tool
wrote holds markup of HTML and of rich's console syntax, which every view must show as text."""

from __future__ import annotations

from dataclasses import dataclass

from tests.store.conformance import agent_step, make_step, submit

from stalwart import Settings
from stalwart.domain.agents import AgentCall, AgentTurn, TurnCheckpoint
from stalwart.store import Store, open_store

WORKER = "w-agent"
TEXT = "Looking up <b>ACME</b> [bold red]now[/] & then"
RESULT = {"terms": "net 30 <script>alert(1)</script>"}
LONG = "x" * 5_000


@dataclass
class Seeded:
    """Acme's job with an agent step two turns in, its last call waiting for a reviewer; an acme
    job without an agent step; a globex job whose agent step has not run."""

    job_id: str
    review_id: str
    plain_id: str
    other_id: str


async def write_transcript(store: Store) -> tuple[str, str]:
    """Claim acme's agent step and write two turns: the first asks for a lookup (it succeeds)
    and a call with broken arguments (invalid); the second asks for a payment, which parks the
    step for a reviewer. The job's id and the review's."""
    job = await submit(store, agent_step("research"), make_step("notify", deps=["research"]))
    [claim] = await store.step_claim(WORKER, limit=1, lease_seconds=30)
    assert claim.key == "research"

    async def turn(number: int, text: str, calls: list[AgentCall], tokens: tuple[int, int]) -> None:
        record = AgentTurn(
            turn=number,
            attempt=claim.attempt,
            text=text,
            tool_calls=[{"id": c.call_id, "name": c.tool, "arguments": c.arguments} for c in calls],
            finish_reason="tool_calls",
            provider="scripted",
            model="tiny-1",
            input_tokens=tokens[0],
            output_tokens=tokens[1],
            cost_nanos=12_000 * number,
        )
        checkpoint = TurnCheckpoint(claim.step_id, claim.lease_token, number, claim.attempt)
        assert await store.agent_turn_record(claim, checkpoint, record, actor=WORKER)

    lookup = AgentCall(
        1, 0, "c1", "lookup_vendor", '{"vendor": "ACME", "note": "' + LONG + '"}', ""
    )
    broken = AgentCall(1, 1, "c2", "lookup_vendor", '{"vendor": ', "invalid")
    await turn(1, TEXT, [lookup, broken], (120, 30))
    assert (await store.agent_call_start(claim, lookup, actor=WORKER)).started
    lookup.status, lookup.result = "succeeded", RESULT
    assert await store.agent_call_finish(claim, lookup, actor=WORKER)
    broken.error = {"code": "invalid_arguments", "message": "the arguments are not JSON <i>"}
    assert await store.agent_call_finish(claim, broken, actor=WORKER, ran=False)

    pay = AgentCall(2, 0, "c3", "send_payment", '{"amount": 500}', "")
    await turn(2, "", [pay], (200, 40))
    assert await store.agent_park(
        claim,
        pay,
        actor=WORKER,
        kind="agent_call",
        reason="send_payment needs a reviewer",
        asked="Pay 500?",
        options=[{"name": "approve"}, {"name": "reject"}],
        context={"call": pay.to_dict()},
    )
    assert pay.review_id is not None
    return job.id, pay.review_id


async def seed_database(db_url: str) -> Seeded:
    store = open_store(db_url, Settings(database_url=db_url))
    try:
        await store.migrate()
        job_id, review_id = await write_transcript(store)
        plain = await submit(store)
        other = await submit(store, agent_step("research"), tenant="globex")
        return Seeded(job_id, review_id, plain.id, other.id)
    finally:
        await store.close()
