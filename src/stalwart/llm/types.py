"""What goes into a model call and what comes back: plain data shared by the gateway, the
providers and the scripted model.

A provider adapter implements `Model.complete(request) -> ModelResponse` and raises
`ProviderError` (with an error class) for everything that goes wrong, so the gateway can decide
between falling back, retrying the step and giving up without knowing any SDK.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from stalwart.errors import ConfigurationError, ErrorClass, ToolError

Role = Literal["system", "user", "assistant", "tool"]
ToolChoiceMode = Literal["auto", "none", "required"]
TOOL_CHOICE_MODES: tuple[ToolChoiceMode, ...] = ("auto", "none", "required")


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """A tool offered to a model: its name, what it does, and the JSON schema of its arguments
    (an object schema). Providers get it in their own shape (OpenAI `function`, Anthropic
    `input_schema`)."""

    name: str
    description: str
    parameters: Mapping[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """`{"name", "description", "parameters"}`, for cache keys and transcripts."""
        return {
            "name": self.name,
            "description": self.description,
            "parameters": dict(self.parameters),
        }


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A call of a tool that a model asked for.

    `arguments` is the raw JSON text the model wrote, kept as it came; `parsed` is that text as
    a dict when it is a JSON object, else None with `parse_error` saying why. A model that
    writes broken JSON is not a provider failure: the caller decides (an agent loop sends the
    problem back to the model so that it can correct itself).
    """

    id: str
    name: str
    arguments: str
    parsed: dict[str, Any] | None = None
    parse_error: str | None = None

    @classmethod
    def from_text(cls, id: str, name: str, arguments: str) -> ToolCall:
        """A call whose arguments arrived as JSON text (OpenAI): parsed here when possible."""
        try:
            value = json.loads(arguments) if arguments.strip() else {}
        except ValueError as exc:
            return cls(id, name, arguments, None, f"the arguments are not valid JSON: {exc}")
        if not isinstance(value, dict):
            return cls(id, name, arguments, None, "the arguments are not a JSON object")
        return cls(id, name, arguments, value, None)

    @classmethod
    def from_object(cls, id: str, name: str, arguments: Mapping[str, Any]) -> ToolCall:
        """A call whose arguments arrived as an object (Anthropic, scripted)."""
        value = dict(arguments)
        return cls(id, name, json.dumps(value, separators=(",", ":")), value, None)

    @property
    def ok(self) -> bool:
        """True when the arguments parsed to a JSON object."""
        return self.parsed is not None

    def to_dict(self) -> dict[str, Any]:
        """`{"id", "name", "arguments"}` (the raw text: replays and cache keys use it as is)."""
        return {"id": self.id, "name": self.name, "arguments": self.arguments}


@dataclass(frozen=True, slots=True)
class Message:
    """One chat message.

    Besides plain `system`/`user`/`assistant` text, a transcript of tool calling holds an
    `assistant` turn that asked for `tool_calls` (its `content` is any text that came with
    them), and one `tool` message per call with its result: `tool_call_id` names the call,
    `content` is the result as text, `is_error` marks a failed call. Build those with
    `assistant_tool_calls` and `tool_result`; each provider adapter sends them in its own shape.
    """

    role: Role
    content: str
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None
    is_error: bool = False

    def __post_init__(self) -> None:
        # Checked here, once: a provider refuses a result without its call's id with a 400
        # that does not say why.
        if self.role == "tool" and not self.tool_call_id:
            raise ConfigurationError(
                "a tool message needs the id of the call it answers",
                field="tool_call_id",
                fix="build it with Message.tool_result(call.id, content)",
            )

    @classmethod
    def assistant_tool_calls(cls, calls: Iterable[ToolCall], content: str = "") -> Message:
        """The assistant turn that asked for `calls` (with any text it wrote alongside)."""
        return cls("assistant", content, tool_calls=tuple(calls))

    @classmethod
    def tool_result(cls, tool_call_id: str, content: str, *, is_error: bool = False) -> Message:
        """The result of the call `tool_call_id` (text, typically JSON), or its error."""
        return cls("tool", content, tool_call_id=tool_call_id, is_error=is_error)

    def to_dict(self) -> dict[str, Any]:
        """`{"role": ..., "content": ...}`, plus the tool fields when there are any (so a plain
        message's dict, and the cache keys built from it, are what they always were)."""
        data: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.tool_calls:
            data["tool_calls"] = [call.to_dict() for call in self.tool_calls]
        if self.tool_call_id is not None:
            data["tool_call_id"] = self.tool_call_id
            data["is_error"] = self.is_error
        return data


@dataclass(frozen=True, slots=True)
class ModelRequest:
    """One call to one model.

    `schema` is the JSON schema the answer must follow (named `schema_name`); providers ask for
    structured output in their own way (OpenAI `response_format`, Anthropic a forced tool) and
    return the JSON text in `ModelResponse.text`. `meta` carries the call's scope (step key,
    purpose) for the scripted model's matchers; real providers ignore it.

    `tools` are offered to the model, which may answer with `ModelResponse.tool_calls` instead
    of text. `tool_choice` is `auto` (the provider's default when tools are offered), `none`,
    `required` (at least one call), or the name of one offered tool to call; None sends
    nothing. `parallel_tool_calls=False` asks for at most one call per turn; None leaves the
    provider's default (parallel allowed).
    """

    model: str
    messages: tuple[Message, ...]
    max_tokens: int
    temperature: float = 0.0
    schema: dict[str, Any] | None = None
    schema_name: str = "answer"
    timeout_seconds: float = 60.0
    meta: dict[str, Any] = field(default_factory=dict)
    tools: tuple[ToolSpec, ...] = ()
    tool_choice: str | None = None
    parallel_tool_calls: bool | None = None

    def __post_init__(self) -> None:
        check_tools(self.tools, self.tool_choice)


def check_tools(tools: Iterable[ToolSpec], tool_choice: str | None) -> None:
    """Raise `ConfigurationError` when tool names repeat, or `tool_choice` is neither a mode
    nor the name of an offered tool."""
    names = [tool.name for tool in tools]
    if len(set(names)) != len(names):
        raise ConfigurationError(
            f"tools are offered twice under one name: "
            f"{sorted({n for n in names if names.count(n) > 1})}; give each tool its own name",
            field="tools",
        )
    if tool_choice is None or tool_choice in TOOL_CHOICE_MODES:
        return
    if tool_choice not in names:
        raise ConfigurationError(
            f"tool_choice {tool_choice!r} is neither one of {', '.join(TOOL_CHOICE_MODES)} nor "
            f"an offered tool ({', '.join(names) or 'none offered'})",
            field="tool_choice",
        )


@dataclass(frozen=True, slots=True)
class ModelResponse:
    """What a model answered, with the usage the provider reported.

    `tool_calls` holds the tools the model asked to call, in order (several at once when the
    provider allows parallel calls); `text` is then any text that came with them.
    `finish_reason` is the provider's own word (OpenAI `tool_calls`, Anthropic `tool_use`, ...).
    """

    text: str
    input_tokens: int
    output_tokens: int
    cached_tokens: int = 0
    model: str = ""
    finish_reason: str | None = None
    tool_calls: tuple[ToolCall, ...] = ()


@runtime_checkable
class Model(Protocol):
    """A provider adapter bound to one model name. `provider` names the price table's provider
    (`openai`, `anthropic`, `scripted`, or an OpenAI-compatible endpoint's name)."""

    provider: str
    model: str

    async def complete(self, request: ModelRequest) -> ModelResponse:
        """Answer one request, or raise `ProviderError`."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...


class ProviderError(ToolError):
    """A model call failed. `error_class` says what the engine does: transient (429, 5xx,
    timeouts, connection failures) is retried and falls back along the tier's chain;
    authorization (401, 403) and non-retriable (other 4xx) are not retried; semantic (an answer
    that is not the JSON asked for) is re-asked, then replanned."""

    error_class = ErrorClass.TRANSIENT

    def __init__(
        self,
        message: str,
        *,
        error_class: ErrorClass | str = ErrorClass.TRANSIENT,
        provider: str = "",
        model: str = "",
        status: int | None = None,
        retry_after: float | None = None,
        code: str = "provider_error",
    ) -> None:
        super().__init__(message, code=code, retry_after=retry_after)
        self.error_class = ErrorClass(error_class)
        self.provider = provider
        self.model = model
        self.status = status

    @property
    def falls_back(self) -> bool:
        """True when another model of the chain may answer instead (outages and overload)."""
        return self.error_class is ErrorClass.TRANSIENT


def class_for_status(status: int) -> ErrorClass:
    """The error class of an HTTP status from a provider: 408, 409, 429 and 5xx are transient,
    401 and 403 authorization, any other 4xx non-retriable."""
    if status in (408, 409, 429) or status >= 500:
        return ErrorClass.TRANSIENT
    if status in (401, 403):
        return ErrorClass.AUTHORIZATION
    return ErrorClass.NON_RETRIABLE
