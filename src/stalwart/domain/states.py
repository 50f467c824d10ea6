"""The job and step state machines, as data, and the one choke point that enforces them.

Every change of a job's or step's status is checked here: `job_transition` and
`step_transition` refuse a change the tables do not allow with `InvalidTransitionError`, and
return the `Event` (actor, reason, time) that the store appends in the same transaction.
The diagrams are in docs/concepts/state-machines.md.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum
from typing import Any

from stalwart.domain.events import Event
from stalwart.errors import InvalidTransitionError, UsageError
from stalwart.types import epoch_now


class JobStatus(StrEnum):
    """Where a job is in its life."""

    INTAKE = "intake"
    VALIDATING = "validating"
    PLANNING = "planning"
    EXECUTING = "executing"
    WAITING_APPROVAL = "waiting_approval"
    REPLANNING = "replanning"
    EVALUATING = "evaluating"
    COMPLETED = "completed"
    FAILED = "failed"
    REJECTED = "rejected"
    CANCELLED = "cancelled"
    DEAD_LETTERED = "dead_lettered"
    ESCALATED = "escalated"


def job_statuses(values: Iterable[str]) -> list[str]:
    """`values` as job statuses, or a `UsageError` listing every status: the rule the HTTP API's
    `status` query parameter follows (it is typed `JobStatus`), for the CLI and the client."""
    known = [s.value for s in JobStatus]
    out = [str(v) for v in values]
    bad = [v for v in out if v not in known]
    if bad:
        raise UsageError(
            f"unknown job status {', '.join(map(repr, bad))}; the statuses are: "
            + ", ".join(known),
            field="status",
            allowed=known,
            fix="pass --status (or `status`) as one of the statuses listed",
        )
    return out


class StepStatus(StrEnum):
    """Where a step is in its life."""

    PENDING = "pending"
    READY = "ready"
    RUNNING = "running"
    RETRY_WAIT = "retry_wait"
    AWAITING_APPROVAL = "awaiting_approval"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    REJECTED = "rejected"
    SKIPPED = "skipped"
    INTERRUPTED = "interrupted"
    DEAD_LETTERED = "dead_lettered"
    CANCELLED = "cancelled"


J = JobStatus
S = StepStatus

JOB_TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    J.INTAKE: frozenset({J.VALIDATING, J.CANCELLED}),
    J.VALIDATING: frozenset({J.PLANNING, J.FAILED, J.CANCELLED}),
    J.PLANNING: frozenset({J.EXECUTING, J.FAILED, J.ESCALATED, J.CANCELLED}),
    J.EXECUTING: frozenset(
        {
            J.WAITING_APPROVAL,
            J.REPLANNING,
            J.EVALUATING,
            J.FAILED,
            J.REJECTED,
            J.CANCELLED,
            J.DEAD_LETTERED,
            J.ESCALATED,
        }
    ),
    # waiting_approval -> evaluating: the last parked step ended (skipped, reconciled);
    # -> dead_lettered: a rejected interrupted step on the critical path.
    J.WAITING_APPROVAL: frozenset(
        {
            J.EXECUTING,
            J.EVALUATING,
            J.REPLANNING,
            J.REJECTED,
            J.FAILED,
            J.CANCELLED,
            J.DEAD_LETTERED,
            J.ESCALATED,
        }
    ),
    J.REPLANNING: frozenset({J.EXECUTING, J.ESCALATED, J.FAILED, J.CANCELLED}),
    J.EVALUATING: frozenset({J.COMPLETED, J.REPLANNING, J.FAILED, J.ESCALATED}),
    # escalated: parked for a human, who may approve (back to executing), redrive or cancel.
    J.ESCALATED: frozenset({J.EXECUTING, J.REPLANNING, J.REJECTED, J.FAILED, J.CANCELLED}),
    J.DEAD_LETTERED: frozenset({J.EXECUTING, J.CANCELLED}),
    J.COMPLETED: frozenset(),
    J.FAILED: frozenset(),
    J.REJECTED: frozenset(),
    J.CANCELLED: frozenset(),
}

STEP_TRANSITIONS: dict[StepStatus, frozenset[StepStatus]] = {
    S.PENDING: frozenset({S.READY, S.SKIPPED, S.CANCELLED}),
    S.READY: frozenset({S.RUNNING, S.AWAITING_APPROVAL, S.SKIPPED, S.CANCELLED}),
    # running -> ready: a lease that expired on an idempotent tool, or a drained worker.
    # running -> awaiting_approval: an agent step parks mid-loop on a call that needs a reviewer.
    S.RUNNING: frozenset(
        {
            S.SUCCEEDED,
            S.RETRY_WAIT,
            S.FAILED,
            S.INTERRUPTED,
            S.READY,
            S.CANCELLED,
            S.AWAITING_APPROVAL,
        }
    ),
    S.RETRY_WAIT: frozenset({S.READY, S.SKIPPED, S.CANCELLED}),
    S.AWAITING_APPROVAL: frozenset({S.READY, S.REJECTED, S.SKIPPED, S.CANCELLED}),
    # interrupted: reconciled (succeeded or ready again) or decided by a human.
    S.INTERRUPTED: frozenset({S.READY, S.SUCCEEDED, S.FAILED, S.SKIPPED, S.CANCELLED}),
    # failed: exhausted. Critical -> dead_lettered; non-critical -> skipped (degraded);
    # an escalated job's failed step goes back to ready on redrive.
    S.FAILED: frozenset({S.DEAD_LETTERED, S.SKIPPED, S.READY, S.CANCELLED}),
    S.DEAD_LETTERED: frozenset({S.READY, S.CANCELLED}),
    S.SUCCEEDED: frozenset(),
    S.REJECTED: frozenset(),
    S.SKIPPED: frozenset(),
    S.CANCELLED: frozenset(),
}

JOB_TERMINAL = frozenset(s for s, targets in JOB_TRANSITIONS.items() if not targets)
"""Statuses a job never leaves."""
JOB_PARKED = frozenset({J.DEAD_LETTERED, J.ESCALATED})
"""Statuses that wait for an operator (redrive or cancel)."""
JOB_OPEN = frozenset(JobStatus) - JOB_TERMINAL
"""Statuses of jobs that are not finished (parked ones included)."""
JOB_QUEUED = JOB_OPEN - JOB_PARKED
"""Statuses that count toward a tenant's queue depth: parked jobs wait for an operator, not
for a worker, so they do not hold the queue."""

STEP_TERMINAL = frozenset(s for s, targets in STEP_TRANSITIONS.items() if not targets)
STEP_DONE = frozenset({S.SUCCEEDED, S.SKIPPED})
"""A dependency in one of these lets its dependents go ahead."""
STEP_ACTIVE = frozenset({S.READY, S.RUNNING, S.RETRY_WAIT})
"""Steps that hold or want a worker."""

JOB_EVENTS: dict[JobStatus, str] = {
    J.INTAKE: "job_received",
    J.VALIDATING: "job_validation_started",
    J.PLANNING: "job_planning_started",
    J.EXECUTING: "job_execution_started",
    J.WAITING_APPROVAL: "job_waiting_approval",
    J.REPLANNING: "job_replanning_started",
    J.EVALUATING: "job_evaluation_started",
    J.COMPLETED: "job_completed",
    J.FAILED: "job_failed",
    J.REJECTED: "job_rejected",
    J.CANCELLED: "job_cancelled",
    J.DEAD_LETTERED: "job_dead_lettered",
    J.ESCALATED: "job_escalated",
}

STEP_EVENTS: dict[StepStatus, str] = {
    S.PENDING: "step_planned",
    S.READY: "step_ready",
    S.RUNNING: "step_started",
    S.RETRY_WAIT: "step_retry_scheduled",
    S.AWAITING_APPROVAL: "step_approval_requested",
    S.SUCCEEDED: "step_succeeded",
    S.FAILED: "step_failed",
    S.REJECTED: "step_rejected",
    S.SKIPPED: "step_skipped",
    S.INTERRUPTED: "step_interrupted",
    S.DEAD_LETTERED: "step_dead_lettered",
    S.CANCELLED: "step_cancelled",
}


def check_job_transition(current: JobStatus | str, target: JobStatus | str) -> None:
    """Raise `InvalidTransitionError` unless the job may move from `current` to `target`."""
    cur, tgt = JobStatus(current), JobStatus(target)
    if tgt not in JOB_TRANSITIONS[cur]:
        allowed = ", ".join(sorted(JOB_TRANSITIONS[cur])) or "none: it is final"
        raise InvalidTransitionError(
            f"a job cannot go from {cur} to {tgt} (allowed from {cur}: {allowed})",
            entity="job",
            current=str(cur),
            target=str(tgt),
        )


def check_step_transition(current: StepStatus | str, target: StepStatus | str) -> None:
    """Raise `InvalidTransitionError` unless the step may move from `current` to `target`."""
    cur, tgt = StepStatus(current), StepStatus(target)
    if tgt not in STEP_TRANSITIONS[cur]:
        allowed = ", ".join(sorted(STEP_TRANSITIONS[cur])) or "none: it is final"
        raise InvalidTransitionError(
            f"a step cannot go from {cur} to {tgt} (allowed from {cur}: {allowed})",
            entity="step",
            current=str(cur),
            target=str(tgt),
        )


def job_transition(
    job_id: str,
    tenant_id: str,
    current: JobStatus | str,
    target: JobStatus | str,
    *,
    actor: str,
    reason: str = "",
    data: dict[str, Any] | None = None,
    at: float | None = None,
) -> Event:
    """Check a job's status change and return the event that records it."""
    check_job_transition(current, target)
    return Event(
        kind=JOB_EVENTS[JobStatus(target)],
        tenant_id=tenant_id,
        job_id=job_id,
        from_status=str(current),
        to_status=str(target),
        actor=actor,
        reason=reason,
        data=data,
        at=epoch_now() if at is None else at,
    )


def step_transition(
    job_id: str,
    tenant_id: str,
    step_id: int,
    step_key: str,
    current: StepStatus | str,
    target: StepStatus | str,
    *,
    actor: str,
    reason: str = "",
    data: dict[str, Any] | None = None,
    at: float | None = None,
) -> Event:
    """Check a step's status change and return the event that records it."""
    check_step_transition(current, target)
    return Event(
        kind=STEP_EVENTS[StepStatus(target)],
        tenant_id=tenant_id,
        job_id=job_id,
        step_id=step_id,
        step_key=step_key,
        from_status=str(current),
        to_status=str(target),
        actor=actor,
        reason=reason,
        data=data,
        at=epoch_now() if at is None else at,
    )
