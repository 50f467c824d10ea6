"""Tool-calling turns through the gateway on both backends: each turn is reserved at its worst case
(tools and transcript counted), settled to what the provider reported, and has its ledger row; a
refused turn never reaches the provider; a cacheable turn is answered from the tenant's cache only
for the same transcript."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from pydantic import BaseModel
from tests.fakes.provider_server import CallTools, ProviderServer, RecordedRequest

from stalwart.errors import BudgetExceeded
from stalwart.llm.gateway import Gateway, LlmCall
from stalwart.llm.pricing import ModelPrice, Pricing
from stalwart.llm.routing import ModelRegistry, Router
from stalwart.llm.types import Message, ToolSpec
from stalwart.settings import Settings
from stalwart.store import Store, open_store

LOOKUP = ToolSpec(
    "lookup_order",
    "An order by its number.",
    {"type": "object", "properties": {"number": {"type": "integer"}}, "required": ["number"]},
)
REFUND = ToolSpec(
    "refund",
    "Refund an order.",
    {"type": "object", "properties": {"number": {"type": "integer"}}, "required": ["number"]},
)
QUESTION = (Message("user", "Was order 7 refunded?"),)
PRICES = {"local:cheap": ModelPrice(input_per_mtok=1.0, output_per_mtok=2.0)}


class Verdict(BaseModel):
    refunded: bool


def respond(record: RecordedRequest) -> CallTools | dict[str, Any]:
    if record.tool_results:
        return {"refunded": False}
    return CallTools((("lookup_order", {"number": 7}), ("refund", "{not json")))


@pytest.fixture
def server() -> Iterator[ProviderServer]:
    with ProviderServer(respond) as running:
        yield running


@pytest.fixture
async def store(db_url: str) -> AsyncIterator[Store]:
    s = open_store(db_url, Settings(database_url=db_url))
    await s.migrate()
    yield s
    await s.close()


@pytest.fixture
async def gateway(store: Store, server: ProviderServer) -> AsyncIterator[Gateway]:
    settings = Settings(
        llm_endpoints={"local": {"kind": "openai", "base_url": server.openai_base_url}},
        llm_timeout_seconds=5,
    )
    routes = {tier: ["local:cheap"] for tier in ("small", "medium", "large")}
    gw = Gateway(
        store=store,
        router=Router(routes, settings),
        models=ModelRegistry(settings, {}),
        pricing=Pricing(PRICES),
        settings=settings,
    )
    yield gw
    await gw.close()


def turn(messages: tuple[Message, ...], **fields: Any) -> LlmCall:
    return LlmCall(
        messages=messages, output=Verdict, max_tokens=80, tools=(LOOKUP, REFUND), **fields
    )


async def test_tool_turns_have_settled_ledger_rows(
    store: Store, server: ProviderServer, gateway: Gateway
) -> None:
    scope = gateway.scope("acme", "job-t", step_key="agent", attempt=1, purpose="reasoning")
    first = await gateway.call(turn(QUESTION), scope)
    lookup, refund = first.tool_calls
    assert lookup.parsed == {"number": 7}
    assert refund.parsed is None and refund.arguments == "{not json"  # kept, not a crash
    transcript = (
        *QUESTION,
        Message.assistant_tool_calls(first.tool_calls),
        Message.tool_result(lookup.id, '{"status": "shipped"}'),
        Message.tool_result(refund.id, '{"error": "arguments are not JSON"}', is_error=True),
    )
    final = await gateway.call(turn(transcript), scope)
    assert final.data == {"refunded": False}

    rows = await store.llm_call_list("job-t")
    assert [(r.outcome, r.step_key, r.attempt) for r in rows] == [("ok", "agent", 1)] * 2
    for row, request in zip(rows, server.requests, strict=True):
        assert row.input_tokens == request.input_tokens() > 0 and row.output_tokens > 0
        assert row.cost_nanos == Pricing(PRICES).cost_nanos(
            "local", "cheap", input_tokens=row.input_tokens, output_tokens=row.output_tokens
        )
    assert rows[1].input_tokens > rows[0].input_tokens  # the transcript is paid for
    [job] = [b for b in await store.budget_list() if b.key == "job:job-t"]
    assert job.reserved_nanos == 0 and job.spent_nanos == sum(r.cost_nanos for r in rows)


async def test_a_turn_the_budget_cannot_cover_is_refused_before_sending(
    store: Store, server: ProviderServer, gateway: Gateway
) -> None:
    # Room for the first turn's worst case, not for the second's (its transcript is longer).
    long_result = Message.tool_result("x", "y" * 2000)
    scope = gateway.scope("acme", "job-b", step_key="agent", job_max_tokens=600)
    first = await gateway.call(turn(QUESTION), scope)
    with pytest.raises(BudgetExceeded):
        await gateway.call(
            turn((*QUESTION, Message.assistant_tool_calls(first.tool_calls), long_result)), scope
        )
    assert server.count() == 1
    rows = await store.llm_call_list("job-b")
    assert [r.outcome for r in rows] == ["ok", "refused"]
    [job] = [b for b in await store.budget_list() if b.key == "job:job-b"]
    assert job.reserved_nanos == 0 and job.reserved_tokens == 0


async def test_a_cacheable_tool_turn_is_a_ledger_hit_for_the_same_transcript(
    store: Store, server: ProviderServer, gateway: Gateway
) -> None:
    first = await gateway.call(turn(QUESTION, cacheable=True), gateway.scope("acme", "job-c1"))
    again = await gateway.call(turn(QUESTION, cacheable=True), gateway.scope("acme", "job-c2"))
    assert again.cache_hit and again.tool_calls == first.tool_calls
    assert server.count() == 1
    [hit] = await store.llm_call_list("job-c2")
    assert (hit.outcome, hit.cache_hit, hit.cost_nanos) == ("cached", True, 0)
