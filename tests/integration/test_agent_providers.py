"""An agent loop against the local provider server, over OpenAI's and Anthropic's tool-calling
protocols, on both backends: the model's tool calls reach the tools, the results go back in each
protocol's shape, and the answer validates in the step's schema."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from tests.fakes.provider_server import CallTools, ProviderServer, RecordedRequest
from tests.integration.test_agent_steps import Harness

from stalwart.llm.scripted import ScriptedModel


def respond(record: RecordedRequest) -> Any:
    done = record.tool_results
    if not done:
        return CallTools((("lookup_order", {"order": 7}),), text="Let me look.")
    if len(done) == 1:
        return CallTools((("lookup_order", {"order": 8}),))
    amounts = [json.loads(r["content"])["amount"] for r in done]
    return {"refunded": False, "amount": sum(amounts)}


@pytest.fixture
def server() -> Iterator[ProviderServer]:
    with ProviderServer(respond) as running:
        yield running


@pytest.mark.parametrize("protocol", ["openai", "anthropic"])
async def test_an_agent_loop_over_each_providers_protocol(
    db_url: str, server: ProviderServer, protocol: str
) -> None:
    base = server.openai_base_url if protocol == "openai" else server.url
    endpoints = {"local": {"kind": protocol, "base_url": base}}
    h = Harness(db_url, ScriptedModel("unused"), settings={"llm_endpoints": endpoints}, max_turns=4)
    h.app.route("small", ["local:m"])
    async with h:
        job = await h.submit()
        assert await h.until(job) == "completed"
        [step] = await h.store.step_list(job)
        transcript = await h.transcript(job)
    assert step.output == {"refunded": False, "amount": 25.0}
    assert server.count() == 3
    assert all(r.protocol == protocol for r in server.requests)
    # Each request carried the whole transcript: the third, both calls and both results.
    third = server.requests[2]
    assert [c["name"] for c in third.assistant_tool_calls] == ["lookup_order", "lookup_order"]
    assert len(third.tool_results) == 2
    assert [len(t["calls"]) for t in transcript["turns"]] == [1, 1, 0]
    assert transcript["turns"][0]["text"] == "Let me look."
    assert all(t["input_tokens"] > 0 for t in transcript["turns"])
