"""Tool calling through the gateway: both provider adapters over real HTTP against the local fake
server (tools offered, calls parsed, the transcript replayed in each protocol's shape), the
scripted model's tool turns, and the gateway's ledger, budgets, cache and fallback for tool turns.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from pydantic import BaseModel
from tests.fakes.provider_server import CallTools as ServerCallTools
from tests.fakes.provider_server import Fail, ProviderServer, RecordedRequest

from stalwart.errors import BudgetExceeded, ConfigurationError
from stalwart.llm.gateway import Gateway, LlmCall
from stalwart.llm.pricing import ModelPrice, Pricing
from stalwart.llm.providers import AnthropicModel, OpenAIChatModel
from stalwart.llm.routing import ModelRegistry, Router
from stalwart.llm.scripted import CallTools, ScriptedModel
from stalwart.llm.telemetry import record_chat
from stalwart.llm.types import Message, Model, ModelRequest, ModelResponse, ToolCall, ToolSpec
from stalwart.settings import Settings
from stalwart.store import Store, open_store

WEATHER = ToolSpec(
    "get_weather",
    "The weather in a city now.",
    {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)
TIME = ToolSpec(
    "get_time",
    "The local time in a city.",
    {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)
QUESTION = (
    Message("system", "You answer travel questions."),
    Message("user", "Weather and time in Paris?"),
)
PRICES = {
    "local:cheap": ModelPrice(input_per_mtok=1.0, output_per_mtok=2.0),
    "local:backup": ModelPrice(input_per_mtok=1.0, output_per_mtok=2.0),
    "ant:claude": ModelPrice(input_per_mtok=3.0, output_per_mtok=15.0),
}


class Trip(BaseModel):
    summary: str


def tool_request(
    messages: tuple[Message, ...] = QUESTION,
    *,
    tools: tuple[ToolSpec, ...] = (WEATHER, TIME),
    **fields: Any,
) -> ModelRequest:
    return ModelRequest(
        model="m", messages=messages, max_tokens=200, timeout_seconds=5, tools=tools, **fields
    )


def two_calls_answered(calls: tuple[ToolCall, ...]) -> tuple[Message, ...]:
    """The transcript after the model's two calls and their results (the second one failed)."""
    return (
        *QUESTION,
        Message.assistant_tool_calls(calls, "Looking it up."),
        Message.tool_result(calls[0].id, '{"temp_c": 14}'),
        Message.tool_result(calls[1].id, '{"error": "clock down"}', is_error=True),
    )


PARIS = (("get_weather", {"city": "Paris"}), ("get_time", {"city": "Paris"}))


@pytest.fixture
def server() -> Iterator[ProviderServer]:
    with ProviderServer() as running:
        yield running


@pytest.fixture
async def openai_model(server: ProviderServer) -> AsyncIterator[OpenAIChatModel]:
    model = OpenAIChatModel("gpt-4o-mini", base_url=server.openai_base_url, timeout_seconds=5)
    yield model
    await model.close()


@pytest.fixture
async def anthropic_model(server: ProviderServer) -> AsyncIterator[AnthropicModel]:
    model = AnthropicModel("claude-x", base_url=server.url, timeout_seconds=5)
    yield model
    await model.close()


# -- OpenAI ---------------------------------------------------------------------------------------


async def test_openai_offers_tools_and_parses_a_parallel_call_of_two(
    server: ProviderServer, openai_model: OpenAIChatModel
) -> None:
    server.respond = lambda record: ServerCallTools(PARIS, text="Looking it up.")
    response = await openai_model.complete(tool_request(tool_choice="required"))

    [seen] = server.requests
    assert seen.tools == ["get_weather", "get_time"]
    assert seen.tool_schema("get_weather") == dict(WEATHER.parameters)
    assert seen.body is not None and seen.body["tools"][0]["function"]["description"] == (
        WEATHER.description
    )
    assert seen.tool_choice == "required"
    assert seen.parallel_tool_calls is None  # the provider's default: parallel allowed
    assert response.finish_reason == "tool_calls"
    assert response.text == "Looking it up."
    assert [(c.name, c.parsed) for c in response.tool_calls] == [
        ("get_weather", {"city": "Paris"}),
        ("get_time", {"city": "Paris"}),
    ]
    assert all(c.ok and c.parse_error is None for c in response.tool_calls)
    assert len({c.id for c in response.tool_calls}) == 2
    assert response.tool_calls[0].arguments == json.dumps({"city": "Paris"})
    assert response.input_tokens == seen.input_tokens() > 0 and response.output_tokens > 0


async def test_openai_sends_the_transcript_back_in_its_shape(
    server: ProviderServer, openai_model: OpenAIChatModel
) -> None:
    server.respond = lambda record: ServerCallTools(PARIS)
    first = await openai_model.complete(tool_request())
    assert first.text == ""  # content null: no text came with the calls
    server.respond = lambda record: "Paris: 14 C, clock unknown."
    final = await openai_model.complete(tool_request(two_calls_answered(first.tool_calls)))

    assert final.text == "Paris: 14 C, clock unknown." and final.tool_calls == ()
    assert final.finish_reason == "stop"
    seen = server.requests[1]
    assert seen.body is not None
    assistant, weather, clock = seen.body["messages"][2:]
    assert assistant == {
        "role": "assistant",
        "content": "Looking it up.",
        "tool_calls": [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": call.arguments},
            }
            for call in first.tool_calls
        ],
    }
    assert weather == {
        "role": "tool",
        "tool_call_id": first.tool_calls[0].id,
        "content": '{"temp_c": 14}',
    }
    assert clock["role"] == "tool" and clock["tool_call_id"] == first.tool_calls[1].id
    # The results are counted as input.
    assert final.input_tokens == seen.input_tokens() > server.requests[0].input_tokens()


async def test_openai_tool_choice_and_single_call_are_sent(
    server: ProviderServer, openai_model: OpenAIChatModel
) -> None:
    server.respond = lambda record: ServerCallTools((PARIS[0],))
    await openai_model.complete(tool_request(tool_choice="get_weather", parallel_tool_calls=False))
    await openai_model.complete(tool_request(parallel_tool_calls=True))
    named, default = server.requests
    assert named.tool_choice == {"type": "function", "function": {"name": "get_weather"}}
    assert named.parallel_tool_calls is False
    assert default.tool_choice is None and default.parallel_tool_calls is True


async def test_openai_without_tools_sends_no_tool_fields(
    server: ProviderServer, openai_model: OpenAIChatModel
) -> None:
    await openai_model.complete(tool_request(tools=(), tool_choice="auto"))
    [seen] = server.requests
    assert seen.body is not None
    assert not {"tools", "tool_choice", "parallel_tool_calls"} & set(seen.body)


async def test_openai_malformed_arguments_are_kept_raw_with_the_parse_failure(
    server: ProviderServer, openai_model: OpenAIChatModel
) -> None:
    broken = '{"city": "Par'
    server.respond = lambda record: ServerCallTools(
        (("get_weather", broken), ("get_time", "[1, 2]"), ("get_time", ""))
    )
    response = await openai_model.complete(tool_request())
    bad, not_object, empty = response.tool_calls
    assert (bad.arguments, bad.parsed, bad.ok) == (broken, None, False)
    assert bad.parse_error is not None and "not valid JSON" in bad.parse_error
    assert not_object.parsed is None and not_object.parse_error == (
        "the arguments are not a JSON object"
    )
    assert empty.parsed == {} and empty.ok  # no arguments at all: an empty object
    # Sent back as it came, so the model sees what it wrote.
    await openai_model.complete(
        tool_request(
            (
                *QUESTION,
                Message.assistant_tool_calls((bad,)),
                Message.tool_result(bad.id, "invalid JSON", is_error=True),
            )
        )
    )
    assert server.requests[1].assistant_tool_calls[0]["arguments"] == broken


# -- Anthropic ------------------------------------------------------------------------------------


async def test_anthropic_offers_tools_and_parses_a_parallel_call_of_two(
    server: ProviderServer, anthropic_model: AnthropicModel
) -> None:
    server.respond = lambda record: ServerCallTools(PARIS, text="Looking it up.")
    response = await anthropic_model.complete(tool_request())

    [seen] = server.requests
    assert seen.tools == ["get_weather", "get_time"]
    assert seen.tool_schema("get_time") == dict(TIME.parameters)
    assert seen.body is not None and "tool_choice" not in seen.body  # auto by default
    assert seen.system == "You answer travel questions."
    assert response.finish_reason == "tool_use"
    assert response.text == "Looking it up."
    assert [(c.name, c.parsed) for c in response.tool_calls] == [
        ("get_weather", {"city": "Paris"}),
        ("get_time", {"city": "Paris"}),
    ]
    assert response.tool_calls[0].id.startswith("toolu_")
    assert json.loads(response.tool_calls[1].arguments) == {"city": "Paris"}
    assert response.input_tokens == seen.input_tokens() > 0


async def test_anthropic_sends_the_results_of_a_turn_in_one_user_message(
    server: ProviderServer, anthropic_model: AnthropicModel
) -> None:
    server.respond = lambda record: ServerCallTools(PARIS)
    first = await anthropic_model.complete(tool_request())
    assert first.text == ""
    server.respond = lambda record: "Paris: 14 C, clock unknown."
    final = await anthropic_model.complete(tool_request(two_calls_answered(first.tool_calls)))

    assert final.text == "Paris: 14 C, clock unknown." and final.tool_calls == ()
    seen = server.requests[1]
    assert seen.body is not None
    user, assistant, results = seen.body["messages"]
    assert user == {"role": "user", "content": "Weather and time in Paris?"}
    assert assistant == {
        "role": "assistant",
        "content": [
            {"type": "text", "text": "Looking it up."},
            *(
                {"type": "tool_use", "id": c.id, "name": c.name, "input": {"city": "Paris"}}
                for c in first.tool_calls
            ),
        ],
    }
    assert results == {
        "role": "user",
        "content": [
            {
                "type": "tool_result",
                "tool_use_id": first.tool_calls[0].id,
                "content": '{"temp_c": 14}',
            },
            {
                "type": "tool_result",
                "tool_use_id": first.tool_calls[1].id,
                "content": '{"error": "clock down"}',
                "is_error": True,
            },
        ],
    }
    assert [r["is_error"] for r in seen.tool_results] == [False, True]
    assert final.input_tokens == seen.input_tokens() > server.requests[0].input_tokens()


async def test_anthropic_tool_choice_maps_to_its_protocol(
    server: ProviderServer, anthropic_model: AnthropicModel
) -> None:
    server.respond = lambda record: ServerCallTools((PARIS[0],))
    for fields in (
        {"tool_choice": "required"},
        {"tool_choice": "get_time", "parallel_tool_calls": False},
        {"tool_choice": "none"},
        {"parallel_tool_calls": False},
    ):
        await anthropic_model.complete(tool_request(**fields))
    assert [r.tool_choice for r in server.requests] == [
        {"type": "any"},
        {"type": "tool", "name": "get_time", "disable_parallel_tool_use": True},
        {"type": "none"},
        {"type": "auto", "disable_parallel_tool_use": True},
    ]
    assert [r.parallel_tool_calls for r in server.requests] == [None, False, None, False]


async def test_anthropic_with_tools_and_a_schema_answers_through_the_schema_tool(
    server: ProviderServer, anthropic_model: AnthropicModel
) -> None:
    schema = Trip.model_json_schema()
    server.respond = lambda record: ServerCallTools((("Trip", {"summary": "sunny"}),))
    response = await anthropic_model.complete(tool_request(schema=schema, schema_name="Trip"))
    [seen] = server.requests
    assert seen.tools == ["get_weather", "get_time", "Trip"]
    assert seen.tool_choice is None  # the schema's tool is offered, not forced
    assert json.loads(response.text) == {"summary": "sunny"} and response.tool_calls == ()
    server.respond = lambda record: ServerCallTools((PARIS[0],))
    turn = await anthropic_model.complete(tool_request(schema=schema, schema_name="Trip"))
    assert [c.name for c in turn.tool_calls] == ["get_weather"] and turn.text == ""


async def test_anthropic_input_that_is_no_object_is_a_parse_failure(
    server: ProviderServer, anthropic_model: AnthropicModel
) -> None:
    server.respond = lambda record: ServerCallTools((("get_weather", "not json"),))
    [call] = (await anthropic_model.complete(tool_request())).tool_calls
    assert call.parsed is None and call.parse_error == "the arguments are not a JSON object"
    assert call.arguments == '"not json"'


# -- types and the scripted model -----------------------------------------------------------------


def test_a_tool_choice_that_names_no_offered_tool_is_refused() -> None:
    with pytest.raises(ConfigurationError) as wrong:
        tool_request(tool_choice="get_wether")
    assert wrong.value.field == "tool_choice" and "get_weather" in wrong.value.message
    with pytest.raises(ConfigurationError):
        LlmCall(messages=QUESTION, tools=(WEATHER, WEATHER))
    assert LlmCall(messages=QUESTION).tools == ()  # plain calls are unchanged


def test_plain_messages_keep_their_dict() -> None:
    assert Message("user", "hi").to_dict() == {"role": "user", "content": "hi"}
    call = ToolCall.from_object("c1", "get_weather", {"city": "Paris"})
    assert Message.tool_result("c1", "ok", is_error=True).to_dict() == {
        "role": "tool",
        "content": "ok",
        "tool_call_id": "c1",
        "is_error": True,
    }
    assert Message.assistant_tool_calls((call,)).to_dict()["tool_calls"] == [
        {"id": "c1", "name": "get_weather", "arguments": '{"city":"Paris"}'}
    ]


async def test_scripted_model_scripts_a_tool_turn_then_an_answer() -> None:
    model = ScriptedModel("s")
    model.on_step(
        "agent",
        CallTools(*PARIS, text="checking"),
        CallTools(("get_weather", '{"city": ')),
        {"summary": "sunny"},
    )
    first = await model.complete(tool_request(meta={"step": "agent"}))
    assert first.finish_reason == "tool_calls" and first.text == "checking"
    assert [(c.id, c.name, c.parsed) for c in first.tool_calls] == [
        ("call_1", "get_weather", {"city": "Paris"}),
        ("call_2", "get_time", {"city": "Paris"}),
    ]
    broken = (await model.complete(tool_request(meta={"step": "agent"}))).tool_calls[0]
    assert broken.parsed is None and broken.arguments == '{"city": '
    final = await model.complete(tool_request(meta={"step": "agent"}))
    assert final.tool_calls == () and json.loads(final.text) == {"summary": "sunny"}
    assert model.requests[0].tools == (WEATHER, TIME)


# -- the gateway ----------------------------------------------------------------------------------


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = open_store(f"sqlite:///{tmp_path}/t.db", Settings(sqlite_synchronous="OFF"))
    await s.migrate()
    yield s
    await s.close()


def make_gateway(
    store: Store,
    server: ProviderServer,
    chain: tuple[str, ...] = ("local:cheap",),
    models: dict[str, Model] | None = None,
) -> Gateway:
    settings = Settings(
        llm_endpoints={
            "local": {"kind": "openai", "base_url": server.openai_base_url},
            "ant": {"kind": "anthropic", "base_url": server.url},
        },
        llm_timeout_seconds=5,
    )
    routes = {tier: list(chain) for tier in ("small", "medium", "large")}
    return Gateway(
        store=store,
        router=Router(routes, settings),
        models=ModelRegistry(settings, models or {}),
        pricing=Pricing(PRICES),
        settings=settings,
    )


def agent_turn(messages: tuple[Message, ...] = QUESTION, **fields: Any) -> LlmCall:
    return LlmCall(
        messages=messages,
        purpose="reasoning",
        output=Trip,
        max_tokens=100,
        tools=(WEATHER, TIME),
        **fields,
    )


def respond_by_turn(record: RecordedRequest) -> ServerCallTools | dict[str, Any]:
    """Call both tools first; answer once the results are in (or when no tool is offered)."""
    if record.tool_results or not record.tools:
        return {"summary": "sunny, 14:00"}
    return ServerCallTools(PARIS)


@pytest.mark.parametrize("ref", ["local:cheap", "ant:claude"])
async def test_a_tool_loop_through_the_gateway_is_reserved_settled_and_in_the_ledger(
    store: Store, server: ProviderServer, ref: str
) -> None:
    server.respond = respond_by_turn
    gw = make_gateway(store, server, chain=(ref,))
    scope = gw.scope("acme", "j1", step_key="agent", attempt=1, purpose="reasoning")
    turn = await gw.call(agent_turn(), scope)
    # A tool turn is no answer: not validated against Trip, no re-ask.
    assert (turn.output, turn.data, turn.calls) == (None, None, 1)
    assert [c.name for c in turn.tool_calls] == ["get_weather", "get_time"]
    assert turn.finish_reason in ("tool_calls", "tool_use")
    transcript = (
        *QUESTION,
        Message.assistant_tool_calls(turn.tool_calls, turn.text),
        *(Message.tool_result(c.id, '{"ok": true}') for c in turn.tool_calls),
    )
    final = await gw.call(agent_turn(transcript), scope)
    await gw.close()
    assert isinstance(final.output, Trip) and final.output.summary == "sunny, 14:00"
    assert final.tool_calls == ()

    first, second = await store.llm_call_list("j1")
    assert (first.outcome, second.outcome) == ("ok", "ok")
    assert [r.tool_results for r in server.requests] != [[], []]
    for row, request in zip((first, second), server.requests, strict=True):
        assert row.input_tokens == request.input_tokens() > 0
        provider, model = ref.split(":")
        assert row.cost_nanos == Pricing(PRICES).cost_nanos(
            provider, model, input_tokens=row.input_tokens, output_tokens=row.output_tokens
        )
    assert turn.cost_nanos == first.cost_nanos > 0
    [job] = [b for b in await store.budget_list() if b.key == "job:j1"]
    assert (job.reserved_nanos, job.spent_nanos) == (0, first.cost_nanos + second.cost_nanos)


async def test_the_reservation_counts_the_tools_offered(
    store: Store, server: ProviderServer
) -> None:
    big = ToolSpec("big", "x" * 3000, {"type": "object", "properties": {}})
    gw = make_gateway(store, server)
    scope = gw.scope("acme", "j1", step_key="agent", job_max_tokens=400)
    plain = LlmCall(messages=QUESTION, max_tokens=100)
    await gw.call(plain, scope)  # fits without the tools
    with pytest.raises(BudgetExceeded):
        await gw.call(LlmCall(messages=QUESTION, max_tokens=100, tools=(big,)), scope)
    await gw.close()
    assert server.count() == 1  # the refused turn never reached the provider
    assert [r.outcome for r in await store.llm_call_list("j1")] == ["ok", "refused"]


async def test_a_tool_turn_falls_back_along_the_chain_with_its_tools(
    store: Store, server: ProviderServer
) -> None:
    server.push(Fail(503), model="cheap")
    server.respond = lambda record: ServerCallTools((PARIS[0],))
    gw = make_gateway(store, server, chain=("local:cheap", "ant:claude"))
    result = await gw.call(agent_turn(tool_choice="required"), gw.scope("acme", "j1"))
    await gw.close()
    assert result.ref == "ant:claude" and [c.name for c in result.tool_calls] == ["get_weather"]
    failed, answered = server.requests
    assert failed.tools == ["get_weather", "get_time"]
    assert answered.tools == ["get_weather", "get_time", "Trip"]  # Anthropic: the schema's tool
    assert answered.tool_choice == {"type": "any"}
    assert [r.outcome for r in await store.llm_call_list("j1")] == ["error", "ok"]


async def test_cacheable_tool_turns_hit_only_for_the_same_transcript_and_tools(
    store: Store, server: ProviderServer
) -> None:
    server.respond = respond_by_turn
    gw = make_gateway(store, server)
    first = await gw.call(agent_turn(cacheable=True), gw.scope("acme", "j1"))
    again = await gw.call(agent_turn(cacheable=True), gw.scope("acme", "j2"))
    assert (first.cache_hit, again.cache_hit) == (False, True)
    assert again.tool_calls == first.tool_calls and again.finish_reason == first.finish_reason
    assert server.count() == 1
    # Other tools, another tool choice, a longer transcript: all miss.
    await gw.call(
        LlmCall(messages=QUESTION, output=Trip, max_tokens=100, tools=(WEATHER,), cacheable=True),
        gw.scope("acme", "j3"),
    )
    await gw.call(agent_turn(cacheable=True, tool_choice="required"), gw.scope("acme", "j3"))
    transcript = (
        *QUESTION,
        Message.assistant_tool_calls(first.tool_calls),
        *(Message.tool_result(c.id, "{}") for c in first.tool_calls),
    )
    final = await gw.call(agent_turn(transcript, cacheable=True), gw.scope("acme", "j3"))
    assert not final.cache_hit and final.data == {"summary": "sunny, 14:00"}
    # A plain call without tools does not hit a tool turn's entry.
    plain = await gw.call(
        LlmCall(messages=QUESTION, output=Trip, max_tokens=100, cacheable=True),
        gw.scope("acme", "j3"),
    )
    await gw.close()
    assert not plain.cache_hit and server.count() == 5


async def test_scripted_tool_turns_through_the_gateway(
    store: Store, server: ProviderServer
) -> None:
    model = ScriptedModel("s")
    model.on_step("agent", CallTools(*PARIS), {"summary": "sunny"})
    gw = make_gateway(store, server, chain=("scripted:s",), models={"scripted:s": model})
    scope = gw.scope("acme", "j1", step_key="agent")
    turn = await gw.call(agent_turn(), scope)
    final = await gw.call(
        agent_turn(
            (
                *QUESTION,
                Message.assistant_tool_calls(turn.tool_calls),
                *(Message.tool_result(c.id, "{}") for c in turn.tool_calls),
            )
        ),
        scope,
    )
    await gw.close()
    assert [c.id for c in turn.tool_calls] == ["call_1", "call_2"]
    assert final.data == {"summary": "sunny"}
    assert model.requests[1].messages[-1].tool_call_id == "call_2"
    rows = await store.llm_call_list("j1")
    assert [(r.provider, r.outcome) for r in rows] == [("scripted", "ok"), ("scripted", "ok")]
    assert server.count() == 0


async def test_a_call_without_tools_is_held_to_an_answer(
    store: Store, server: ProviderServer
) -> None:
    # A scripted model that calls tools it was not offered: its text must still validate.
    model = ScriptedModel("s")
    model.on_step("s", CallTools(PARIS[0], text='{"summary": "x"}'))
    gw = make_gateway(store, server, chain=("scripted:s",), models={"scripted:s": model})
    plain = LlmCall(messages=QUESTION, output=Trip, max_tokens=100)
    result = await gw.call(plain, gw.scope("acme", "j1", step_key="s"))
    await gw.close()
    assert result.data == {"summary": "x"} and result.tool_calls == ()


async def test_anthropic_structured_output_without_tools_is_unchanged(
    server: ProviderServer, anthropic_model: AnthropicModel
) -> None:
    # Only the schema's tool is offered, and forced: its call is the answer.
    server.respond = lambda record: {"summary": "sunny"}
    request = tool_request(tools=(), schema=Trip.model_json_schema(), schema_name="Trip")
    response = await anthropic_model.complete(request)
    [seen] = server.requests
    assert seen.tools == ["Trip"] and seen.tool_choice == {"type": "tool", "name": "Trip"}
    assert json.loads(response.text) == {"summary": "sunny"} and response.tool_calls == ()


@pytest.mark.parametrize("content", [False, True])
def test_a_tool_turns_span_counts_its_calls_and_shows_them_only_with_content(
    content: bool,
) -> None:
    calls = (ToolCall.from_object("c1", "get_weather", {"city": "Paris"}),)
    response = ModelResponse("", 10, 5, finish_reason="tool_calls", tool_calls=calls)
    span = TracerProvider().get_tracer("test").start_span("chat m")
    record_chat(span, response, 0, None, content=content)
    span.end()
    attrs = dict(span.attributes or {})  # type: ignore[attr-defined]
    assert attrs["gen_ai.response.finish_reasons"] == ("tool_calls",)
    assert attrs["stalwart.tool_calls"] == 1
    assert ("gen_ai.output.messages" in attrs) is content
    if content:
        shown = json.loads(str(attrs["gen_ai.output.messages"]))
        assert shown["tool_calls"] == [call.to_dict() for call in calls]


def test_a_tool_result_without_its_calls_id_is_refused_naming_the_field() -> None:
    with pytest.raises(ConfigurationError) as info:
        Message("tool", '{"ok": true}')
    assert info.value.field == "tool_call_id"
    assert Message.tool_result("call_1", "{}").tool_call_id == "call_1"
