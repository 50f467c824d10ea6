"""What goes into a model call and what comes back: plain data shared by the gateway, the
providers and the scripted model.

A provider adapter implements `Model.complete(request) -> ModelResponse` and raises
`ProviderError` (with an error class) for everything that goes wrong, so the gateway can decide
between falling back, retrying the step and giving up without knowing any SDK.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from stalwart.errors import ErrorClass, ToolError

Role = Literal["system", "user", "assistant"]


@dataclass(frozen=True, slots=True)
class Message:
    """One chat message."""

    role: Role
    content: str

    def to_dict(self) -> dict[str, str]:
        """`{"role": ..., "content": ...}`."""
        return {"role": self.role, "content": self.content}


@dataclass(frozen=True, slots=True)
class ModelRequest:
    """One call to one model.

    `schema` is the JSON schema the answer must follow (named `schema_name`); providers ask for
    structured output in their own way (OpenAI `response_format`, Anthropic a forced tool) and
    return the JSON text in `ModelResponse.text`. `meta` carries the call's scope (step key,
    purpose) for the scripted model's matchers; real providers ignore it.
    """

    model: str
    messages: tuple[Message, ...]
    max_tokens: int
    temperature: float = 0.0
    schema: dict[str, Any] | None = None
    schema_name: str = "answer"
    timeout_seconds: float = 60.0
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ModelResponse:
    """What a model answered, with the usage the provider reported."""

    text: str
    input_tokens: int
    output_tokens: int
    cached_tokens: int = 0
    model: str = ""
    finish_reason: str | None = None


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
