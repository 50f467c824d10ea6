"""`OpenAIChatModel`: the OpenAI chat-completions API, and every server that speaks it.

Works with OpenAI itself and with OpenAI-compatible servers (vLLM, Ollama, llama.cpp, LM Studio,
gateways): give `base_url` (ending in `/v1`, the SDK appends `/chat/completions`). The output cap
is sent as `max_completion_tokens` to api.openai.com and as `max_tokens` elsewhere. The SDK's own
retries are off (`max_retries=0`); retrying is the engine's job, durably. Every failure becomes a
`ProviderError` with an error class, an HTTP status when there was one, and a code:
`http_<status>`, `timeout`, `connection`, `malformed_response`, `provider_error`.

Tool calling: `request.tools` go out as `function` tools (with `tool_choice` and
`parallel_tool_calls` when set); the answer's `tool_calls` come back as `ToolCall`s whose raw
argument text is kept even when it is not JSON. A transcript goes back as the protocol wants it:
an assistant message with `tool_calls`, then one `role: tool` message per result. The protocol
has no error flag on a tool result, so a result with `is_error` is sent as its content alone (put
the structured error in the content).

The same adapter answers embeddings requests (`embed`, the `/embeddings` API), with the same
errors, for the gateway's embedders.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import openai
from openai.types.chat import (
    ChatCompletion,
    ChatCompletionAssistantMessageParam,
    ChatCompletionMessageParam,
    ChatCompletionMessageToolCallParam,
    ChatCompletionSystemMessageParam,
    ChatCompletionToolChoiceOptionParam,
    ChatCompletionToolMessageParam,
    ChatCompletionToolParam,
    ChatCompletionUserMessageParam,
)
from openai.types.chat.completion_create_params import ResponseFormat
from openai.types.create_embedding_response import CreateEmbeddingResponse

from stalwart.errors import ErrorClass
from stalwart.llm.embeddings import EmbeddingResponse
from stalwart.llm.providers._errors import as_count, failure, sdk_failure
from stalwart.llm.types import (
    TOOL_CHOICE_MODES,
    Message,
    ModelRequest,
    ModelResponse,
    ProviderError,
    ToolCall,
)

PLACEHOLDER_API_KEY = "not-needed"
"""Sent when no key is configured for a custom endpoint: local servers accept any key."""

OFFICIAL_HOST = "api.openai.com"


class OpenAIChatModel:
    """A `Model` backed by an OpenAI-compatible chat-completions endpoint.

    `provider` names the price table's provider (`openai`, or the endpoint's own name). With no
    `api_key`, the official endpoint uses `OPENAI_API_KEY`; a custom `base_url` gets a placeholder
    key instead, so an OpenAI key is never sent to a third-party server by accident.
    """

    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        provider: str = "openai",
        timeout_seconds: float = 60.0,
    ) -> None:
        self.provider = provider
        self.model = model
        key = api_key
        if key is None and base_url is None:
            key = os.environ.get("OPENAI_API_KEY")
        self._client = openai.AsyncOpenAI(
            api_key=key or PLACEHOLDER_API_KEY,
            base_url=base_url,
            timeout=timeout_seconds,
            max_retries=0,
        )
        # OpenAI itself refuses `max_tokens` for its reasoning models (o-series, gpt-5) and
        # wants `max_completion_tokens`, which every current OpenAI chat model accepts; other
        # servers (vLLM, Ollama, llama.cpp, LM Studio) understand `max_tokens` most widely.
        self._official = self._client.base_url.host == OFFICIAL_HOST

    @property
    def client(self) -> openai.AsyncOpenAI:
        """The underlying SDK client (for inspection; do not close it directly)."""
        return self._client

    async def complete(self, request: ModelRequest) -> ModelResponse:
        """Send one chat completion; structured output via `response_format` when the request
        has a schema. The model asked is this adapter's `model`, whatever `request.model` says.
        Raises `ProviderError` for every failure."""
        messages = [_message_param(m) for m in request.messages]
        tools: list[ChatCompletionToolParam] | openai.Omit = openai.omit
        tool_choice: ChatCompletionToolChoiceOptionParam | openai.Omit = openai.omit
        parallel: bool | openai.Omit = openai.omit
        if request.tools:
            tools = [
                {
                    "type": "function",
                    "function": {
                        "name": tool.name,
                        "description": tool.description,
                        "parameters": dict(tool.parameters),
                    },
                }
                for tool in request.tools
            ]
            if request.parallel_tool_calls is not None:
                parallel = request.parallel_tool_calls
            # The API refuses a tool choice without tools: it is sent only with them.
            if request.tool_choice in TOOL_CHOICE_MODES:
                tool_choice = request.tool_choice
            elif request.tool_choice is not None:
                tool_choice = {"type": "function", "function": {"name": request.tool_choice}}
        response_format: ResponseFormat | openai.Omit = openai.omit
        if request.schema is not None:
            response_format = {
                "type": "json_schema",
                "json_schema": {
                    "name": request.schema_name,
                    "schema": request.schema,
                    "strict": False,
                },
            }
        try:
            completion = await self._client.chat.completions.create(
                model=self.model,
                messages=messages,
                max_tokens=openai.omit if self._official else request.max_tokens,
                max_completion_tokens=request.max_tokens if self._official else openai.omit,
                temperature=request.temperature,
                response_format=response_format,
                tools=tools,
                tool_choice=tool_choice,
                parallel_tool_calls=parallel,
                timeout=request.timeout_seconds,
            )
        except Exception as exc:
            raise sdk_failure(
                openai, openai.OpenAIError, exc, self.provider, self.model, request.timeout_seconds
            ) from exc
        return self._response(completion)

    def _response(self, completion: object) -> ModelResponse:
        """Map a completion to a `ModelResponse`; anything unexpected is `malformed_response`.

        Without strict validation the SDK builds its objects from whatever JSON arrived (and
        returns plain text when the content type is not JSON), so every field is checked here.
        """
        if not isinstance(completion, ChatCompletion):
            raise self._failure("malformed_response", "the answer is not a chat completion")
        choices = getattr(completion, "choices", None)
        if not isinstance(choices, list) or not choices:
            raise self._failure("malformed_response", "the answer has no choices")
        try:
            choice = choices[0]
            content = choice.message.content
            raw_calls = getattr(choice.message, "tool_calls", None)
            finish_reason = getattr(choice, "finish_reason", None)
        except (AttributeError, TypeError) as exc:
            raise self._failure("malformed_response", "the answer has no message") from exc
        if content is not None and not isinstance(content, str):
            raise self._failure("malformed_response", "the message content is not text")
        tool_calls = self._tool_calls(raw_calls)
        usage = getattr(completion, "usage", None)
        details = getattr(usage, "prompt_tokens_details", None)
        model = getattr(completion, "model", None)
        return ModelResponse(
            text=content or "",
            input_tokens=as_count(getattr(usage, "prompt_tokens", 0)),
            output_tokens=as_count(getattr(usage, "completion_tokens", 0)),
            cached_tokens=as_count(getattr(details, "cached_tokens", 0)),
            model=model if isinstance(model, str) and model else self.model,
            finish_reason=finish_reason if isinstance(finish_reason, str) else None,
            tool_calls=tool_calls,
        )

    def _tool_calls(self, raw: object) -> tuple[ToolCall, ...]:
        """The answer's function calls. Arguments that are not JSON are kept (the model's
        mistake, for the caller to handle); a call without an id, a name or argument text is a
        `malformed_response`."""
        if raw is None:
            return ()
        if not isinstance(raw, list):
            raise self._failure("malformed_response", "the tool calls are not a list")
        calls = []
        for item in raw:
            function: Any = getattr(item, "function", None)
            call_id = getattr(item, "id", None)
            name = getattr(function, "name", None)
            arguments = getattr(function, "arguments", None)
            if not (
                isinstance(call_id, str)
                and call_id
                and isinstance(name, str)
                and name
                and isinstance(arguments, str)
            ):
                raise self._failure(
                    "malformed_response", "a tool call has no id, function name or arguments"
                )
            calls.append(ToolCall.from_text(call_id, name, arguments))
        return tuple(calls)

    async def embed(
        self,
        texts: Sequence[str],
        *,
        dimensions: int | None = None,
        timeout_seconds: float = 60.0,
    ) -> EmbeddingResponse:
        """Embed `texts` in one request to this adapter's model; `dimensions` asks for shorter
        vectors (text-embedding-3 models). Raises `ProviderError` for every failure."""
        try:
            answer = await self._client.embeddings.create(
                model=self.model,
                input=list(texts),
                dimensions=openai.omit if dimensions is None else dimensions,
                timeout=timeout_seconds,
            )
        except Exception as exc:
            raise sdk_failure(
                openai, openai.OpenAIError, exc, self.provider, self.model, timeout_seconds
            ) from exc
        return self._embeddings(answer, len(texts))

    def _embeddings(self, answer: object, count: int) -> EmbeddingResponse:
        """Map an embeddings answer to an `EmbeddingResponse`, vectors in input order; anything
        unexpected is `malformed_response` (the numbers themselves are checked by the caller)."""
        if not isinstance(answer, CreateEmbeddingResponse):
            raise self._failure("malformed_response", "the answer is not an embeddings list")
        data = getattr(answer, "data", None)
        if not isinstance(data, list) or len(data) != count:
            got = len(data) if isinstance(data, list) else "no"
            raise self._failure(
                "malformed_response", f"the answer holds {got} embeddings for {count} texts"
            )
        try:
            ordered = sorted(data, key=lambda item: int(item.index))
            vectors = [item.embedding for item in ordered]
        except (AttributeError, TypeError, ValueError) as exc:
            raise self._failure("malformed_response", "an embedding has no index") from exc
        if [int(item.index) for item in ordered] != list(range(count)) or not all(
            isinstance(vector, list) and vector for vector in vectors
        ):
            raise self._failure("malformed_response", "the embeddings are not one list per text")
        usage = getattr(answer, "usage", None)
        model = getattr(answer, "model", None)
        return EmbeddingResponse(
            vectors=vectors,
            input_tokens=as_count(getattr(usage, "prompt_tokens", 0)),
            model=model if isinstance(model, str) and model else self.model,
        )

    def _failure(
        self, code: str, what: str, *, error_class: ErrorClass = ErrorClass.TRANSIENT
    ) -> ProviderError:
        return failure(self.provider, self.model, code, what, error_class=error_class)

    async def close(self) -> None:
        """Close the SDK client and its connections."""
        await self._client.close()


def _message_param(message: Message) -> ChatCompletionMessageParam:
    role, content = message.role, message.content
    if role == "system":
        return ChatCompletionSystemMessageParam(role="system", content=content)
    if role == "assistant":
        if not message.tool_calls:
            return ChatCompletionAssistantMessageParam(role="assistant", content=content)
        calls: list[ChatCompletionMessageToolCallParam] = [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": call.arguments},
            }
            for call in message.tool_calls
        ]
        # The protocol's content of a tool-calling turn is null when the model wrote no text.
        return ChatCompletionAssistantMessageParam(
            role="assistant", content=content or None, tool_calls=calls
        )
    if role == "tool":
        return ChatCompletionToolMessageParam(
            role="tool", tool_call_id=message.tool_call_id or "", content=content
        )
    return ChatCompletionUserMessageParam(role="user", content=content)
