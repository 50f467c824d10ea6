"""Provider adapters: `Model`s backed by the official OpenAI and Anthropic SDKs.

`OpenAIChatModel` speaks the chat-completions API (OpenAI and every compatible server: vLLM,
Ollama, llama.cpp, LM Studio); `AnthropicModel` the messages API. Both leave retries to the engine
(`max_retries=0`) and raise `ProviderError` with an error class for every failure.

The names are imported lazily: each SDK takes a noticeable fraction of a second to import, and
an app that uses one provider should not pay for the other.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from stalwart.llm.providers.anthropic import AnthropicModel
    from stalwart.llm.providers.openai import OpenAIChatModel

_MODULES = {
    "AnthropicModel": "stalwart.llm.providers.anthropic",
    "OpenAIChatModel": "stalwart.llm.providers.openai",
}


def __getattr__(name: str) -> Any:
    module = _MODULES.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(module), name)


__all__ = ["AnthropicModel", "OpenAIChatModel"]
