"""What the API accepts and answers, as pydantic models (they make the OpenAPI document)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from stalwart.api.params import StorableText
from stalwart.domain.agents import Transcript
from stalwart.domain.budgets import LlmCallRecord, ledger_totals, usd
from stalwart.domain.records import (
    DeadLetterRecord,
    EventRecord,
    JobRecord,
    ReviewRecord,
    StepRecord,
)


class SubmitJob(BaseModel):
    """A job to run."""

    model_config = ConfigDict(extra="forbid")

    workflow: str = Field(min_length=1, max_length=255, description="A registered workflow.")
    input: dict[str, Any] = Field(description="The workflow's input, checked against its schema.")
    priority: int = Field(0, ge=-1000, le=1000, description="Higher runs first.")


class Decision(BaseModel):
    """A reviewer's decision."""

    model_config = ConfigDict(extra="forbid")

    comment: StorableText = Field(
        "", max_length=10_000, description="Why; shown in the job's timeline."
    )


class Reason(BaseModel):
    """Why an operator acts."""

    model_config = ConfigDict(extra="forbid")

    reason: StorableText = Field("", max_length=10_000)


class Job(BaseModel):
    """A job."""

    id: str
    tenant_id: str
    workflow: str
    status: str
    priority: int
    input: dict[str, Any]
    idempotency_key: str | None
    plan_version: int
    replans: int
    max_replans: int
    steps_executed: int
    degraded: bool
    cancel_requested: bool
    error: dict[str, Any] | None
    result: dict[str, Any] | None
    created_at: str
    updated_at: str
    deadline_at: str | None
    finished_at: str | None
    corrupt: str | None = Field(
        None,
        description="Set in listings when the job's stored state fails to decode: what failed "
        '(e.g. "input of job job_1 is not valid JSON"). The fields it names are empty; the '
        "job is quarantined (escalated with CorruptStateError) and the rest of the page is "
        "unaffected.",
    )

    @classmethod
    def of(cls, job: JobRecord) -> Job:
        """From a stored job."""
        return cls.model_validate(job.to_dict(), from_attributes=False)


class Step(BaseModel):
    """One step of a job's current plan."""

    id: int
    key: str
    kind: str
    tool: str | None
    status: str
    attempt: int
    max_attempts: int
    critical: bool
    approved: bool
    spec: dict[str, Any]
    args: Any = Field(
        None,
        description="What the latest attempt ran with (or, waiting for approval, will run "
        "with): the spec's args with every reference resolved; null before the first attempt.",
    )
    output: Any = None
    error: dict[str, Any] | None
    started_at: str | None
    finished_at: str | None

    @classmethod
    def of(cls, step: StepRecord) -> Step:
        """From a stored step."""
        return cls.model_validate(step.to_dict())


class LlmCall(BaseModel):
    """One model call in the ledger."""

    id: int
    step_key: str | None
    attempt: int
    purpose: str
    provider: str
    model: str
    tier: str | None
    outcome: str
    input_tokens: int
    output_tokens: int
    cached_tokens: int
    cost_usd: float
    cache_hit: bool
    latency_ms: float | None
    error_class: str | None
    error: str | None

    @classmethod
    def of(cls, call: LlmCallRecord) -> LlmCall:
        """From a ledger row."""
        return cls.model_validate(call.to_dict())


class Cost(BaseModel):
    """A job's model spend so far."""

    calls: int
    input_tokens: int
    output_tokens: int
    cost_usd: float


class JobDetail(Job):
    """A job with its current steps and model spend."""

    steps: list[Step]
    cost: Cost


def cost_of(calls: list[LlmCallRecord]) -> Cost:
    """Totals of a job's ledger."""
    totals = ledger_totals(calls)
    return Cost(
        calls=len(calls),
        input_tokens=int(totals["input_tokens"]),
        output_tokens=int(totals["output_tokens"]),
        cost_usd=float(totals["cost_usd"]),
    )


class AgentToolCall(BaseModel):
    """One tool call an agent step's model asked for."""

    turn: int
    index: int = Field(description="Its place among the calls of its turn, from 0.")
    call_id: str = Field(description="The id the model gave the call.")
    tool: str
    arguments: Any = Field(
        description="The model's arguments, as JSON; its raw text when that is not JSON."
    )
    status: str = Field(
        description="invalid (the arguments failed the tool's schema), awaiting_approval, "
        "approved, rejected, running, succeeded, failed, refused or skipped."
    )
    result: Any = Field(None, description="What the tool returned (status succeeded).")
    error: dict[str, Any] | None = Field(
        None, description="Why the call failed, was refused or was invalid; the model read it."
    )
    attempts: int
    review_id: str | None = Field(None, description="The review of a call that needs approval.")
    decision: dict[str, Any] | None = Field(
        None, description="The reviewer's decision: {decision, reviewer, comment}."
    )
    started_at: str | None = Field(None, description="When its last attempt started (ISO 8601).")
    finished_at: str | None = Field(None, description="When it ended (ISO 8601).")


class AgentTurn(BaseModel):
    """One model turn of an agent step: what the model said, what it asked for, what it cost."""

    turn: int
    attempt: int
    text: str
    tool_calls: list[dict[str, Any]] = Field(
        description="As the model asked: {id, name, arguments}."
    )
    finish_reason: str | None
    provider: str
    model: str
    input_tokens: int
    output_tokens: int
    cost_usd: float
    summary: str | None = Field(
        None,
        description="Set when the turn's request carried this summary of the turns before it "
        "(the transcript outgrew the context window).",
    )
    created_at: str | None = Field(description="When the turn was recorded (ISO 8601).")
    calls: list[AgentToolCall]


class AgentTranscript(BaseModel):
    """An agent step's loop so far: its turns in order, each with its tool calls."""

    step_id: int
    step: str = Field(description="The step's key.")
    turns: list[AgentTurn]
    tokens: int = Field(description="Input and output tokens of every turn.")
    cost_usd: float

    @classmethod
    def of(cls, transcript: Transcript) -> AgentTranscript:
        """From a stored transcript."""
        return cls.model_validate(transcript.to_dict())


class TranscriptList(BaseModel):
    """The transcripts of a job's agent steps (its current plan), in step order, and their
    totals; empty for a job without agent steps."""

    items: list[AgentTranscript]
    turns: int
    tool_calls: int
    input_tokens: int
    output_tokens: int
    cost_usd: float

    @classmethod
    def of(cls, transcripts: list[Transcript]) -> TranscriptList:
        """From stored transcripts."""
        turns = [t for transcript in transcripts for t in transcript.turns]
        return cls(
            items=[AgentTranscript.of(t) for t in transcripts],
            turns=len(turns),
            tool_calls=sum(len(t.calls) for t in turns),
            input_tokens=sum(t.input_tokens for t in turns),
            output_tokens=sum(t.output_tokens for t in turns),
            cost_usd=usd(sum(t.cost_nanos for t in turns)),
        )


class JobPage(BaseModel):
    """A page of jobs, newest first; pass `next_cursor` as `cursor` for the next."""

    items: list[Job]
    next_cursor: str | None


class Event(BaseModel):
    """One event of a job's timeline."""

    id: int
    kind: str
    job_id: str
    step_id: int | None
    step_key: str | None
    from_status: str | None
    to_status: str | None
    actor: str
    reason: str
    data: dict[str, Any] | None
    at: str

    @classmethod
    def of(cls, event: EventRecord) -> Event:
        """From a stored event."""
        return cls.model_validate(event.to_dict())


class EventPage(BaseModel):
    """Events in order; pass `next_after` as `after` for newer ones."""

    items: list[Event]
    next_after: int


class Review(BaseModel):
    """An item in the approval queue."""

    id: str
    job_id: str
    step_key: str | None
    kind: str
    status: str
    reason: str
    asked: str
    options: list[dict[str, Any]]
    context: dict[str, Any]
    sla_deadline_at: str
    created_at: str
    escalated_at: str | None
    decided_at: str | None
    decision: str | None
    decided_by: str | None
    comment: str | None

    @classmethod
    def of(cls, review: ReviewRecord) -> Review:
        """From a stored review."""
        return cls.model_validate(review.to_dict())


class ReviewList(BaseModel):
    """Reviews, oldest first."""

    items: list[Review]


class DeadLetter(BaseModel):
    """A job that ran out of recovery and waits for an operator."""

    id: str
    job_id: str
    workflow: str
    step_id: int | None
    step_key: str | None
    reason: str
    error: dict[str, Any] | None
    context: dict[str, Any]
    status: str
    created_at: str
    redriven_at: str | None
    redriven_by: str | None

    @classmethod
    def of(cls, letter: DeadLetterRecord) -> DeadLetter:
        """From a stored dead letter."""
        return cls.model_validate(letter.to_dict())


class DeadLetterList(BaseModel):
    """Dead letters, newest first."""

    items: list[DeadLetter]


class Health(BaseModel):
    """Liveness or readiness."""

    status: str
    checks: dict[str, str] = Field(default_factory=dict)
