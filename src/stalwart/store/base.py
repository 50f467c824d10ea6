"""The storage contract: everything the engine, workers and client ask of a database.

Methods are named entity-then-verb. Each write method is one transaction: it either applies
all its changes (state transitions checked by `domain.states`, with their events) or none.
`SqliteStore` and `PostgresStore` implement it (both on the shared SQL in `stalwart.store.sql`)
and pass the same conformance suite in `tests/store/`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from stalwart.domain.access import KeyRecord, NewKey
from stalwart.domain.agents import AgentCall, AgentTurn, Transcript, TurnCheckpoint, TurnWrite
from stalwart.domain.budgets import (
    BudgetRecord,
    BudgetWarning,
    CallResult,
    LlmCallRecord,
    NewCall,
)
from stalwart.domain.failures import Decision
from stalwart.domain.limits import LimitRecord, LimitSpec
from stalwart.domain.memory import (
    CollectionRecord,
    DocumentRecord,
    EpisodeRecord,
    MemoryRow,
    NewDocument,
    NewEpisode,
)
from stalwart.domain.observability import (
    AlertIncident,
    FeedEvent,
    LedgerEntry,
    MetricsSnapshot,
    WorkflowOutcomes,
)
from stalwart.domain.plans import Plan
from stalwart.domain.records import (
    Claim,
    Dashboard,
    DeadLetterRecord,
    EventRecord,
    JobRecord,
    ReviewRecord,
    StepError,
    StepRecord,
    json_ready,
)
from stalwart.errors import BudgetExceeded, CorruptStateError


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
    trace_context: str | None = None


@dataclass(slots=True)
class ReplanClaim:
    """A job in `replanning` that a worker holds under lease while it plans again."""

    job: JobRecord
    lease_token: int
    tried_hashes: frozenset[str]
    feedback: dict[str, Any] | None


# A write a tool registered with `ctx.on_commit(sql, params)`: SQL with `?` placeholders that
# runs inside the step's completion transaction, so it applies exactly once or not at all.
Effect = tuple[str, tuple[Any, ...]]


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
class WorkDue:
    """What an idle worker may find to do, read in one query with the database's clock."""

    now: float
    next_step_due: float | None = None
    replanning: bool = False
    leases_expired: bool = False
    reviews_overdue: bool = False
    jobs_expired: bool = False
    reservations_expired: bool = False

    @property
    def steps_due(self) -> bool:
        """A step is ready or its retry is due (its limits may still hold it back)."""
        return self.next_step_due is not None and self.next_step_due <= self.now

    @property
    def reaping(self) -> bool:
        """Something for the reaper."""
        return (
            self.leases_expired
            or self.reviews_overdue
            or self.jobs_expired
            or self.reservations_expired
        )


class Claims(list[Claim]):
    """The steps one `step_claim` took, and when to look again.

    `next_due` is the earliest time (the database's clock, like `now`) at which a step this
    claim did not take may be taken: a step not due yet, or the moment a limit holding due steps
    back lets one through (a rate limit's next token, the end of a pause or of a breaker's
    cool-down). None when nothing waits on time alone: no step left, or only steps waiting for
    a slot or a probe to come back (a finished step wakes the worker for those). A list, so a
    caller that wants only the claims uses it as one."""

    __slots__ = ("next_due", "now")

    def __init__(
        self, claims: Iterable[Claim] = (), *, now: float = 0.0, next_due: float | None = None
    ) -> None:
        super().__init__(claims)
        self.now = now
        self.next_due = next_due


@dataclass(slots=True)
class WorkerInfo:
    """A worker process as it registers itself."""

    id: str
    host: str
    pid: int
    concurrency: int
    tools: list[str] = field(default_factory=list)
    version: str = ""


@dataclass(slots=True)
class WorkerRecord:
    """A registered worker, its last heartbeat, and the steps it holds now."""

    id: str
    host: str
    pid: int
    concurrency: int
    tools: list[str]
    version: str
    status: str
    started: float
    heartbeat: float
    stopped: float | None
    live: bool
    holding: list[dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return json_ready(self)


@dataclass(slots=True)
class MigrationStatus:
    """Applied and pending schema versions."""

    applied: list[tuple[int, str, float]]
    pending: list[tuple[int, str]]

    @property
    def current(self) -> bool:
        """True when nothing is pending."""
        return not self.pending


@dataclass(slots=True)
class CallStart:
    """What `agent_call_start` found: the call started (its limits passed), or the lease is
    gone, or a limit holds the call back until `wait_until` (None: until a slot frees)."""

    started: bool
    lease_lost: bool = False
    held_by: str | None = None
    wait_until: float | None = None
    # The call went through its tool's limits (its finish gives the slot back, moves the breaker).
    limited: bool = False


@dataclass(slots=True)
class CallFinish:
    """What `agent_call_finish` did: `done` False when the lease is gone (nothing written);
    with a reservation asked, the ledger row of the next turn (`reserved`) or why a budget
    refused it (`refused`: the call's end is recorded all the same)."""

    done: bool
    reserved: int | None = None
    refused: BudgetExceeded | None = None

    def __bool__(self) -> bool:
        return self.done


class Store(Protocol):
    """The storage contract. Every write is one transaction; transitions are checked."""

    url: str
    # True when the backend pushes wake-ups (`listen`), so idle workers may poll less often.
    wakeups: bool

    async def listen(self, wake: Callable[[], None]) -> None:
        """Call `wake` whenever steps become ready in another process, until cancelled. A hint
        only; a backend without push notifications just waits to be cancelled."""
        ...

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

    async def job_create(
        self, job: NewJob, plan: Plan | None, *, actor: str
    ) -> tuple[JobRecord, bool]:
        """Insert a job with its first plan (none: it waits in `planning` for a worker), or
        return the existing job for a duplicate idempotency key inside the window (`created`
        False). Raises `QueueFull`."""
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

    async def job_quarantine(self, job_id: str, error: CorruptStateError, *, actor: str) -> None:
        """Quarantine a job whose stored state failed to decode: escalated (error
        `CorruptStateError`, a dead letter) when its status allows, else noted; an event
        `job_quarantined` names what failed. Its rows are left as they are."""
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

    async def step_claim(self, worker_id: str, *, limit: int, lease_seconds: float) -> Claims:
        """Claim up to `limit` due steps, by priority then due time, under a new fencing token;
        say when a step not taken may be taken (`Claims.next_due`)."""
        ...

    async def step_complete(
        self,
        claim: Claim,
        output: Any,
        *,
        worker_id: str,
        claim_next: bool = False,
        lease_seconds: float = 30.0,
        effects: Sequence[Effect] = (),
        warnings: Sequence[str] = (),
    ) -> Completion:
        """Record success if the lease is still ours: output, status, dependents, events (one
        `evaluation_warning` per warning), and
        the tool's `effects` (raising `EffectFailedError`, with nothing written, if one fails);
        may claim the job's next ready step for the same worker in the same transaction."""
        ...

    async def step_fail(
        self, claim: Claim, error: StepError, decision: Decision, *, worker_id: str
    ) -> bool:
        """Record a failed attempt and apply the decision; False if the lease was lost."""
        ...

    async def step_heartbeat(
        self, worker_id: str, leases: Sequence[tuple[int, int]], *, lease_seconds: float
    ) -> Heartbeat:
        """Extend leases given as (step id, token) and record the worker alive; report lost
        leases and cancelled jobs."""
        ...

    async def step_release(
        self, leases: Sequence[tuple[int, int]], *, worker_id: str, reason: str
    ) -> None:
        """Give back leases without using up an attempt (a draining worker)."""
        ...

    async def leases_reap(self, *, actor: str) -> int:
        """Recover running steps whose lease expired; return how many."""
        ...

    async def leases_reclaim(self, owners: Sequence[str], *, actor: str) -> int:
        """Recover at once the running steps leased to `owners` (a restarted worker's own
        leftovers, or those of a dead process on its host); return how many."""
        ...

    async def work_due(self) -> WorkDue:
        """In one read: when the next step is due, and whether replanning, reaping, review
        escalation or job expiry has anything to do."""
        ...

    # -- limits ---------------------------------------------------------------------------------

    async def limits_configure(self, specs: Sequence[LimitSpec]) -> None:
        """Write declared limits (caps, rates, breakers), keeping their live state."""
        ...

    async def limit_list(self) -> list[LimitRecord]:
        """Every limited key with its live state (slots in use, tokens, pause, breaker)."""
        ...

    # -- workers --------------------------------------------------------------------------------

    async def worker_register(self, info: WorkerInfo) -> None:
        """Record a worker as running (again, if its id is known)."""
        ...

    async def worker_beat(self, worker_id: str) -> None:
        """Record that a worker is alive."""
        ...

    async def worker_stopped(self, worker_id: str) -> None:
        """Record that a worker stopped cleanly."""
        ...

    async def worker_list(
        self, *, live_seconds: float, include_stopped: bool = True
    ) -> list[WorkerRecord]:
        """Workers, newest first; `live` when its heartbeat is younger than `live_seconds`."""
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

    # -- the LLM gateway: budgets, ledger, cache -----------------------------------------------

    async def llm_reserve(self, call: NewCall, *, actor: str) -> int:
        """Open a ledger row and reserve the call's worst case against its budgets, all or
        nothing; raises `BudgetExceeded` without writing anything."""
        ...

    async def llm_settle(
        self,
        call_id: int,
        result: CallResult,
        *,
        actor: str,
        warn_ratio: float = 0.8,
        turn: TurnWrite | None = None,
    ) -> list[BudgetWarning]:
        """Settle a reserved call; return the budgets that crossed their warning ratio now. With
        `turn`, record the agent turn it answered in the same transaction, fenced."""
        ...

    # -- agent loops (decision 0039) ---------------------------------------------------------

    async def agent_transcript(self, step_id: int, *, key: str = "") -> Transcript:
        """An agent step's turns and calls so far, in order."""
        ...

    async def agent_transcripts(
        self, job_id: str, *, tenant_id: str | None = None
    ) -> list[Transcript]:
        """Every agent step's transcript of the job's current plan, in step order."""
        ...

    async def agent_turn_record(
        self, claim: Claim, checkpoint: TurnCheckpoint, turn: AgentTurn, *, actor: str
    ) -> bool:
        """Record a turn that settled no ledger row of its own; False when the lease is gone."""
        ...

    async def agent_call_start(
        self, claim: Claim, call: AgentCall, *, actor: str, limited: bool = True
    ) -> CallStart:
        """Pass the call's tool limits and write it `running`, fenced."""
        ...

    async def agent_call_finish(
        self,
        claim: Claim,
        call: AgentCall,
        *,
        actor: str,
        effects: Sequence[tuple[str, tuple[Any, ...]]] = (),
        outcome: StepError | None = None,
        ran: bool = True,
        limited: bool = True,
        reserve: NewCall | None = None,
    ) -> CallFinish:
        """Write a call's end with its effects, fenced (and reserve the next turn, `reserve`);
        falsy when the lease is gone."""
        ...

    async def agent_park(
        self,
        claim: Claim,
        call: AgentCall,
        *,
        actor: str,
        kind: str,
        reason: str,
        asked: str,
        options: list[dict[str, Any]],
        context: dict[str, Any],
    ) -> bool:
        """Park an agent step on a call that waits for a reviewer; False when the lease is gone."""
        ...

    async def llm_record(
        self,
        call: NewCall,
        result: CallResult,
        *,
        actor: str,
        refused_by: str | None = None,
    ) -> tuple[int, list[BudgetWarning]]:
        """Record a call that reserved nothing (a cache hit, a refusal); a refusal warns for
        the refusing budget once. Returns the row id and the warnings."""
        ...

    async def llm_reservations_release(self, *, actor: str) -> int:
        """Release reservations of calls whose worker died before settling them."""
        ...

    async def llm_call_list(
        self, job_id: str, *, tenant_id: str | None = None
    ) -> list[LlmCallRecord]:
        """A job's ledger rows, oldest first."""
        ...

    async def budget_list(
        self, *, tenant_id: str | None = None, keys: Sequence[str] | None = None
    ) -> list[BudgetRecord]:
        """Budget rows by key."""
        ...

    async def llm_cache_get(self, tenant_id: str, key: str) -> dict[str, Any] | None:
        """A cached answer of this tenant, or None."""
        ...

    async def llm_cache_put(
        self,
        tenant_id: str,
        key: str,
        *,
        provider: str,
        model: str,
        response: dict[str, Any],
        ttl_seconds: float | None,
        actor: str,
    ) -> None:
        """Store an answer under this tenant's key."""
        ...

    # -- the server -------------------------------------------------------------------------------

    async def key_create(self, key: NewKey) -> KeyRecord:
        """Store a new API key; `UsageError` when its tenant has an active key of that name."""
        ...

    async def key_get(self, key_id: str) -> tuple[KeyRecord, str] | None:
        """A key and its stored digest (revoked or not), or None."""
        ...

    async def key_list(
        self, *, tenant_id: str | None = None, include_revoked: bool = False
    ) -> list[KeyRecord]:
        """Keys, oldest first, never their secrets."""
        ...

    async def key_revoke(self, key: str, *, tenant_id: str | None = None, actor: str) -> KeyRecord:
        """Revoke an active key by id or name; `NotFoundError` if there is none."""
        ...

    async def key_touch(self, key_id: str) -> None:
        """Record that a key was just used."""
        ...

    async def secret_get(self, name: str) -> str:
        """A secret shared by every process of this database, created on first use."""
        ...

    async def dashboard(
        self, *, tenant_id: str | None = None, window_seconds: float = 86400.0
    ) -> Dashboard:
        """The operator's overview: jobs, queue, approvals, dead letters, cost today."""
        ...

    # -- metrics and alerts -----------------------------------------------------------------------

    async def event_feed(
        self, after_id: int = 0, *, limit: int = 5000, ids: Sequence[int] | None = None
    ) -> list[FeedEvent]:
        """Events after `after_id` (oldest first, at most `limit`), or those of `ids` that
        exist now, with their job's workflow and their step's tool."""
        ...

    async def llm_call_feed(
        self, after_id: int = 0, *, limit: int = 5000, ids: Sequence[int] | None = None
    ) -> list[LedgerEntry]:
        """Ledger rows after `after_id` (oldest first, at most `limit`), or those of `ids`."""
        ...

    async def job_costs(self, job_ids: Sequence[str]) -> dict[str, int]:
        """Model spend per job so far, nano-USD."""
        ...

    async def metrics_snapshot(self, *, live_seconds: float = 30.0) -> MetricsSnapshot:
        """Queue depth, running steps, approvals and their SLA, open dead letters, limits,
        live workers and open alert incidents, now."""
        ...

    async def workflow_outcomes(
        self, *, window_seconds: float, baseline_seconds: float
    ) -> list[WorkflowOutcomes]:
        """Per workflow: judged outcomes and their spend in the window and in the baseline
        before it."""
        ...

    async def alert_open(
        self, rule: str, scope: str, summary: str, details: dict[str, Any]
    ) -> tuple[AlertIncident, bool]:
        """Open (True) or refresh (False) the incident of `rule` for `scope`; race-free."""
        ...

    async def alert_close(self, rule: str, scope: str) -> AlertIncident | None:
        """Close the open incident of `rule` for `scope`, if any."""
        ...

    async def alert_claim_unnotified(self) -> list[AlertIncident]:
        """Open incidents not notified yet, now marked notified: the caller notifies them."""
        ...

    async def alert_list(
        self,
        *,
        statuses: Sequence[str] = ("open", "closed"),
        rule: str | None = None,
        limit: int = 100,
    ) -> list[AlertIncident]:
        """Incidents, newest first."""
        ...

    async def alert_turn(self, interval_seconds: float) -> bool:
        """True for at most one caller per `interval_seconds`: whose turn it is to evaluate."""
        ...

    # -- memory -----------------------------------------------------------------------------------

    async def memory_document_put(
        self,
        doc: NewDocument,
        *,
        embedder: str | None,
        dimension: int | None,
        retention_days: float | None = None,
    ) -> DocumentRecord:
        """Store a document and its chunks; the collection keeps one embedder and dimension."""
        ...

    async def memory_collection(self, tenant_id: str, name: str) -> CollectionRecord:
        """One collection with its counts."""
        ...

    async def memory_collections(self, tenant_id: str) -> list[CollectionRecord]:
        """The tenant's collections with their counts."""
        ...

    async def memory_documents(self, tenant_id: str, collection: str) -> list[DocumentRecord]:
        """A collection's documents."""
        ...

    async def memory_forget(
        self, tenant_id: str, collection: str, source: str | None = None
    ) -> dict[str, int]:
        """Remove a source or a whole collection; rows removed by table."""
        ...

    async def memory_erase_tenant(self, tenant_id: str) -> dict[str, int]:
        """Remove every memory row of a tenant; rows removed by table."""
        ...

    async def memory_count(self, tenant_id: str) -> dict[str, int]:
        """The tenant's memory rows by table."""
        ...

    async def memory_prune(self) -> int:
        """Remove documents past their collection's retention."""
        ...

    async def memory_version(
        self, tenant_id: str, collections: Sequence[str] | None
    ) -> tuple[int, int]:
        """(rows, highest id) of chunks in `collections`, or of episodes when None."""
        ...

    async def memory_chunk_rows(
        self, tenant_id: str, collections: Sequence[str], *, after_id: int = 0, limit: int = 5000
    ) -> list[MemoryRow]:
        """Chunks above `after_id`, by id."""
        ...

    async def episode_rows(
        self, tenant_id: str, *, after_id: int = 0, limit: int = 5000
    ) -> list[MemoryRow]:
        """Episodes above `after_id`, by id."""
        ...

    async def episode_put(self, episode: NewEpisode) -> bool:
        """Store a job's episode; False when it has one."""
        ...

    async def episode_get(self, tenant_id: str, job_id: str) -> EpisodeRecord | None:
        """A job's episode."""
        ...

    async def episodes_get(self, tenant_id: str, ids: Sequence[int]) -> list[EpisodeRecord]:
        """The tenant's episodes of these ids."""
        ...

    async def episodes_pending(self, since: float, limit: int = 100) -> list[tuple[str, str]]:
        """(tenant, job) of ended jobs without an episode, since `since`."""
        ...

    async def memory_rows_get(
        self, tenant_id: str, collections: Sequence[str] | None, ids: Sequence[int]
    ) -> list[MemoryRow]:
        """The tenant's chunks in `collections` (episodes when None) of these ids, no vectors."""
        ...

    async def memory_vector_search(
        self,
        tenant_id: str,
        collections: Sequence[str] | None,
        embedder: str,
        query: bytes,
        dimension: int,
        k: int,
    ) -> list[tuple[int, float]] | None:
        """(row id, cosine similarity), best first, of the `k` rows of `embedder` nearest
        `query` (float32 bytes of `dimension` values) by the database's own vector index
        (pgvector's HNSW); None where there is none: search exactly in memory instead."""
        ...
