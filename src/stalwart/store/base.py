"""The storage contract: everything the engine, workers and client ask of a database.

Methods are named entity-then-verb. Each write method is one transaction: it either applies
all its changes (state transitions checked by `domain.states`, with their events) or none.
`SqliteStore` implements it now; the PostgreSQL backend implements the same protocol and passes
the same conformance suite in `tests/store/`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from stalwart.domain.failures import Decision
from stalwart.domain.plans import Plan
from stalwart.domain.records import (
    Claim,
    DeadLetterRecord,
    EventRecord,
    JobRecord,
    ReviewRecord,
    StepError,
    StepRecord,
)


@dataclass(slots=True)
class NewJob:
    """A validated job ready to be inserted, with the limits that govern its insertion."""

    id: str
    tenant_id: str
    workflow: str
    input: dict[str, Any]
    priority: int = 0
    idempotency_key: str | None = None
    dedup_window_seconds: float = 86400.0
    max_replans: int = 1
    on_reject: str = "fail"
    max_steps: int | None = None
    max_wall_seconds: float | None = None
    review_sla_seconds: float = 86400.0
    tool_schema_hashes: dict[str, str] = field(default_factory=dict)
    max_queue_depth: int = 10_000
    queue_full_retry_after: float = 5.0


@dataclass(slots=True)
class ReplanClaim:
    """A job in `replanning` that a worker holds under lease while it plans again."""

    job: JobRecord
    lease_token: int
    tried_hashes: frozenset[str]
    feedback: dict[str, Any] | None


@dataclass(slots=True)
class Completion:
    """What a step completion did: whether the lease was still ours, and a next claim."""

    recorded: bool
    next_claim: Claim | None = None
    job_status: str | None = None


@dataclass(slots=True)
class Heartbeat:
    """Leases that were lost, and steps whose job was cancelled."""

    lost: set[int] = field(default_factory=set)
    cancelled: set[int] = field(default_factory=set)


@dataclass(slots=True)
class PlanRecord:
    """One stored plan version of a job."""

    job_id: str
    version: int
    template_name: str
    template_hash: str
    plan_hash: str
    plan: dict[str, Any]
    created: float


@dataclass(slots=True)
class MigrationStatus:
    """Applied and pending schema versions."""

    applied: list[tuple[int, str, float]]
    pending: list[tuple[int, str]]

    @property
    def current(self) -> bool:
        """True when nothing is pending."""
        return not self.pending


class Store(Protocol):
    """The storage contract. Every write is one transaction; transitions are checked."""

    url: str

    async def migrate(self) -> list[int]:
        """Apply pending migrations; return the versions applied now."""
        ...

    async def migration_status(self) -> MigrationStatus:
        """Applied and pending migrations."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...

    # -- jobs -----------------------------------------------------------------------------------

    async def job_create(self, job: NewJob, plan: Plan, *, actor: str) -> tuple[JobRecord, bool]:
        """Insert a job with its first plan, or return the existing job for a duplicate
        idempotency key inside the window (`created` False). Raises `QueueFull`."""
        ...

    async def job_get(self, job_id: str, *, tenant_id: str | None = None) -> JobRecord:
        """One job; `NotFoundError` if it does not exist for this tenant."""
        ...

    async def job_list(
        self,
        *,
        tenant_id: str | None = None,
        statuses: Sequence[str] = (),
        workflow: str | None = None,
        limit: int = 50,
        before: str | None = None,
    ) -> list[JobRecord]:
        """Jobs, newest first; `before` is a job id cursor."""
        ...

    async def job_cancel(
        self, job_id: str, *, tenant_id: str | None = None, actor: str, reason: str = ""
    ) -> JobRecord:
        """Cancel a job: open steps stop, running ones see the flag at their next heartbeat."""
        ...

    async def job_redrive(
        self, job_id: str, *, tenant_id: str | None = None, actor: str, reason: str = ""
    ) -> JobRecord:
        """Resume a dead-lettered or escalated job from its failed steps; completed steps stay."""
        ...

    async def job_claim_replanning(
        self, worker_id: str, *, lease_seconds: float, limit: int = 1
    ) -> list[ReplanClaim]:
        """Claim jobs waiting in `replanning` for a new plan."""
        ...

    async def job_replan(self, claim: ReplanClaim, plan: Plan, *, actor: str) -> JobRecord:
        """Apply a new plan version to a claimed job; unchanged succeeded steps are reused."""
        ...

    async def job_escalate(
        self, claim: ReplanClaim, *, actor: str, reason: str, error: StepError | None = None
    ) -> JobRecord:
        """Park a claimed replanning job for a human."""
        ...

    async def jobs_expire(self, *, actor: str) -> list[str]:
        """Fail live jobs past their wall-time deadline; return their ids."""
        ...

    async def plan_list(self, job_id: str, *, tenant_id: str | None = None) -> list[PlanRecord]:
        """Every plan version of a job, oldest first."""
        ...

    # -- steps ----------------------------------------------------------------------------------

    async def step_list(
        self, job_id: str, *, tenant_id: str | None = None, all_versions: bool = False
    ) -> list[StepRecord]:
        """A job's steps (of its current plan version unless `all_versions`)."""
        ...

    async def step_claim(self, worker_id: str, *, limit: int, lease_seconds: float) -> list[Claim]:
        """Claim up to `limit` due steps, by priority then due time, under a new fencing token."""
        ...

    async def step_complete(
        self,
        claim: Claim,
        output: Any,
        *,
        worker_id: str,
        claim_next: bool = False,
        lease_seconds: float = 30.0,
    ) -> Completion:
        """Record success if the lease is still ours: output, status, dependents, events; may
        claim the job's next ready step for the same worker in the same transaction."""
        ...

    async def step_fail(
        self, claim: Claim, error: StepError, decision: Decision, *, worker_id: str
    ) -> bool:
        """Record a failed attempt and apply the decision; False if the lease was lost."""
        ...

    async def step_heartbeat(
        self, worker_id: str, leases: Sequence[tuple[int, int]], *, lease_seconds: float
    ) -> Heartbeat:
        """Extend leases given as (step id, token); report lost leases and cancelled jobs."""
        ...

    async def step_release(
        self, leases: Sequence[tuple[int, int]], *, worker_id: str, reason: str
    ) -> None:
        """Give back leases without using up an attempt (a draining worker)."""
        ...

    async def leases_reap(self, *, actor: str) -> int:
        """Recover running steps whose lease expired; return how many."""
        ...

    # -- reviews --------------------------------------------------------------------------------

    async def review_list(
        self, *, tenant_id: str | None = None, statuses: Sequence[str] = (), limit: int = 50
    ) -> list[ReviewRecord]:
        """Reviews, oldest first."""
        ...

    async def review_get(self, review_id: str, *, tenant_id: str | None = None) -> ReviewRecord:
        """One review."""
        ...

    async def review_decide(
        self,
        review_id: str,
        *,
        approve: bool,
        reviewer: str,
        comment: str = "",
        tenant_id: str | None = None,
    ) -> ReviewRecord:
        """Approve or reject a pending (or escalated) review."""
        ...

    async def reviews_escalate_overdue(self, *, actor: str) -> list[ReviewRecord]:
        """Escalate pending reviews past their SLA deadline; return them."""
        ...

    # -- dead letters and events ----------------------------------------------------------------

    async def dead_letter_list(
        self, *, tenant_id: str | None = None, statuses: Sequence[str] = ("open",), limit: int = 50
    ) -> list[DeadLetterRecord]:
        """Dead letters, newest first."""
        ...

    async def dead_letter_get(
        self, dead_letter_id: str, *, tenant_id: str | None = None
    ) -> DeadLetterRecord:
        """One dead letter, by its id or its job's id."""
        ...

    async def event_list(
        self, job_id: str, *, tenant_id: str | None = None, after_id: int = 0, limit: int = 1000
    ) -> list[EventRecord]:
        """A job's events in order."""
        ...
