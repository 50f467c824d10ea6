"""`AnthropicModel`: the Anthropic messages API (and servers that speak it).

System messages go to `system=`; a request with a schema forces a tool whose input schema is the
schema, and the tool call's input comes back as JSON text. The SDK's own retries are off
(`max_retries=0`), and so are its OpenTelemetry spans unless asked for (the SDK turns them on by
default, and the `ANTHROPIC_OPEN_TELEMETRY` variable can only turn them off). Failures become
`ProviderError`s exactly as in the OpenAI adapter (529 "overloaded" is transient); a credentials
profile that cannot be loaded is an authorization error, code `credentials`. The SDK (2.x) has no
sampling parameters, so `request.temperature` is not sent.

Usage follows the OpenAI convention used everywhere in Stalwart: `input_tokens` counts every
prompt token, cached ones included. Anthropic reports cache reads and cache writes apart from
`input_tokens`, so they are added back here; `cached_tokens` is the cache reads.
"""

from __future__ import annotations

import json
from typing import Any

import anthropic
from anthropic.types import (
    AssistantMessageParam,
    Message,
    MessageParam,
    ToolChoiceToolParam,
    ToolParam,
    UserMessageParam,
)

from stalwart.errors import ErrorClass
from stalwart.llm.providers._errors import as_count, failure, sdk_failure
from stalwart.llm.types import ModelRequest, ModelResponse, ProviderError

PLACEHOLDER_API_KEY = "not-needed"
"""Sent when no key is configured for a custom endpoint."""

TOOL_DESCRIPTION = "Answer in this structure"


class AnthropicModel:
    """A `Model` backed by the Anthropic messages API.

    With no `api_key`, the official endpoint resolves credentials the SDK's way
    (`ANTHROPIC_API_KEY`, `ANTHROPIC_AUTH_TOKEN`, profiles); a custom `base_url` gets a
    placeholder key instead. `open_telemetry=True` lets the SDK emit its spans (metadata only,
    never message content).
    """

    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        provider: str = "anthropic",
        timeout_seconds: float = 60.0,
        open_telemetry: bool = False,
    ) -> None:
        self.provider = provider
        self.model = model
        self._base_url = base_url
        self._timeout_seconds = timeout_seconds
        # `{}` enables the spans with the SDK's defaults and ignores the environment; `False`
        # disables them whatever ANTHROPIC_OPEN_TELEMETRY says.
        self._open_telemetry: anthropic.OpenTelemetryClientOption = {} if open_telemetry else False
        self._credentials_problem: str | None = None
        key = api_key
        if key is None and base_url is not None:
            key = PLACEHOLDER_API_KEY
        try:
            client = self._make_client(key)
        except anthropic.AnthropicError as exc:
            # A broken credentials profile: report it on each call, as an authorization error.
            self._credentials_problem = str(exc)
            client = self._make_client(PLACEHOLDER_API_KEY)
        if not _has_credentials(client):
            # Nothing resolved: the SDK would raise a TypeError per call. Send a placeholder and
            # let the API answer 401, an authorization error the engine understands.
            client = client.copy(api_key=PLACEHOLDER_API_KEY)
        self._client = client

    def _make_client(self, api_key: str | None) -> anthropic.AsyncAnthropic:
        return anthropic.AsyncAnthropic(
            api_key=api_key,
            base_url=self._base_url,
            timeout=self._timeout_seconds,
            max_retries=0,
            open_telemetry=self._open_telemetry,
        )

    @property
    def client(self) -> anthropic.AsyncAnthropic:
        """The underlying SDK client (for inspection; do not close it directly)."""
        return self._client

    async def complete(self, request: ModelRequest) -> ModelResponse:
        """Send one message request; structured output via a forced tool when the request has a
        schema. The model asked is this adapter's `model`, whatever `request.model` says.
        Raises `ProviderError` for every failure."""
        if self._credentials_problem is not None:
            raise self._failure(
                "credentials",
                f"credentials could not be loaded: {self._credentials_problem}",
                error_class=ErrorClass.AUTHORIZATION,
            )
        system = "\n\n".join(m.content for m in request.messages if m.role == "system")
        messages: list[MessageParam] = [
            AssistantMessageParam(role="assistant", content=m.content)
            if m.role == "assistant"
            else UserMessageParam(role="user", content=m.content)
            for m in request.messages
            if m.role != "system"
        ]
        tools: list[ToolParam] | anthropic.Omit = anthropic.omit
        tool_choice: ToolChoiceToolParam | anthropic.Omit = anthropic.omit
        if request.schema is not None:
            tools = [
                {
                    "name": request.schema_name,
                    "description": TOOL_DESCRIPTION,
                    "input_schema": request.schema,
                }
            ]
            tool_choice = {"type": "tool", "name": request.schema_name}
        try:
            message = await self._client.messages.create(
                model=self.model,
                max_tokens=request.max_tokens,
                messages=messages,
                system=system or anthropic.omit,
                tools=tools,
                tool_choice=tool_choice,
                timeout=request.timeout_seconds,
            )
        except Exception as exc:
            raise sdk_failure(
                anthropic,
                anthropic.AnthropicError,
                exc,
                self.provider,
                self.model,
                request.timeout_seconds,
            ) from exc
        return self._response(message, forced=request.schema is not None)

    def _response(self, message: object, *, forced: bool) -> ModelResponse:
        """Map a message to a `ModelResponse`; anything unexpected is `malformed_response`.

        With a forced tool the answer is the tool call's input as JSON; a message without one
        answers with its text, which the gateway will find is not the JSON it asked for.
        """
        if not isinstance(message, Message):
            raise self._failure("malformed_response", "the answer is not a message")
        content = getattr(message, "content", None)
        if not isinstance(content, list):
            raise self._failure("malformed_response", "the answer has no content")
        texts: list[str] = []
        tool_input: Any = None
        for block in content:
            kind = getattr(block, "type", None)
            if kind == "text" and isinstance(getattr(block, "text", None), str):
                texts.append(block.text)
            elif kind == "tool_use" and forced and tool_input is None:
                tool_input = getattr(block, "input", None)
        if tool_input is not None:
            try:
                text = json.dumps(tool_input)
            except (TypeError, ValueError) as exc:
                raise self._failure("malformed_response", "the tool input is not JSON") from exc
        else:
            text = "".join(texts)
        usage = getattr(message, "usage", None)
        cache_read = as_count(getattr(usage, "cache_read_input_tokens", 0))
        cache_write = as_count(getattr(usage, "cache_creation_input_tokens", 0))
        model = getattr(message, "model", None)
        stop_reason = getattr(message, "stop_reason", None)
        return ModelResponse(
            text=text,
            input_tokens=as_count(getattr(usage, "input_tokens", 0)) + cache_read + cache_write,
            output_tokens=as_count(getattr(usage, "output_tokens", 0)),
            cached_tokens=cache_read,
            model=model if isinstance(model, str) and model else self.model,
            finish_reason=stop_reason if isinstance(stop_reason, str) else None,
        )

    def _failure(
        self, code: str, what: str, *, error_class: ErrorClass = ErrorClass.TRANSIENT
    ) -> ProviderError:
        return failure(self.provider, self.model, code, what, error_class=error_class)

    async def close(self) -> None:
        """Close the SDK client and its connections."""
        await self._client.close()


def _has_credentials(client: anthropic.AsyncAnthropic) -> bool:
    return bool(client.api_key or client.auth_token or client.credentials is not None)
