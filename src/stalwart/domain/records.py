"""What the store hands back: jobs, steps, reviews, dead letters and claims. Plain data."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from stalwart.types import to_datetime


def json_ready(record: Any, times: tuple[str, ...] = ()) -> dict[str, Any]:
    """A record's fields as a dict; each epoch field in `times` becomes `<name>_at` in ISO."""
    out = {k: getattr(record, k) for k in record.__slots__}
    for name in times:
        moment = to_datetime(out.pop(name))
        out[f"{name}_at"] = moment.isoformat() if moment else None
    return out


@dataclass(slots=True)
class JobRecord:
    """One job as stored."""

    id: str
    tenant_id: str
    workflow: str
    status: str
    priority: int
    input: dict[str, Any]
    idempotency_key: str | None
    plan_version: int
    template_name: str | None
    template_hash: str | None
    tool_schema_hashes: dict[str, str]
    replans: int
    max_replans: int
    max_steps: int | None
    steps_executed: int
    degraded: bool
    cancel_requested: bool
    error: dict[str, Any] | None
    result: dict[str, Any] | None
    created: float
    updated: float
    deadline: float | None
    finished: float | None
    # The W3C traceparent of the job's root span (set at submit when tracing is on).
    trace_context: str | None = None
    # Set only by listings (`job_list`): what of this job's stored state failed to decode. The
    # fields it names are left empty; the job itself is quarantined (escalated) by the worker.
    corrupt: str | None = None

    @property
    def created_at(self) -> datetime:
        """When the job was submitted (aware UTC)."""
        value = to_datetime(self.created)
        assert value is not None
        return value

    @property
    def finished_at(self) -> datetime | None:
        """When the job reached a final status."""
        return to_datetime(self.finished)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, with ISO times."""
        return json_ready(self, ("created", "updated", "deadline", "finished"))


@dataclass(slots=True)
class StepRecord:
    """One step (of one plan version) as stored."""

    id: int
    job_id: str
    tenant_id: str
    plan_version: int
    key: str
    kind: str
    tool: str | None
    status: str
    priority: int
    attempt: int
    max_attempts: int
    critical: bool
    idempotent: bool
    approved: bool
    reconcile_pending: bool
    lease_owner: str | None
    lease_token: int
    due: float
    lease_expires: float | None
    spec: dict[str, Any]
    output: Any
    error: dict[str, Any] | None
    started: float | None
    finished: float | None
    # What its latest attempt ran with (or, waiting for approval, will run with): `spec.args`
    # with every reference resolved. None before it is first claimed (decision 0037).
    args: Any = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, with ISO times."""
        return json_ready(self, ("due", "lease_expires", "started", "finished"))


@dataclass(slots=True)
class Claim:
    """A step a worker holds under lease, with what it needs to run it."""

    step_id: int
    job_id: str
    tenant_id: str
    workflow: str
    plan_version: int
    key: str
    kind: str
    tool: str | None
    attempt: int
    lease_token: int
    lease_expires: float
    spec: dict[str, Any]
    job_input: dict[str, Any]
    outputs: dict[str, Any]
    tool_schema_hash: str | None
    reconcile_pending: bool
    deadline: float | None
    cancel_requested: bool = False
    review: dict[str, Any] | None = None
    max_replans: int = 0
    # Limit keys (tool:<name>, tenant:<id>) whose slots and tokens this attempt holds.
    limit_keys: tuple[str, ...] = ()
    # The W3C traceparent of the job's root span: this attempt's span joins the job's trace.
    trace_context: str | None = None
    # When the job was submitted (the start of its root span).
    job_created: float | None = None
    # The step's arguments resolved at claim (decision 0037): what the tool is called with.
    args: Any = None
    # An agent step's tools and the schema hashes the job was planned with (fail closed when a
    # tool it may call changed since).
    tool_schema_hashes: dict[str, str] = field(default_factory=dict)
    # When the request that took this lease was sent, on the claiming process's monotonic
    # clock (set by the store): the worker trusts the lease from then on, never from when the
    # answer came back (decision 0032).
    lease_sent_at: float | None = None

    @property
    def idempotency_key(self) -> str:
        """`tenant:job:step`, stable across attempts (a later plan version adds `:v<n>`)."""
        base = f"{self.tenant_id}:{self.job_id}:{self.key}"
        return base if self.plan_version == 1 else f"{base}:v{self.plan_version}"


@dataclass(slots=True)
class ReviewRecord:
    """An item in the human approval queue."""

    id: str
    tenant_id: str
    job_id: str
    step_id: int | None
    step_key: str | None
    kind: str
    status: str
    reason: str
    asked: str
    options: list[dict[str, Any]]
    context: dict[str, Any]
    sla_deadline: float
    created: float
    escalated: float | None = None
    decided: float | None = None
    decision: str | None = None
    decided_by: str | None = None
    comment: str | None = None

    @property
    def arguments(self) -> Any:
        """What the step runs with if approved (an interrupted step: what it ran with), every
        reference resolved when the review opened; what `review show` and the review page
        show."""
        return self.context.get("args")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, with ISO times."""
        return json_ready(self, ("sla_deadline", "created", "escalated", "decided"))


@dataclass(slots=True)
class DeadLetterRecord:
    """A job that exhausted its recovery and waits for an operator."""

    id: str
    tenant_id: str
    job_id: str
    workflow: str
    step_id: int | None
    step_key: str | None
    reason: str
    error: dict[str, Any] | None
    context: dict[str, Any]
    status: str
    created: float
    redriven: float | None = None
    redriven_by: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, with ISO times."""
        return json_ready(self, ("created", "redriven"))


@dataclass(slots=True)
class EventRecord:
    """A stored event."""

    id: int
    kind: str
    tenant_id: str
    job_id: str
    step_id: int | None
    step_key: str | None
    from_status: str | None
    to_status: str | None
    actor: str
    reason: str
    data: dict[str, Any] | None
    at: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, with an ISO time."""
        out = {k: getattr(self, k) for k in self.__slots__}
        moment = to_datetime(out.pop("at"))
        out["at"] = moment.isoformat() if moment else None
        return out


@dataclass(slots=True)
class StepError:
    """A step's failure as stored: class, code, message, and what the engine decided."""

    error_class: str
    message: str
    code: str | None = None
    retry_after: float | None = None
    exception_type: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def asks_to_wait(self) -> bool:
        """The service refused for now and said for how long (HTTP 429 with Retry-After):
        a delay to honour, not a failure of the step."""
        return self.code == "http_429" and bool(self.retry_after)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "error_class": self.error_class,
            "message": self.message,
            "code": self.code,
            "retry_after": self.retry_after,
            "exception_type": self.exception_type,
            "details": self.details,
        }


@dataclass(slots=True)
class Dashboard:
    """What an operator looks at first, for one tenant (or all): read in one pass, with the
    database's clock. Rates and latencies cover jobs finished in the last `window_seconds`."""

    now: float
    window_seconds: float
    jobs_by_status: dict[str, int]
    finished: int
    succeeded: int
    p95_job_seconds: float | None
    steps_ready: int
    steps_retrying: int
    steps_running: int
    jobs_planning: int
    approvals_waiting: int
    approvals_overdue: int
    oldest_approval: float | None
    dead_letters_open: int
    cost_today_nanos: int

    @property
    def success_rate(self) -> float | None:
        """Completed jobs over finished ones (cancelled excluded), in the window."""
        return self.succeeded / self.finished if self.finished else None

    @property
    def oldest_approval_seconds(self) -> float | None:
        """How long the oldest waiting approval has waited."""
        return None if self.oldest_approval is None else max(0.0, self.now - self.oldest_approval)

    @property
    def queue_depth(self) -> int:
        """Steps waiting for a worker: ready now or waiting for their retry."""
        return self.steps_ready + self.steps_retrying

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, with the derived figures."""
        out = json_ready(self, ("now", "oldest_approval"))
        out["success_rate"] = self.success_rate
        out["oldest_approval_seconds"] = self.oldest_approval_seconds
        out["queue_depth"] = self.queue_depth
        return out
