"""`AnthropicModel` end to end through the official SDK, against the local fake server."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anthropic
import pytest
from tests.fakes.provider_server import (
    Fail,
    Hang,
    Malformed,
    ProviderServer,
    Reply,
    count_input_tokens,
    estimate_tokens,
)

from stalwart.errors import ErrorClass
from stalwart.llm.providers import AnthropicModel
from stalwart.llm.types import Message, ModelRequest, ProviderError

MODEL = "claude-haiku-4-5"
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"vendor": {"type": "string"}, "amount": {"type": "number"}},
    "required": ["vendor", "amount"],
}


def request(
    *,
    schema: dict[str, Any] | None = None,
    timeout: float = 5.0,
    messages: tuple[Message, ...] | None = None,
) -> ModelRequest:
    return ModelRequest(
        model=MODEL,
        messages=messages
        or (
            Message("system", "You extract invoices."),
            Message("user", "Invoice from ACME, total 250 EUR."),
        ),
        max_tokens=200,
        schema=schema,
        schema_name="invoice",
        timeout_seconds=timeout,
    )


@pytest.fixture
def server() -> Iterator[ProviderServer]:
    with ProviderServer() as srv:
        yield srv


@pytest.fixture
async def model(server: ProviderServer) -> AsyncIterator[AnthropicModel]:
    m = AnthropicModel(MODEL, base_url=server.url, timeout_seconds=5)
    yield m
    await m.close()


async def failure(model: AnthropicModel, req: ModelRequest | None = None) -> ProviderError:
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
    server: ProviderServer, model: AnthropicModel
) -> None:
    server.respond = lambda record: "The total is 250 EUR."
    response = await model.complete(request())

    assert response.text == "The total is 250 EUR."
    assert response.input_tokens == count_input_tokens(
        ["Invoice from ACME, total 250 EUR."], system="You extract invoices."
    )
    assert response.output_tokens == estimate_tokens("The total is 250 EUR.")
    assert response.cached_tokens == 0
    assert response.model == MODEL
    assert response.finish_reason == "end_turn"

    (seen,) = server.requests
    assert seen.path == "/v1/messages"
    assert seen.headers["authorization"] == "Bearer not-needed"  # anthropic 2.x: a bearer key
    assert seen.body is not None
    assert seen.body["model"] == MODEL
    assert seen.body["max_tokens"] == 200
    assert "tools" not in seen.body and "tool_choice" not in seen.body


async def test_system_messages_go_to_system(server: ProviderServer, model: AnthropicModel) -> None:
    messages = (
        Message("system", "You extract invoices."),
        Message("user", "First invoice?"),
        Message("assistant", "Send it."),
        Message("system", "Answer in English."),
        Message("user", "ACME, 250 EUR."),
    )
    await model.complete(request(messages=messages))
    (seen,) = server.requests
    assert seen.body is not None
    assert seen.body["system"] == "You extract invoices.\n\nAnswer in English."
    assert seen.body["messages"] == [
        {"role": "user", "content": "First invoice?"},
        {"role": "assistant", "content": "Send it."},
        {"role": "user", "content": "ACME, 250 EUR."},
    ]


async def test_no_system_message_sends_no_system(
    server: ProviderServer, model: AnthropicModel
) -> None:
    await model.complete(request(messages=(Message("user", "hello"),)))
    assert server.requests[0].body is not None
    assert "system" not in server.requests[0].body


async def test_cache_reads_are_counted_in_input_tokens(
    server: ProviderServer, model: AnthropicModel
) -> None:
    # Anthropic reports input_tokens without the cache reads; Stalwart counts them in.
    server.push(Reply("hi", input_tokens=1500, output_tokens=9, cached_tokens=1024))
    response = await model.complete(request())
    assert (response.input_tokens, response.output_tokens, response.cached_tokens) == (
        1500,
        9,
        1024,
    )


async def test_structured_output_forces_a_tool(
    server: ProviderServer, model: AnthropicModel
) -> None:
    server.respond = lambda record: {"vendor": "ACME", "amount": 250.0}
    response = await model.complete(request(schema=SCHEMA))

    assert json.loads(response.text) == {"vendor": "ACME", "amount": 250.0}
    assert response.finish_reason == "tool_use"
    (seen,) = server.requests
    assert seen.body is not None
    assert seen.body["tools"] == [
        {"name": "invoice", "description": "Answer in this structure", "input_schema": SCHEMA}
    ]
    assert seen.body["tool_choice"] == {"type": "tool", "name": "invoice"}
    assert response.input_tokens == count_input_tokens(
        ["Invoice from ACME, total 250 EUR."], system="You extract invoices.", schema=SCHEMA
    )


async def test_forced_tool_without_tool_use_returns_the_text(
    server: ProviderServer, model: AnthropicModel
) -> None:
    server.push(Reply("I cannot read that invoice."))
    response = await model.complete(request(schema=SCHEMA))
    assert response.text == "I cannot read that invoice."
    assert response.finish_reason == "end_turn"


# -- HTTP errors ----------------------------------------------------------------------------------


async def test_rate_limit_is_transient_with_retry_after(
    server: ProviderServer, model: AnthropicModel
) -> None:
    server.push(Fail(429, retry_after=2, message="Number of requests has exceeded your limit"))
    error = await failure(model)

    assert error.error_class is ErrorClass.TRANSIENT
    assert error.falls_back
    assert error.retry_after == 2.0
    assert (error.status, error.code) == (429, "http_429")
    assert (error.provider, error.model) == ("anthropic", MODEL)
    assert "429" in error.message and MODEL in error.message and "anthropic" in error.message
    assert "Number of requests has exceeded your limit" in error.message
    assert server.count() == 1


@pytest.mark.parametrize("status", [500, 503, 529])
async def test_server_errors_and_overload_are_transient(
    server: ProviderServer, model: AnthropicModel, status: int
) -> None:
    server.push(Fail(status, message="Overloaded"))
    error = await failure(model)
    assert error.error_class is ErrorClass.TRANSIENT
    assert (error.status, error.code) == (status, f"http_{status}")
    assert error.falls_back
    assert server.count() == 1


@pytest.mark.parametrize("status", [401, 403])
async def test_auth_failures_are_not_retried(
    server: ProviderServer, model: AnthropicModel, status: int
) -> None:
    server.push(Fail(status, message="invalid x-api-key"))
    error = await failure(model)
    assert error.error_class is ErrorClass.AUTHORIZATION
    assert not error.falls_back
    assert error.status == status
    assert "invalid x-api-key" in error.message
    assert server.count() == 1  # the SDK did not retry: max_retries=0


async def test_bad_request_is_non_retriable(server: ProviderServer, model: AnthropicModel) -> None:
    server.push(Fail(400, message="messages: at least one message is required"))
    error = await failure(model)
    assert error.error_class is ErrorClass.NON_RETRIABLE
    assert (error.status, error.code) == (400, "http_400")
    assert server.count() == 1


# -- broken answers and transport failures --------------------------------------------------------


@pytest.mark.parametrize(
    "broken",
    [
        Malformed(),
        Malformed(content_type="text/html"),
        Malformed(body='{"id": "msg_1", "type": "message"}'),
    ],
    ids=["not-json", "not-json-text-html", "no-content"],
)
async def test_malformed_answers_are_transient(
    server: ProviderServer, model: AnthropicModel, broken: Malformed
) -> None:
    server.push(broken)
    error = await failure(model)
    assert error.error_class is ErrorClass.TRANSIENT
    assert error.code == "malformed_response"


async def test_timeout_is_transient_and_bounded(
    server: ProviderServer, model: AnthropicModel
) -> None:
    server.push(Hang(30))
    started = time.monotonic()
    error = await failure(model, request(timeout=0.3))
    assert time.monotonic() - started < 3
    assert error.error_class is ErrorClass.TRANSIENT
    assert error.code == "timeout"
    assert server.count() == 1


async def test_connection_refused_is_transient() -> None:
    model = AnthropicModel(MODEL, base_url=f"http://127.0.0.1:{closed_port()}")
    try:
        error = await failure(model)
    finally:
        await model.close()
    assert error.error_class is ErrorClass.TRANSIENT
    assert error.code == "connection"


# -- construction ---------------------------------------------------------------------------------


async def test_open_telemetry_is_off_by_default_even_when_the_env_enables_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ANTHROPIC_OPEN_TELEMETRY", "1")
    model = AnthropicModel(MODEL, base_url="http://127.0.0.1:9")
    bare = anthropic.AsyncAnthropic(api_key="x", base_url="http://127.0.0.1:9")
    try:
        assert model.client.open_telemetry["traces"]["enabled"] is False
        # The SDK on its own would trace: the option is what turns it off.
        assert bare.open_telemetry["traces"]["enabled"] is True
    finally:
        await model.close()
        await bare.close()


async def test_open_telemetry_can_be_enabled(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_OPEN_TELEMETRY", "false")
    model = AnthropicModel(MODEL, base_url="http://127.0.0.1:9", open_telemetry=True)
    try:
        traces = model.client.open_telemetry["traces"]
        assert traces["enabled"] is True
        assert traces["content_mode"] == "metadata_only"
    finally:
        await model.close()


async def test_sdk_retries_are_off_and_keys_are_kept(server: ProviderServer) -> None:
    model = AnthropicModel(MODEL, base_url=server.url, api_key="sk-ant-local", provider="bedrock")
    try:
        assert model.client.max_retries == 0
        server.push(Fail(500))
        error = await failure(model)
    finally:
        await model.close()
    assert error.provider == "bedrock"
    assert server.requests[0].headers["authorization"] == "Bearer sk-ant-local"


async def test_env_key_is_not_sent_to_a_custom_endpoint(
    server: ProviderServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-real")
    model = AnthropicModel(MODEL, base_url=server.url)
    try:
        await model.complete(request())
    finally:
        await model.close()
    assert server.requests[0].headers["authorization"] == "Bearer not-needed"


async def test_without_any_credentials_a_placeholder_key_is_sent(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name in (
        "ANTHROPIC_API_KEY",
        "ANTHROPIC_AUTH_TOKEN",
        "ANTHROPIC_PROFILE",
        "ANTHROPIC_IDENTITY_TOKEN",
        "ANTHROPIC_IDENTITY_TOKEN_FILE",
        "ANTHROPIC_BASE_URL",
        "ANTHROPIC_CONFIG_DIR",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no profile on disk either
    model = AnthropicModel(MODEL)
    try:
        # The SDK alone would raise TypeError on every call; the API answers 401 instead.
        assert model.client.api_key == "not-needed"
        assert str(model.client.base_url).startswith("https://api.anthropic.com")
    finally:
        await model.close()


async def test_broken_credentials_profile_is_an_authorization_error(
    server: ProviderServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    monkeypatch.delenv("ANTHROPIC_AUTH_TOKEN", raising=False)
    monkeypatch.setenv("ANTHROPIC_CONFIG_DIR", str(tmp_path))  # names no usable profile
    model = AnthropicModel(MODEL)
    try:
        error = await failure(model)
    finally:
        await model.close()
    assert error.error_class is ErrorClass.AUTHORIZATION
    assert error.code == "credentials"


async def test_close_closes_the_sdk_client(server: ProviderServer) -> None:
    model = AnthropicModel(MODEL, base_url=server.url)
    await model.complete(request())
    await model.close()
    assert model.client.is_closed()
