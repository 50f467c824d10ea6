"""`AnthropicModel`: the Anthropic messages API (and servers that speak it).

System messages go to `system=`; a request with a schema forces a tool whose input schema is the
schema, and the tool call's input comes back as JSON text. The SDK's own retries are off
(`max_retries=0`), and so are its OpenTelemetry spans unless asked for (the SDK turns them on by
default, and the `ANTHROPIC_OPEN_TELEMETRY` variable can only turn them off). Failures become
`ProviderError`s exactly as in the OpenAI adapter (529 "overloaded" is transient); a credentials
profile that cannot be loaded is an authorization error, code `credentials`. The SDK (2.x) has no
sampling parameters, so `request.temperature` is not sent.

Tool calling: `request.tools` go out with `input_schema`, `tool_choice` as `auto`, `none`, `any`
(for `required`) or one named `tool`, and `parallel_tool_calls=False` as
`disable_parallel_tool_use`. `tool_use` blocks come back as `ToolCall`s. A transcript goes back
as the protocol wants it: the assistant turn as `text` + `tool_use` blocks, and the results of one
turn together in the next user message as `tool_result` blocks (with `is_error`). A request with
both tools and a schema offers the schema as one more tool, not forced: a call of it is the
final answer (`text`), a call of any other tool is a tool call.

Usage follows the OpenAI convention used everywhere in Stalwart: `input_tokens` counts every
prompt token, cached ones included. Anthropic reports cache reads and cache writes apart from
`input_tokens`, so they are added back here; `cached_tokens` is the cache reads.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import anthropic
from anthropic.types import (
    AssistantMessageParam,
    Message,
    MessageParam,
    TextBlockParam,
    ToolChoiceParam,
    ToolChoiceToolParam,
    ToolParam,
    ToolResultBlockParam,
    ToolUseBlockParam,
    UserMessageParam,
)

from stalwart.errors import ErrorClass
from stalwart.llm.providers._errors import as_count, failure, sdk_failure
from stalwart.llm.types import Message as ChatMessage
from stalwart.llm.types import ModelRequest, ModelResponse, ProviderError, ToolCall

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
        messages = _message_params(request.messages)
        offered: list[ToolParam] = [
            {
                "name": tool.name,
                "description": tool.description,
                "input_schema": dict(tool.parameters),
            }
            for tool in request.tools
        ]
        if request.schema is not None:
            offered.append(
                {
                    "name": request.schema_name,
                    "description": TOOL_DESCRIPTION,
                    "input_schema": request.schema,
                }
            )
        tools: list[ToolParam] | anthropic.Omit = offered or anthropic.omit
        tool_choice = _tool_choice(request)
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
        answer_tool = request.schema_name if request.schema is not None else None
        return self._response(message, answer_tool=answer_tool, tools=bool(request.tools))

    def _response(
        self, message: object, *, answer_tool: str | None, tools: bool = False
    ) -> ModelResponse:
        """Map a message to a `ModelResponse`; anything unexpected is `malformed_response`.

        A call of `answer_tool` (the schema's tool) is the answer: its input as JSON; a message
        without one answers with its text, which the gateway will find is not the JSON it asked
        for. When `tools` were offered, calls of other tools are the response's `tool_calls`;
        when none were, the first call of any name is the answer, as it always was.
        """
        if not isinstance(message, Message):
            raise self._failure("malformed_response", "the answer is not a message")
        content = getattr(message, "content", None)
        if not isinstance(content, list):
            raise self._failure("malformed_response", "the answer has no content")
        texts: list[str] = []
        tool_input: Any = None
        calls: list[ToolCall] = []
        for block in content:
            kind = getattr(block, "type", None)
            if kind == "text" and isinstance(getattr(block, "text", None), str):
                texts.append(block.text)
            elif kind != "tool_use":
                continue
            elif answer_tool is not None and (
                not tools or getattr(block, "name", None) == answer_tool
            ):
                if tool_input is None:
                    tool_input = getattr(block, "input", None)
            elif tools:
                calls.append(self._tool_call(block))
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
            tool_calls=tuple(calls),
        )

    def _tool_call(self, block: object) -> ToolCall:
        call_id = getattr(block, "id", None)
        name = getattr(block, "name", None)
        arguments = getattr(block, "input", None)
        if not (isinstance(call_id, str) and call_id and isinstance(name, str) and name):
            raise self._failure("malformed_response", "a tool_use block has no id or name")
        if not isinstance(arguments, dict):
            # The API promises an object; anything else is kept raw, as a parse failure.
            return ToolCall(
                call_id,
                name,
                json.dumps(arguments),
                None,
                "the arguments are not a JSON object",
            )
        try:
            return ToolCall.from_object(call_id, name, arguments)
        except (TypeError, ValueError) as exc:
            raise self._failure("malformed_response", "the tool input is not JSON") from exc

    def _failure(
        self, code: str, what: str, *, error_class: ErrorClass = ErrorClass.TRANSIENT
    ) -> ProviderError:
        return failure(self.provider, self.model, code, what, error_class=error_class)

    async def close(self) -> None:
        """Close the SDK client and its connections."""
        await self._client.close()


def _tool_choice(request: ModelRequest) -> ToolChoiceParam | anthropic.Omit:
    """The protocol's `tool_choice`: the schema's tool forced when it is the only one offered;
    else the request's choice (`required` is `any`), with `disable_parallel_tool_use` when
    parallel calls are off."""
    if not request.tools:
        if request.schema is not None:
            return {"type": "tool", "name": request.schema_name}
        return anthropic.omit
    choice = request.tool_choice
    if choice == "none":
        return {"type": "none"}
    single = request.parallel_tool_calls is False
    if choice == "required":
        return {"type": "any", "disable_parallel_tool_use": True} if single else {"type": "any"}
    if choice is not None and choice != "auto":
        named: ToolChoiceToolParam = {"type": "tool", "name": choice}
        if single:
            named["disable_parallel_tool_use"] = True
        return named
    if choice == "auto" or single:
        return {"type": "auto", "disable_parallel_tool_use": True} if single else {"type": "auto"}
    return anthropic.omit


def _message_params(messages: Sequence[ChatMessage]) -> list[MessageParam]:
    """The transcript in the protocol's shape. System messages are left out (they go to
    `system=`). Tool results become `tool_result` blocks of a user message, and consecutive
    results share one message: the API wants every result of a turn in the next user message."""
    params: list[MessageParam] = []
    results: list[ToolResultBlockParam] = []
    for m in messages:
        if m.role == "tool":
            block: ToolResultBlockParam = {
                "type": "tool_result",
                "tool_use_id": m.tool_call_id or "",
                "content": m.content,
            }
            if m.is_error:
                block["is_error"] = True
            results.append(block)
            continue
        if results:
            params.append(UserMessageParam(role="user", content=results))
            results = []
        if m.role == "system":
            continue
        if m.role == "assistant" and m.tool_calls:
            blocks: list[TextBlockParam | ToolUseBlockParam] = []
            if m.content:
                blocks.append({"type": "text", "text": m.content})
            blocks += [
                {
                    "type": "tool_use",
                    "id": call.id,
                    "name": call.name,
                    # Arguments that did not parse (another provider's model) go back empty.
                    "input": call.parsed if call.parsed is not None else {},
                }
                for call in m.tool_calls
            ]
            params.append(AssistantMessageParam(role="assistant", content=blocks))
        elif m.role == "assistant":
            params.append(AssistantMessageParam(role="assistant", content=m.content))
        else:
            params.append(UserMessageParam(role="user", content=m.content))
    if results:
        params.append(UserMessageParam(role="user", content=results))
    return params


def _has_credentials(client: anthropic.AsyncAnthropic) -> bool:
    return bool(client.api_key or client.auth_token or client.credentials is not None)
