"""`OpenAIChatModel` end to end through the official SDK, against the local fake server."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator, Iterator
from email.utils import formatdate
from typing import Any

import openai
import pytest
from openai.types.chat import ChatCompletion
from tests.fakes.provider_server import (
    Fail,
    Hang,
    Malformed,
    ProviderServer,
    RecordedRequest,
    Reply,
    count_input_tokens,
    estimate_tokens,
)

from stalwart.errors import ErrorClass
from stalwart.llm.providers import OpenAIChatModel
from stalwart.llm.providers._errors import parse_retry_after
from stalwart.llm.types import Message, ModelRequest, ProviderError

MODEL = "gpt-4o-mini"
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"vendor": {"type": "string"}, "amount": {"type": "number"}},
    "required": ["vendor", "amount"],
}


def request(*, schema: dict[str, Any] | None = None, timeout: float = 5.0) -> ModelRequest:
    return ModelRequest(
        model=MODEL,
        messages=(
            Message("system", "You extract invoices."),
            Message("user", "Invoice from ACME, total 250 EUR."),
        ),
        max_tokens=200,
        temperature=0.2,
        schema=schema,
        schema_name="invoice",
        timeout_seconds=timeout,
    )


@pytest.fixture
def server() -> Iterator[ProviderServer]:
    with ProviderServer() as srv:
        yield srv


@pytest.fixture
async def model(server: ProviderServer) -> AsyncIterator[OpenAIChatModel]:
    m = OpenAIChatModel(MODEL, base_url=server.openai_base_url, timeout_seconds=5)
    yield m
    await m.close()


async def failure(model: OpenAIChatModel, req: ModelRequest | None = None) -> ProviderError:
    with pytest.raises(ProviderError) as caught:
        await model.complete(req or request())
    return caught.value


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# -- answers --------------------------------------------------------------------------------------


async def test_plain_answer_maps_text_and_usage(
    server: ProviderServer, model: OpenAIChatModel
) -> None:
    server.respond = lambda record: "The total is 250 EUR."
    response = await model.complete(request())

    assert response.text == "The total is 250 EUR."
    expected_input = count_input_tokens(
        ["You extract invoices.", "Invoice from ACME, total 250 EUR."]
    )
    assert response.input_tokens == expected_input
    assert response.output_tokens == estimate_tokens("The total is 250 EUR.")
    assert response.cached_tokens == 0
    assert response.model == MODEL
    assert response.finish_reason == "stop"

    (seen,) = server.requests
    assert seen.path == "/v1/chat/completions"
    assert seen.body is not None
    assert seen.body["model"] == MODEL
    assert seen.body["messages"] == [
        {"role": "system", "content": "You extract invoices."},
        {"role": "user", "content": "Invoice from ACME, total 250 EUR."},
    ]
    assert seen.body["max_tokens"] == 200
    assert seen.body["temperature"] == 0.2
    assert "response_format" not in seen.body
    assert seen.headers["authorization"] == "Bearer not-needed"


async def test_reported_usage_and_cached_tokens_are_passed_through(
    server: ProviderServer, model: OpenAIChatModel
) -> None:
    server.push(Reply("hi", input_tokens=1200, output_tokens=7, cached_tokens=1024))
    response = await model.complete(request())
    assert (response.input_tokens, response.output_tokens, response.cached_tokens) == (
        1200,
        7,
        1024,
    )


async def test_missing_usage_counts_zero(server: ProviderServer, model: OpenAIChatModel) -> None:
    body = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 0,
        "model": MODEL,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}
        ],
    }
    server.push(Malformed(body=json.dumps(body)))
    response = await model.complete(request())
    assert (response.text, response.input_tokens, response.output_tokens) == ("ok", 0, 0)


async def test_structured_output_asks_for_a_json_schema(
    server: ProviderServer, model: OpenAIChatModel
) -> None:
    server.respond = lambda record: {"vendor": "ACME", "amount": 250.0}
    response = await model.complete(request(schema=SCHEMA))

    assert json.loads(response.text) == {"vendor": "ACME", "amount": 250.0}
    (seen,) = server.requests
    assert seen.body is not None
    assert seen.body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "invoice", "schema": SCHEMA, "strict": False},
    }
    assert response.input_tokens == count_input_tokens(
        ["You extract invoices.", "Invoice from ACME, total 250 EUR."], schema=SCHEMA
    )


async def test_output_tokens_are_capped_at_max_tokens(
    server: ProviderServer, model: OpenAIChatModel
) -> None:
    server.respond = lambda record: "x" * 4000
    response = await model.complete(request())
    assert response.output_tokens == 200


# -- HTTP errors ----------------------------------------------------------------------------------


async def test_rate_limit_is_transient_with_retry_after(
    server: ProviderServer, model: OpenAIChatModel
) -> None:
    server.push(Fail(429, retry_after=2, message="Rate limit reached for requests"))
    error = await failure(model)

    assert error.error_class is ErrorClass.TRANSIENT
    assert error.falls_back
    assert error.retry_after == 2.0
    assert (error.status, error.code) == (429, "http_429")
    assert (error.provider, error.model) == ("openai", MODEL)
    assert "429" in error.message and MODEL in error.message and "openai" in error.message
    assert "Rate limit reached for requests" in error.message
    assert server.count() == 1


async def test_retry_after_as_an_http_date(server: ProviderServer, model: OpenAIChatModel) -> None:
    server.push(Fail(429, retry_after=formatdate(time.time() + 30, usegmt=True)))
    error = await failure(model)
    assert error.retry_after is not None
    assert 25 <= error.retry_after <= 31


async def test_unparsable_retry_after_is_none(
    server: ProviderServer, model: OpenAIChatModel
) -> None:
    server.push(Fail(429, retry_after="soon-ish"))
    assert (await failure(model)).retry_after is None


@pytest.mark.parametrize("status", [500, 503])
async def test_server_errors_are_transient(
    server: ProviderServer, model: OpenAIChatModel, status: int
) -> None:
    server.push(Fail(status))
    error = await failure(model)
    assert error.error_class is ErrorClass.TRANSIENT
    assert (error.status, error.code) == (status, f"http_{status}")
    assert error.falls_back
    assert server.count() == 1


@pytest.mark.parametrize("status", [401, 403])
async def test_auth_failures_are_not_retried(
    server: ProviderServer, model: OpenAIChatModel, status: int
) -> None:
    server.push(Fail(status, message="Incorrect API key provided"))
    error = await failure(model)
    assert error.error_class is ErrorClass.AUTHORIZATION
    assert not error.falls_back
    assert error.status == status
    assert "Incorrect API key provided" in error.message
    assert server.count() == 1  # the SDK did not retry: max_retries=0


async def test_bad_request_is_non_retriable(server: ProviderServer, model: OpenAIChatModel) -> None:
    server.push(Fail(400, message="Invalid schema for response_format"))
    error = await failure(model)
    assert error.error_class is ErrorClass.NON_RETRIABLE
    assert not error.falls_back
    assert (error.status, error.code) == (400, "http_400")
    assert server.count() == 1


# -- broken answers and transport failures --------------------------------------------------------


@pytest.mark.parametrize(
    "broken",
    [
        Malformed(),
        Malformed(content_type="text/html"),
        Malformed(body='{"id": "x", "object": "chat.completion", "choices": []}'),
        Malformed(body='["not", "an", "object"]'),
    ],
    ids=["not-json", "not-json-text-html", "no-choices", "json-array"],
)
async def test_malformed_answers_are_transient(
    server: ProviderServer, model: OpenAIChatModel, broken: Malformed
) -> None:
    server.push(broken)
    error = await failure(model)
    assert error.error_class is ErrorClass.TRANSIENT
    assert error.code == "malformed_response"
    assert (error.provider, error.model) == ("openai", MODEL)


async def test_timeout_is_transient_and_bounded(
    server: ProviderServer, model: OpenAIChatModel
) -> None:
    server.push(Hang(30))
    started = time.monotonic()
    error = await failure(model, request(timeout=0.3))
    assert time.monotonic() - started < 3
    assert error.error_class is ErrorClass.TRANSIENT
    assert error.code == "timeout"
    assert server.count() == 1


async def test_connection_refused_is_transient() -> None:
    model = OpenAIChatModel(MODEL, base_url=f"http://127.0.0.1:{closed_port()}/v1")
    try:
        error = await failure(model)
    finally:
        await model.close()
    assert error.error_class is ErrorClass.TRANSIENT
    assert error.code == "connection"
    assert error.falls_back


async def test_cancellation_propagates(server: ProviderServer, model: OpenAIChatModel) -> None:
    server.push(Hang(30))
    task = asyncio.create_task(model.complete(request()))
    await asyncio.to_thread(server.wait_for_requests, 1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


# -- construction ---------------------------------------------------------------------------------


async def test_provider_name_and_key(server: ProviderServer) -> None:
    model = OpenAIChatModel(
        "llama3", base_url=server.openai_base_url, api_key="sk-local", provider="vllm"
    )
    try:
        server.push(Fail(503))
        error = await failure(model)
    finally:
        await model.close()
    assert (error.provider, error.model) == ("vllm", "llama3")
    assert server.requests[0].headers["authorization"] == "Bearer sk-local"


async def test_env_key_is_not_sent_to_a_custom_endpoint(
    server: ProviderServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-real-openai-key")
    model = OpenAIChatModel(MODEL, base_url=server.openai_base_url)
    try:
        await model.complete(request())
    finally:
        await model.close()
    assert server.requests[0].headers["authorization"] == "Bearer not-needed"


async def test_official_endpoint_uses_the_env_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-env")
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    model = OpenAIChatModel(MODEL)
    try:
        assert model.client.api_key == "sk-from-env"
        assert model.client.max_retries == 0
        assert str(model.client.base_url).startswith("https://api.openai.com/v1")
    finally:
        await model.close()


async def test_official_endpoint_gets_max_completion_tokens(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    sent: dict[str, Any] = {}

    async def create(**kwargs: Any) -> ChatCompletion:
        sent.update(kwargs)
        return ChatCompletion.model_validate(
            {
                "id": "chatcmpl-1",
                "object": "chat.completion",
                "created": 0,
                "model": "gpt-5-mini",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "ok"},
                        "finish_reason": "stop",
                    }
                ],
            }
        )

    model = OpenAIChatModel("gpt-5-mini", api_key="sk-test")
    try:
        # No network: the SDK method is replaced; only the arguments matter here.
        monkeypatch.setattr(model.client.chat.completions, "create", create)
        assert (await model.complete(request())).text == "ok"
    finally:
        await model.close()
    assert sent["max_completion_tokens"] == 200
    assert sent["max_tokens"] is openai.omit
    assert sent["model"] == "gpt-5-mini"


async def test_close_closes_the_sdk_client(server: ProviderServer) -> None:
    model = OpenAIChatModel(MODEL, base_url=server.openai_base_url)
    await model.complete(request())
    await model.close()
    assert model.client.is_closed()


# -- the fake server and helpers ------------------------------------------------------------------


async def test_pushed_behaviours_can_target_a_model(
    server: ProviderServer, model: OpenAIChatModel
) -> None:
    other = OpenAIChatModel("gpt-4o", base_url=server.openai_base_url)
    try:
        server.push(Fail(500), model="gpt-4o")
        assert (await model.complete(request())).text == '{"ok": true}'
        assert server.pending == 1
        assert (await failure(other)).status == 500
    finally:
        await other.close()
    assert (server.count(), server.count("gpt-4o"), server.count(MODEL)) == (2, 1, 1)


async def test_stopping_the_server_does_not_wait_for_a_hang() -> None:
    server = ProviderServer().start()
    model = OpenAIChatModel(MODEL, base_url=server.openai_base_url)
    try:
        server.push(Hang(60))
        task = asyncio.create_task(model.complete(request(timeout=30)))
        await asyncio.to_thread(server.wait_for_requests, 1)
        started = time.monotonic()
        await asyncio.to_thread(server.stop)
        assert time.monotonic() - started < 2
        with pytest.raises(ProviderError) as caught:
            await task
        assert caught.value.error_class is ErrorClass.TRANSIENT
    finally:
        await model.close()
        server.stop()


def test_responder_sees_the_request_record() -> None:
    seen: list[RecordedRequest] = []

    def respond(record: RecordedRequest) -> str:
        seen.append(record)
        return "fine"

    with ProviderServer(respond) as server:

        async def go() -> str:
            model = OpenAIChatModel(MODEL, base_url=server.openai_base_url)
            try:
                return (await model.complete(request(schema=SCHEMA))).text
            finally:
                await model.close()

        assert asyncio.run(go()) == "fine"
    (record,) = seen
    assert (record.protocol, record.model, record.max_tokens) == ("openai", MODEL, 200)
    assert record.schema == SCHEMA


def test_parse_retry_after() -> None:
    now = 1_000_000.0
    assert parse_retry_after({"retry-after": "2"}) == 2.0
    assert parse_retry_after({"retry-after": "1.5"}) == 1.5
    assert parse_retry_after({"retry-after": formatdate(now + 10, usegmt=True)}, now=now) == 10.0
    assert parse_retry_after({"retry-after": formatdate(now - 10, usegmt=True)}, now=now) == 0.0
    assert parse_retry_after({"retry-after": "later"}) is None
    assert parse_retry_after({"retry-after-ms": "250"}) == 0.25
    assert parse_retry_after({}) is None
    assert parse_retry_after(None) is None
