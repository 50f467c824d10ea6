"""What the metrics exporter and the alert rules read from the store: the event log and the
ledger as compact rows, the current state as gauges, per-workflow outcome figures, and alert
incidents. Pure data; the store fills it in (`stalwart.store.sql.observability`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from stalwart.domain.records import json_ready
from stalwart.types import to_datetime

OUTCOME_EVENTS: dict[str, str] = {
    "job_completed": "completed",
    "job_failed": "failed",
    "job_rejected": "rejected",
    "job_cancelled": "cancelled",
    "job_dead_lettered": "dead_lettered",
    "job_escalated": "escalated",
}
"""Event kinds that end a job (or park it for a human), and the outcome each stands for."""

JUDGED_OUTCOMES: tuple[str, ...] = ("completed", "failed", "rejected", "dead_lettered", "escalated")
"""Outcomes a success rate counts: everything but `cancelled` (an operator's choice, not a
failure). `completed` is the success."""


@dataclass(slots=True)
class FeedEvent:
    """One event as the metrics exporter reads it, with its job's workflow and creation time
    and its step's tool and kind (None once those rows are gone)."""

    id: int
    kind: str
    tenant_id: str
    job_id: str
    workflow: str | None
    job_created: float | None
    step_id: int | None
    tool: str | None
    step_kind: str | None
    from_status: str | None
    to_status: str | None
    reason: str
    data: dict[str, Any] | None
    at: float


@dataclass(slots=True)
class LedgerEntry:
    """One ledger row (an LLM call) as the metrics exporter reads it. `outcome` is `reserved`
    while the call is in flight."""

    id: int
    tenant_id: str
    workflow: str | None
    provider: str
    model: str
    outcome: str
    input_tokens: int
    output_tokens: int
    cached_tokens: int
    cost_nanos: int
    latency_ms: float | None
    context_tokens: int | None
    context_limit: int | None
    created: float


@dataclass(slots=True)
class QueueRow:
    """Steps waiting to run (`ready`, `retry_wait`) of live jobs, or jobs waiting for a planner
    (`planning`, `replanning`), per workflow, priority, tool and tenant; `due` of them could
    start now."""

    queue: str
    workflow: str
    priority: int
    tool: str | None
    tenant_id: str
    count: int
    due: int


@dataclass(slots=True)
class RunningRow:
    """Steps running now, per workflow and tool."""

    workflow: str
    tool: str | None
    count: int


@dataclass(slots=True)
class ApprovalRow:
    """Reviews waiting for a human (`pending` or `escalated`), per tenant, workflow, kind and
    status: how many, how many are past their SLA, the oldest's creation time and the earliest
    SLA deadline."""

    tenant_id: str
    workflow: str
    kind: str
    status: str
    count: int
    past_sla: int
    oldest_created: float
    earliest_deadline: float


@dataclass(slots=True)
class DeadLetterRow:
    """Open dead letters per tenant and workflow, with the newest one's time."""

    tenant_id: str
    workflow: str
    count: int
    newest: float


@dataclass(slots=True)
class LimitGauge:
    """One limited key now: whether it holds steps back, its breaker, its slots, its pause."""

    key: str
    held_back: bool
    breaker: bool
    breaker_state: str
    concurrency: int | None
    in_use: int
    paused_seconds: float


@dataclass(slots=True)
class MetricsSnapshot:
    """The current state, read with the database's clock (`now`)."""

    now: float
    queue: list[QueueRow] = field(default_factory=list)
    running: list[RunningRow] = field(default_factory=list)
    approvals: list[ApprovalRow] = field(default_factory=list)
    dead_letters: list[DeadLetterRow] = field(default_factory=list)
    limits: list[LimitGauge] = field(default_factory=list)
    workers_live: int = 0
    alerts_open: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class WorkflowOutcomes:
    """Jobs of one workflow that reached a judged outcome (`JUDGED_OUTCOMES`) in the recent
    window and in the baseline before it, with the model spend of those jobs (nano-USD)."""

    workflow: str
    window_jobs: int = 0
    window_completed: int = 0
    window_cost_nanos: int = 0
    baseline_jobs: int = 0
    baseline_completed: int = 0
    baseline_cost_nanos: int = 0


@dataclass(slots=True)
class AlertIncident:
    """One incident of an alert rule for one scope (a workflow, or '' for the whole
    deployment): `open` while the rule fires, `closed` once it stops. `notified` is when its
    hooks were called (once per incident)."""

    id: str
    rule: str
    scope: str
    status: str
    summary: str
    details: dict[str, Any]
    opened: float
    updated: float
    closed: float | None = None
    notified: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, as hooks receive it: `kind` is `alert`; the epoch times are kept
        and `opened_at` / `closed_at` added in ISO."""
        out: dict[str, Any] = {"kind": "alert", **json_ready(self)}
        for name in ("opened", "closed"):
            moment = to_datetime(out[name])
            out[f"{name}_at"] = moment.isoformat() if moment else None
        return out
