"""What a gateway call is asked and what it answers: plain data shared by the gateway and the
modules it uses (telemetry, the gateway embedder), kept here so none of them imports the gateway.

`stalwart.llm.gateway` re-exports every name, its public home.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from stalwart.domain.agents import TurnCheckpoint
from stalwart.domain.budgets import BudgetWarning
from stalwart.llm.types import Message, ToolCall, ToolSpec, check_tools


@dataclass(slots=True)
class LlmCall:
    """One logical call: what to ask and how. `output` is the pydantic model the answer must
    validate against (None: free text). `models` pins the chain (consensus uses one model per
    call); otherwise the tier's chain is used.

    `tools` are offered to the model (with `tool_choice` and `parallel_tool_calls`, as in
    `ModelRequest`): its answer may then be a turn of tool calls (`LlmResult.tool_calls`),
    which is not validated against `output`; only a final answer is. The messages are the
    transcript so far, tool calls and results included."""

    messages: Sequence[Message]
    purpose: str = "reasoning"
    tier: str | None = None
    output: type[BaseModel] | None = None
    max_tokens: int = 1024
    temperature: float = 0.0
    cacheable: bool = False
    max_reasks: int | None = None
    models: Sequence[str] | None = None
    context_tokens: int | None = None
    context_limit: int | None = None
    tools: Sequence[ToolSpec] = ()
    tool_choice: str | None = None
    parallel_tool_calls: bool | None = None
    # An agent turn: the answer is recorded with the settle of its ledger row (decision 0039).
    checkpoint: TurnCheckpoint | None = None

    def __post_init__(self) -> None:
        check_tools(self.tools, self.tool_choice)


@dataclass(slots=True)
class LlmResult:
    """What a call produced, with what it cost. When the model asked for tools, `tool_calls`
    holds them (in order), `text` any text alongside, and `data`/`output` are None."""

    text: str
    output: BaseModel | None
    data: Any
    provider: str
    model: str
    tier: str
    cache_hit: bool = False
    calls: int = 0
    cost_nanos: int = 0
    warnings: list[BudgetWarning] = field(default_factory=list)
    tool_calls: tuple[ToolCall, ...] = ()
    finish_reason: str | None = None
    # The call's `checkpoint` turn was recorded with its settle (not for a cached answer).
    checkpointed: bool = False
    input_tokens: int = 0
    output_tokens: int = 0

    @property
    def ref(self) -> str:
        """`provider:model` of the model that answered."""
        return f"{self.provider}:{self.model}"


@dataclass(slots=True)
class EmbeddingResult:
    """What one embeddings request produced: a vector per text, in order, with what it cost."""

    vectors: list[list[float]]
    provider: str
    model: str
    input_tokens: int = 0
    cost_nanos: int = 0
    warnings: list[BudgetWarning] = field(default_factory=list)


__all__ = ["EmbeddingResult", "LlmCall", "LlmResult"]
