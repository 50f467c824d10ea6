"""The LLM side: one gateway for every model call (routing, budgets, cache, ledger), provider
adapters (OpenAI-compatible, Anthropic) and a scripted offline model for tests and demos."""

from stalwart.llm.gateway import Gateway, InvalidOutputError, LlmCall, LlmResult, TenantBudget
from stalwart.llm.routing import DEFAULT_TIER_BY_PURPOSE, TIERS, ModelRegistry, Router
from stalwart.llm.scripted import CallTools, ScriptedModel
from stalwart.llm.types import (
    Message,
    Model,
    ModelRequest,
    ModelResponse,
    ProviderError,
    ToolCall,
    ToolSpec,
)

__all__ = [
    "DEFAULT_TIER_BY_PURPOSE",
    "TIERS",
    "CallTools",
    "Gateway",
    "InvalidOutputError",
    "LlmCall",
    "LlmResult",
    "Message",
    "Model",
    "ModelRegistry",
    "ModelRequest",
    "ModelResponse",
    "ProviderError",
    "Router",
    "ScriptedModel",
    "TenantBudget",
    "ToolCall",
    "ToolSpec",
]
