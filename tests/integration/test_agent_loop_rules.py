"""The rules of an agent loop's tool calls in an in-process worker, on both backends: transient
failures retried under the tool's policy before the model reads a result, a tool's concurrency
cap held per call across jobs, a budget that refuses a turn ending the loop through the step's
budget policy, a summary replacing earlier turns once the transcript outgrows the window, and a
cancelled job stopping its loop."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

from pydantic import BaseModel
from tests.integration.conftest import query
from tests.integration.test_agent_steps import Harness, Lookup, Order, results

from stalwart import App, RetryPolicy, ToolContext
from stalwart.errors import TransientError
from stalwart.llm import CallTools
from stalwart.llm.scripted import ScriptedModel
from stalwart.llm.types import ModelRequest


class Word(BaseModel):
    word: str


def flaky(fails: int) -> Any:
    def register(app: App, h: Harness) -> list[str]:
        h.tries = []  # type: ignore[attr-defined]

        @app.tool(idempotent=True, retry=RetryPolicy(max_attempts=3, base_seconds=0.01))
        async def flaky_lookup(args: Lookup, ctx: ToolContext) -> Order:
            """Look an order up; the service is shaky."""
            h.tries.append(ctx.attempt)  # type: ignore[attr-defined]
            if len(h.tries) <= fails:  # type: ignore[attr-defined]
                raise TransientError("the order service timed out")
            return Order(order=args.order, amount=3.0)

        return ["flaky_lookup"]

    return register


def answer_after_one_call(tool: str) -> Any:
    def answer(request: ModelRequest) -> Any:
        done = results(request)
        if not done:
            return CallTools((tool, {"order": 7}))
        return {"refunded": False, "amount": 3.0 if '"amount": 3.0' in done[0] else -1.0}

    return answer


async def test_transient_failures_are_retried_before_the_model_reads_a_result(db_url: str) -> None:
    model = ScriptedModel("agent").on_step("agent", answer_after_one_call("flaky_lookup"))
    async with Harness(db_url, model, extra=flaky(2)) as h:
        job = await h.submit()
        assert await h.until(job) == "completed"
        transcript = await h.transcript(job)
    [call] = transcript["turns"][0]["calls"]
    assert call["status"] == "succeeded" and call["attempts"] == 3
    assert h.tries == [1, 2, 3]  # type: ignore[attr-defined]
    assert len(model.requests) == 2  # the model was not asked between the retries
    assert (await_output := transcript["turns"][1]["text"]) and '"amount": 3.0' in await_output


async def test_exhausted_retries_send_the_error_to_the_model(db_url: str) -> None:
    model = ScriptedModel("agent").on_step("agent", answer_after_one_call("flaky_lookup"))
    async with Harness(db_url, model, extra=flaky(10)) as h:
        job = await h.submit()
        assert await h.until(job) == "completed"
        transcript = await h.transcript(job)
    [call] = transcript["turns"][0]["calls"]
    assert call["status"] == "failed" and call["attempts"] == 3
    assert call["error"]["error_class"] == "transient"
    assert "timed out" in results(model.requests[1])[0]


def capped(app: App, h: Harness) -> list[str]:
    h.inside = 0  # type: ignore[attr-defined]
    h.most = 0  # type: ignore[attr-defined]

    @app.tool(idempotent=True, concurrency=1)
    async def slow_lookup(args: Lookup, ctx: ToolContext) -> Order:
        """Look an order up; one at a time."""
        h.inside += 1  # type: ignore[attr-defined]
        h.most = max(h.most, h.inside)  # type: ignore[attr-defined]
        await asyncio.sleep(0.05)
        h.inside -= 1  # type: ignore[attr-defined]
        return Order(order=args.order, amount=3.0)

    return ["slow_lookup"]


async def test_a_tools_concurrency_cap_holds_per_call_across_jobs(db_url: str) -> None:
    model = ScriptedModel("agent").on_step("agent", answer_after_one_call("slow_lookup"))
    async with Harness(db_url, model, extra=capped) as h:
        jobs = [await h.submit(f"order {n}?") for n in range(4)]
        for job in jobs:
            assert await h.until(job) == "completed"
        events = [
            e for job in jobs for e in await h.store.event_list(job) if e.kind == "agent_tool_call"
        ]
    assert h.most == 1  # type: ignore[attr-defined]
    assert len(events) == 4 and all(e.data["outcome"] == "succeeded" for e in events)


async def test_a_refused_turn_ends_the_loop_through_the_budget_policy(db_url: str) -> None:
    model = ScriptedModel("agent").on_step(
        "agent",
        CallTools(("lookup_order", {"order": 7}), text="x " * 1000),
        {"refunded": False, "amount": 1.0},
    )
    prices = {"scripted:agent": {"input_per_mtok": 100.0, "output_per_mtok": 100.0}}
    h = Harness(
        db_url,
        model,
        budget={"on_exceeded": "escalate"},
        settings={"llm_prices": prices},
        max_tokens=1000,
    )
    # The tenant's day, not the job's budget: a job's budget that cannot hold every turn's
    # worst case is refused at submit (the plan's estimate counts max_turns turns).
    h.app.tenant_budget("default", daily_usd=0.2)
    async with h:
        job = await h.submit()
        assert await h.until(job) == "escalated"
        record = await h.client.get(job)
        transcript = await h.transcript(job)
        calls = await h.store.llm_call_list(job)
    assert record.error is not None and record.error["error_class"] == "budget"
    # The first turn fit and ran its call; the second was refused before the model saw it.
    assert len(transcript["turns"]) == 1 and len(model.requests) == 1
    assert [c.outcome for c in calls] == ["ok", "refused"]


async def test_a_long_transcript_is_summarized_and_the_summary_is_stored(db_url: str) -> None:
    def answer(request: ModelRequest) -> Any:
        if request.meta.get("purpose") == "summarization":
            return "Orders 0 to 2 were looked up; each was 12.5."
        if len(model.requests) >= 6:
            return {"refunded": False, "amount": 12.5}
        return CallTools(("lookup_order", {"order": len(model.requests)}), text="x " * 400)

    model = ScriptedModel("agent").on_step("agent", answer)
    async with Harness(
        db_url, model, context_window=1024, settings={"context_summarize_ratio": 0.5}
    ) as h:
        job = await h.submit()
        assert await h.until(job) == "completed"
        transcript = await h.transcript(job)
    summarized = [t for t in transcript["turns"] if t["summary"]]
    assert summarized, "no turn carried a summary"
    summaries = [r for r in model.requests if r.meta.get("purpose") == "summarization"]
    assert summaries
    later = [
        r
        for r in model.requests
        if r.meta.get("purpose") != "summarization"
        and any("Summary of the work so far" in m.content for m in r.messages)
    ]
    assert later and all(len(r.messages) < 8 for r in later)


async def test_a_cancelled_job_stops_its_loop(db_url: str) -> None:
    gate = asyncio.Event()

    def blocking(app: App, h: Harness) -> list[str]:
        @app.tool(idempotent=True)
        async def wait_for_me(args: Word, ctx: ToolContext) -> Word:
            """Wait until told."""
            gate.set()
            await ctx.wait_cancelled()
            ctx.raise_if_cancelled()
            return args

        return ["wait_for_me"]

    model = ScriptedModel("agent").on_step(
        "agent", CallTools(("wait_for_me", {"word": "hi"})), {"refunded": False, "amount": 0.0}
    )
    async with Harness(db_url, model, extra=blocking, settings={"lease_seconds": 3.0}) as h:
        job = await h.submit()
        await asyncio.wait_for(gate.wait(), 30)
        await h.client.cancel(job)
        assert await h.until(job) == "cancelled"
    assert len(model.requests) == 1


def rated(app: App, h: Harness) -> list[str]:
    h.times = []  # type: ignore[attr-defined]

    @app.tool(idempotent=True, rate_limit="5/s", burst=1)
    async def rated_lookup(args: Lookup, ctx: ToolContext) -> Order:
        """Look an order up; five a second at most."""
        h.times.append(asyncio.get_running_loop().time())  # type: ignore[attr-defined]
        return Order(order=args.order, amount=1.0)

    return ["rated_lookup"]


async def test_a_tools_rate_limit_spaces_an_agents_calls(db_url: str) -> None:
    def answer(request: ModelRequest) -> Any:
        done = results(request)
        if len(done) < 4:
            return CallTools(("rated_lookup", {"order": len(done)}))
        return {"refunded": False, "amount": 4.0}

    model = ScriptedModel("agent").on_step("agent", answer)
    async with Harness(db_url, model, extra=rated) as h:
        job = await h.submit()
        assert await h.until(job) == "completed"
    times = h.times  # type: ignore[attr-defined]
    assert len(times) == 4
    # One token a fifth of a second, bucket of one: no two calls closer than that (a bound
    # load can only widen), the first one free.
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert min(gaps) >= 0.15, gaps


async def test_the_steps_timeout_bounds_a_whole_attempt(db_url: str) -> None:
    def stuck(app: App, h: Harness) -> list[str]:
        @app.tool(idempotent=True, timeout=600)
        async def hang(args: Word, ctx: ToolContext) -> Word:
            """Never answers."""
            await asyncio.Event().wait()
            return args

        return ["hang"]

    model = ScriptedModel("agent").on_step(
        "agent", CallTools(("hang", {"word": "x"})), {"refunded": False, "amount": 0.0}
    )
    async with Harness(
        db_url, model, extra=stuck, timeout_seconds=0.5, retry={"max_attempts": 1}
    ) as h:
        job = await h.submit()
        assert await h.until(job) == "dead_lettered"
        record = await h.client.get(job)
        transcript = await h.transcript(job)
    assert record.error is not None and record.error["code"] == "timeout"
    assert "timed out after 0.5s" in record.error["message"]
    # The call it cut off stays `running`: a redrive would follow the tool-step rules for it.
    assert transcript["turns"][0]["calls"][0]["status"] == "running"


async def test_a_calls_failed_effect_is_named_and_nothing_of_it_is_kept(db_url: str) -> None:
    def broken(app: App, h: Harness) -> list[str]:
        @app.tool(idempotent=True)
        async def write_note(args: Word, ctx: ToolContext) -> Word:
            """Note a word in the user's table (its SQL is wrong)."""
            ctx.on_commit(
                "INSERT INTO agent_effects (job, call_key) VALUES (?, ?)", (ctx.job_id, "k")
            )
            ctx.on_commit("INSERT INTO no_such_table (x) VALUES (?)", (1,))
            return args

        return ["write_note"]

    model = ScriptedModel("agent").on_step(
        "agent", CallTools(("write_note", {"word": "x"})), {"refunded": False, "amount": 0.0}
    )
    async with Harness(db_url, model, extra=broken) as h:
        job = await h.submit()
        assert await h.until(job) == "escalated"
        record = await h.client.get(job)
        transcript = await h.transcript(job)
    assert record.error is not None and record.error["code"] == "effect_failed"
    assert "on_commit effect 2 failed" in record.error["message"]
    [call] = transcript["turns"][0]["calls"]
    assert call["status"] == "refused" and call["error"]["code"] == "effect_failed"
    # The first effect went with the failed transaction: nothing of the call's writes is kept.
    assert query(db_url, "SELECT count(*) FROM agent_effects WHERE job = ?", (job,)) == [(0,)]
    assert len(model.requests) == 1
