"""Agent steps: what an `agent` step asks, and the durable record of its loop.

An `agent` step is a bounded worker agent: a model offered an allow-list of tools, called turn by
turn until it answers (in the step's output schema, when it has one) or runs out of turns. Every
model turn and every tool call is a row of its own (`AgentTurn`, `AgentCall`), committed as it
completes under the step's lease token (decision 0039): the transcript a resumed attempt rebuilds
is read from these rows, never asked again.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from stalwart.domain.conditions import Condition
from stalwart.types import to_datetime

AGENT_FIELDS = frozenset(
    {
        "prompt",
        "instructions",
        "tools",
        "output",
        "purpose",
        "tier",
        "max_turns",
        "max_tokens",
        "max_tool_calls",
        "parallel_tool_calls",
        "temperature",
        "max_tool_errors",
        "max_repeats",
        "approve",
        "on_tool_reject",
        "context",
        "context_window",
    }
)
DEFAULT_INSTRUCTIONS = (
    "You are one step of an automated workflow. Use the tools offered to do the task; call a "
    "tool only with arguments that match its schema. When a tool result is an error, read it "
    "and correct the call. When you are done, answer without calling a tool"
)


class AgentSpec(BaseModel):
    """What an `agent` step asks and how. Written flat on the step in templates:

    ```yaml
    - id: research
      kind: agent
      instructions: "You are a careful analyst."
      prompt: "Find the vendor of invoice ${input.invoice_id} and check its payment terms."
      tools: [lookup_vendor, fetch_terms, send_payment]
      output: VendorReport          # a pydantic model registered with app.schema()
      max_turns: 8
      approve: {send_payment: true} # or a condition on the call: {"args.amount": {"gt": 100}}
    ```
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt: str = Field(min_length=1)
    instructions: str = ""
    tools: list[str] = Field(min_length=1, max_length=128)
    output: str | None = Field(None, description="Name of a schema registered with app.schema.")
    purpose: str = "reasoning"
    tier: Literal["small", "medium", "large"] | None = None
    max_turns: int = Field(8, ge=1, le=200)
    max_tokens: int = Field(1024, ge=1, le=200_000, description="Per model turn.")
    max_tool_calls: int = Field(32, ge=1, le=1000, description="Over the whole loop.")
    parallel_tool_calls: bool | None = None
    temperature: float = Field(0.0, ge=0, le=2)
    # Invalid arguments sent back to the model before the step fails `invalid_arguments`.
    max_tool_errors: int = Field(3, ge=0, le=100)
    # The same call (tool and canonical arguments) this many times escalates.
    max_repeats: int = Field(3, ge=2, le=100)
    # Per tool: a call waits for a reviewer when true, or when the condition holds on the call
    # (`args.*` paths: its arguments; `input.*` and `steps.*` as in other conditions).
    approve: dict[str, bool | Condition] = Field(default_factory=dict)
    # A rejected call: tell the model (the reviewer's comment is the call's result), or fail.
    on_tool_reject: Literal["tell_model", "fail"] = "tell_model"
    context: Literal["dependencies", "none"] = "dependencies"
    context_window: int | None = Field(None, ge=256)


class CallStatus(StrEnum):
    """Where one tool call of an agent loop is."""

    INVALID = "invalid"  # arguments failed the schema: the errors went back to the model
    AWAITING_APPROVAL = "awaiting_approval"  # parked: the step waits for a reviewer
    APPROVED = "approved"  # a reviewer said yes: it runs when the step is claimed again
    REJECTED = "rejected"  # a reviewer said no: the comment went back to the model
    RUNNING = "running"  # started: a crash now leaves its effect unknown
    RETRY_WAIT = "retry_wait"  # failed for now (transient): it runs again after its backoff
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # an error the model may read (retries exhausted, a bad result)
    REFUSED = "refused"  # non-retriable (permission, policy): the loop stopped for a person
    SKIPPED = "skipped"  # not run: the loop stopped before it (another call was refused)


AGENT_REVIEW_KINDS = frozenset({"agent_call", "agent_interrupted"})
"""Review kinds about one call of an agent loop: the decision is written on the call."""

CALL_DONE = frozenset(
    {CallStatus.INVALID, CallStatus.REJECTED, CallStatus.SUCCEEDED, CallStatus.FAILED}
)
"""Statuses whose result is in the transcript: the model has read (or will read) it."""


@dataclass(slots=True)
class AgentCall:
    """One tool call of an agent loop, as stored."""

    turn: int
    index: int
    call_id: str
    tool: str
    arguments: str  # the model's raw JSON text
    status: str
    result: Any = None
    error: dict[str, Any] | None = None
    attempts: int = 0
    review_id: str | None = None
    decision: dict[str, Any] | None = None
    started: float | None = None
    finished: float | None = None

    def parsed(self) -> Any:
        """The arguments as JSON, or None when the model's text is not JSON."""
        try:
            return json.loads(self.arguments) if self.arguments.strip() else {}
        except ValueError:
            return None

    def signature(self) -> str:
        """The tool and its canonical arguments: equal for the same call made twice."""
        parsed = self.parsed()
        args = self.arguments if parsed is None else json.dumps(parsed, sort_keys=True)
        return f"{self.tool}:{args}"

    def answer(self) -> str:
        """What the model reads as this call's result (JSON text)."""
        if self.status == CallStatus.SUCCEEDED.value:
            return json.dumps(self.result, sort_keys=True)
        if self.status == CallStatus.REJECTED.value:
            comment = (self.decision or {}).get("comment") or ""
            return json.dumps(
                {
                    "error": {
                        "code": "rejected",
                        "message": "a reviewer rejected this call; do not make it again"
                        + (f": {comment}" if comment else ""),
                    }
                }
            )
        return json.dumps({"error": self.error or {"message": "the call did not run"}})

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, for the API and `jobs show`."""
        return {
            "turn": self.turn,
            "index": self.index,
            "call_id": self.call_id,
            "tool": self.tool,
            "arguments": self.parsed() if self.parsed() is not None else self.arguments,
            "status": self.status,
            "result": self.result,
            "error": self.error,
            "attempts": self.attempts,
            "review_id": self.review_id,
            "decision": self.decision,
            "started_at": _iso(self.started),
            "finished_at": _iso(self.finished),
        }


@dataclass(slots=True)
class AgentTurn:
    """One model turn of an agent loop, as stored: what the model said and asked for, and what
    it cost. `summary` is set on a turn whose request carried a summary of the turns before it
    instead of the turns themselves (the transcript outgrew the context window)."""

    turn: int
    attempt: int
    text: str
    tool_calls: list[dict[str, Any]]  # {id, name, arguments}
    finish_reason: str | None = None
    provider: str = ""
    model: str = ""
    input_tokens: int = 0
    output_tokens: int = 0
    cost_nanos: int = 0
    llm_call_id: int | None = None
    summary: str | None = None
    created: float = 0.0
    calls: list[AgentCall] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, for the API and `jobs show`."""
        return {
            "turn": self.turn,
            "attempt": self.attempt,
            "text": self.text,
            "tool_calls": self.tool_calls,
            "finish_reason": self.finish_reason,
            "provider": self.provider,
            "model": self.model,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cost_usd": self.cost_nanos / 1e9,
            "summary": self.summary,
            "created_at": _iso(self.created),
            "calls": [c.to_dict() for c in self.calls],
        }


@dataclass(slots=True)
class Transcript:
    """An agent step's loop so far: its turns, each with its calls, in order."""

    step_id: int
    step_key: str = ""
    turns: list[AgentTurn] = field(default_factory=list)

    @property
    def calls(self) -> list[AgentCall]:
        """Every call, in order."""
        return [c for t in self.turns for c in t.calls]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, for the API and `jobs show`."""
        return {
            "step_id": self.step_id,
            "step": self.step_key,
            "turns": [t.to_dict() for t in self.turns],
            "tokens": sum(t.input_tokens + t.output_tokens for t in self.turns),
            "cost_usd": sum(t.cost_nanos for t in self.turns) / 1e9,
        }


def _iso(epoch: float | None) -> str | None:
    """An epoch time as ISO 8601 (UTC), as every record's `*_at` field is."""
    moment = to_datetime(epoch)
    return moment.isoformat() if moment is not None else None


@dataclass(frozen=True, slots=True)
class TurnCheckpoint:
    """Where the gateway records an agent turn when it settles the turn's call: in the same
    transaction, fenced by the step's lease token, so a turn that was paid is a turn that was
    recorded (decision 0039)."""

    step_id: int
    lease_token: int
    turn: int
    attempt: int
    summary: str | None = None
    # Given the turn's tool calls, the first call to start with the turn's record (a call the
    # loop would start at once: its tool offered, its arguments valid, no reviewer needed).
    first_call: Callable[[list[dict[str, Any]]], AgentCall | None] | None = None
    # Who records the turn (the worker running the loop), for its event; else the writer's.
    actor: str = ""


@dataclass(frozen=True, slots=True)
class TurnWrite:
    """A turn to record with the settle of the ledger row that answered it; `start`, the
    turn's first call to start in the same transaction (its status says whether it did)."""

    checkpoint: TurnCheckpoint
    turn: AgentTurn
    start: AgentCall | None = None


__all__ = [
    "AGENT_FIELDS",
    "AGENT_REVIEW_KINDS",
    "CALL_DONE",
    "DEFAULT_INSTRUCTIONS",
    "AgentCall",
    "AgentSpec",
    "AgentTurn",
    "CallStatus",
    "Transcript",
    "TurnCheckpoint",
    "TurnWrite",
]
