"""`Client`: submit, get, list, cancel, approve, reject and redrive, over the store.

The CLI, the HTTP API and the web UI are thin shells over this class: they reach storage only
through it.
"""

from __future__ import annotations

import builtins
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import BaseModel, ValidationError

from stalwart.domain import storable
from stalwart.domain.access import (
    CreatedKey,
    KeyRecord,
    Principal,
    Role,
    matches,
    new_key,
    parse_token,
)
from stalwart.domain.agents import Transcript
from stalwart.domain.budgets import BudgetRecord, LlmCallRecord
from stalwart.domain.limits import LimitRecord
from stalwart.domain.memory import job_query, past_context, uses_past
from stalwart.domain.records import (
    Dashboard,
    DeadLetterRecord,
    EventRecord,
    JobRecord,
    ReviewRecord,
    StepRecord,
)
from stalwart.domain.states import JOB_TERMINAL, job_statuses
from stalwart.errors import (
    AuthenticationError,
    ConfigurationError,
    InputValidationError,
    NotRedrivableError,
    PayloadTooLargeError,
    StalwartError,
    UnknownWorkflowError,
    UsageError,
)
from stalwart.observability import tracing
from stalwart.settings import Settings
from stalwart.store import NewJob, Store
from stalwart.store.base import MigrationStatus, PlanRecord, WorkerRecord
from stalwart.tools.invoke import validation_details
from stalwart.types import new_id

if TYPE_CHECKING:
    from stalwart.client_memory import MemoryApi
    from stalwart.engine.recall import Recall
    from stalwart.planning.planner import TemplatePlanner
    from stalwart.planning.workflows import Workflow
    from stalwart.tools.registry import ToolRegistry

log = logging.getLogger("stalwart.client")

MAX_KEY_LENGTH = 255
# A key's `last_used` is written at most this often per process, not on every request.
TOUCH_EVERY_SECONDS = 60.0


@dataclass(slots=True)
class Submitted:
    """A submitted job, and whether this call created it (False: a duplicate in the window)."""

    job: JobRecord
    created: bool


class ClientApp(Protocol):
    """What a `Client` needs of an `App` (`stalwart.app.App` is one): its settings, workflows
    and tools, its planner and its memory search. A protocol, so that this module never imports
    `stalwart.app` (the app imports this one to make clients: `App.client()`)."""

    @property
    def settings(self) -> Settings: ...

    @property
    def workflows(self) -> Mapping[str, Workflow]: ...

    @property
    def tools(self) -> ToolRegistry: ...

    def planner(self) -> TemplatePlanner:
        """The planner of the app's workflows."""
        ...

    def recall(self, store: Store | None = None) -> Recall:
        """The app's memory search over `store`."""
        ...

    async def load_mcp_async(self) -> None:
        """List the tools of the app's MCP servers not listed yet (off the event loop)."""
        ...


class Client:
    """Submit and manage jobs. Submitting needs the `App` (schemas and templates); reading and
    deciding need only the store."""

    def __init__(
        self, store: Store, *, app: ClientApp | None = None, settings: Settings | None = None
    ) -> None:
        self.store = store
        self.app = app
        self.settings = settings or (app.settings if app else Settings())
        self._touched: dict[str, float] = {}
        self._memory: MemoryApi | None = None

    async def _past(
        self, flow: Workflow, tenant_id: str, job_input: dict[str, Any]
    ) -> dict[str, Any] | None:
        """What episodic memory knows of jobs like this one, when a template's `when` asks
        (`past.*`); None otherwise, or when memory fails (planning never waits on it)."""
        if not uses_past([t.when for t in flow.templates]):
            return None
        try:
            found = await self.memory.episodes(
                tenant_id, job_query(flow.name, job_input), workflow=flow.name
            )
        except StalwartError as exc:
            log.warning("no past episodes for planning: %s", exc.message)
            return None
        return past_context(found.hits)

    @property
    def memory(self) -> MemoryApi:
        """Knowledge collections, episodes and recall (`stalwart.client_memory.MemoryApi`)."""
        if self._memory is None:
            from stalwart.client_memory import MemoryApi
            from stalwart.engine.recall import Recall

            if self.app is not None:
                recall = self.app.recall(self.store)
            else:
                from stalwart.llm.embeddings import embedder_from_setting

                recall = Recall(self.store, embedder_from_setting(self.settings.embedder, None))
            self._memory = MemoryApi(self.store, self.settings, recall)
        return self._memory

    # -- ingestion --------------------------------------------------------------------------------

    async def submit(
        self,
        workflow: str,
        input: dict[str, Any] | BaseModel,
        *,
        tenant: str | None = None,
        idempotency_key: str | None = None,
        priority: int = 0,
        actor: str = "client",
    ) -> Submitted:
        """Validate, plan and store a job in one transaction.

        Raises `UnknownWorkflowError`, `InputValidationError` (naming each bad field),
        `PayloadTooLargeError`, `PlanValidationError` or `QueueFull` (with `retry_after`); in
        every case nothing is stored. A duplicate `idempotency_key` inside the dedup window
        returns the existing job with `created=False`.
        """
        if self.app is None:
            raise ConfigurationError("submitting needs the app: Client(store, app=app)")
        flow = self.app.workflows.get(workflow)
        if flow is None:
            known = ", ".join(sorted(self.app.workflows)) or "none registered"
            raise UnknownWorkflowError(
                f"no workflow named {workflow!r} (known: {known})", workflow=workflow
            )
        tenant_id = tenant or self.settings.default_tenant
        _check_key("tenant", tenant_id)
        if idempotency_key is not None:
            _check_key("idempotency_key", idempotency_key)
        raw = input.model_dump(mode="json") if isinstance(input, BaseModel) else input
        if not isinstance(raw, dict):
            raise InputValidationError(
                f"input of workflow {workflow!r} must be a JSON object, not {type(raw).__name__}",
                field="input",
            )
        size = len(storable.json_text("input", raw).encode())
        if size > self.settings.max_payload_bytes:
            raise PayloadTooLargeError(
                f"input is {size} bytes; the limit is {self.settings.max_payload_bytes} "
                "(max_payload_bytes). Store large documents elsewhere and pass a reference.",
                field="input",
                size=size,
                limit=self.settings.max_payload_bytes,
            )
        try:
            model = flow.input_model.model_validate(raw)
        except ValidationError as exc:
            details = validation_details(exc)
            text = "; ".join(f"input.{d['field']}: {d['message']}" for d in details)
            raise InputValidationError(
                f"input of workflow {workflow!r} is not valid: {text}",
                field=f"input.{details[0]['field']}" if details else "input",
                errors=details,
            ) from None
        job_input = model.model_dump(mode="json")
        # The model may make what the caller did not send (a float field turns "NaN" into nan).
        storable.json_text("input", job_input)
        # The job's trace: every span of it, in any process, is under this root context.
        traceparent = tracing.new_trace_context()
        job_id = new_id("job")
        # A workflow planned by a model waits in `planning` for a worker: no model call is made
        # while the submitter waits, and a duplicate submission costs nothing.
        plan = None
        if flow.planner != "llm":
            past = await self._past(flow, tenant_id, job_input)
            attributes = tracing.job_attributes(tenant_id, job_id, workflow, **{"plan.version": 1})
            await self.app.load_mcp_async()  # MCP tools are listed off the event loop
            with tracing.span(f"plan {workflow}", traceparent, attributes):
                plan = self.app.planner().plan(flow, job_input, past=past)
        # Every tool the plan may call, an agent step's offered tools too.
        hashes = self.app.tools.schema_hashes(plan.tool_names() if plan else [])
        job = NewJob(
            id=job_id,
            tenant_id=tenant_id,
            workflow=workflow,
            input=job_input,
            priority=priority,
            idempotency_key=idempotency_key,
            dedup_window_seconds=self.settings.dedup_window_seconds,
            max_replans=flow.max_replans,
            on_reject=flow.approval.on_reject,
            max_steps=flow.budget.max_steps,
            max_wall_seconds=flow.budget.max_wall_seconds,
            review_sla_seconds=flow.approval.sla_seconds or self.settings.review_sla_seconds,
            tool_schema_hashes=hashes,
            max_queue_depth=self.settings.max_queue_depth,
            queue_full_retry_after=self.settings.queue_full_retry_after_seconds,
            trace_context=traceparent,
        )
        record, created = await self.store.job_create(job, plan, actor=actor)
        return Submitted(record, created)

    # -- reading ----------------------------------------------------------------------------------

    async def get(self, job_id: str, *, tenant: str | None = None) -> JobRecord:
        """One job."""
        storable.check_id("job_id", job_id)
        return await self.store.job_get(job_id, tenant_id=tenant)

    async def list(
        self,
        *,
        tenant: str | None = None,
        statuses: Sequence[str] = (),
        workflow: str | None = None,
        limit: int = 50,
        before: str | None = None,
    ) -> builtins.list[JobRecord]:
        """Jobs, newest first. An unknown status is a `UsageError` listing the statuses."""
        if before is not None:
            storable.check_id("before", before)
        return await self.store.job_list(
            tenant_id=tenant,
            statuses=job_statuses(statuses),
            workflow=workflow,
            limit=limit,
            before=before,
        )

    async def steps(
        self, job_id: str, *, tenant: str | None = None, all_versions: bool = False
    ) -> builtins.list[StepRecord]:
        """A job's steps."""
        storable.check_id("job_id", job_id)
        return await self.store.step_list(job_id, tenant_id=tenant, all_versions=all_versions)

    async def events(
        self, job_id: str, *, tenant: str | None = None, after_id: int = 0, limit: int = 1000
    ) -> builtins.list[EventRecord]:
        """A job's events in order, after `after_id`, at most `limit`."""
        storable.check_id("job_id", job_id)
        return await self.store.event_list(job_id, tenant_id=tenant, after_id=after_id, limit=limit)

    async def transcripts(
        self, job_id: str, *, tenant: str | None = None
    ) -> builtins.list[Transcript]:
        """The transcripts of a job's agent steps (of its current plan), in step order: each
        model turn with its text, usage and cost, and the tool calls it asked for with their
        arguments, status and result or error. Empty for a job without agent steps."""
        storable.check_id("job_id", job_id)
        return await self.store.agent_transcripts(job_id, tenant_id=tenant)

    async def migration_status(self) -> MigrationStatus:
        """Applied and pending schema migrations of the database (readiness)."""
        return await self.store.migration_status()

    async def migrate(self) -> builtins.list[int]:
        """Apply pending schema migrations; the versions applied now. Safe to run from several
        processes at once."""
        return await self.store.migrate()

    async def workers(
        self, *, include_stopped: bool = True, live_seconds: float | None = None
    ) -> builtins.list[WorkerRecord]:
        """Workers, newest first, with the steps each holds; a worker is live while its
        heartbeat is younger than `live_seconds` (default: `settings.lease_seconds`)."""
        live = self.settings.lease_seconds if live_seconds is None else live_seconds
        return await self.store.worker_list(live_seconds=live, include_stopped=include_stopped)

    async def limits(self) -> builtins.list[LimitRecord]:
        """Every limited tool and tenant with its live state: slots in use, tokens left,
        pause, breaker."""
        return await self.store.limit_list()

    async def llm_calls(
        self, job_id: str, *, tenant: str | None = None
    ) -> builtins.list[LlmCallRecord]:
        """A job's model calls (the ledger), oldest first."""
        storable.check_id("job_id", job_id)
        return await self.store.llm_call_list(job_id, tenant_id=tenant)

    async def budgets(self, *, tenant: str | None = None) -> builtins.list[BudgetRecord]:
        """Budget rows (jobs', tenants' days and months): limits, spend, reservations."""
        return await self.store.budget_list(tenant_id=tenant)

    async def plans(self, job_id: str, *, tenant: str | None = None) -> builtins.list[PlanRecord]:
        """A job's plan versions."""
        storable.check_id("job_id", job_id)
        return await self.store.plan_list(job_id, tenant_id=tenant)

    async def reviews(
        self,
        *,
        tenant: str | None = None,
        statuses: Sequence[str] = ("pending", "escalated"),
        limit: int = 50,
    ) -> builtins.list[ReviewRecord]:
        """Reviews waiting for a decision (by default), oldest first."""
        return await self.store.review_list(tenant_id=tenant, statuses=statuses, limit=limit)

    async def review(self, review_id: str, *, tenant: str | None = None) -> ReviewRecord:
        """One review."""
        storable.check_id("review_id", review_id)
        return await self.store.review_get(review_id, tenant_id=tenant)

    async def dead_letters(
        self, *, tenant: str | None = None, statuses: Sequence[str] = ("open",), limit: int = 50
    ) -> builtins.list[DeadLetterRecord]:
        """Dead letters, newest first."""
        return await self.store.dead_letter_list(tenant_id=tenant, statuses=statuses, limit=limit)

    async def dead_letter(self, id: str, *, tenant: str | None = None) -> DeadLetterRecord:
        """One dead letter, by its id or its job's id."""
        storable.check_id("dead_letter_id", id)
        return await self.store.dead_letter_get(id, tenant_id=tenant)

    # -- acting -----------------------------------------------------------------------------------

    async def cancel(
        self, job_id: str, *, tenant: str | None = None, actor: str = "client", reason: str = ""
    ) -> JobRecord:
        """Cancel a job."""
        storable.check_id("job_id", job_id)
        storable.check_text("reason", reason)
        job = await self.store.job_cancel(job_id, tenant_id=tenant, actor=actor, reason=reason)
        _finished(job)
        return job

    async def approve(
        self, review_id: str, *, reviewer: str, comment: str = "", tenant: str | None = None
    ) -> ReviewRecord:
        """Approve a review: its step becomes ready."""
        _check_key("reviewer", reviewer)
        return await self._decide(review_id, True, reviewer, comment, tenant)

    async def reject(
        self, review_id: str, *, reviewer: str, comment: str = "", tenant: str | None = None
    ) -> ReviewRecord:
        """Reject a review: the step is rejected and the job fails or replans, per policy."""
        _check_key("reviewer", reviewer)
        return await self._decide(review_id, False, reviewer, comment, tenant)

    async def _decide(
        self, review_id: str, approve: bool, reviewer: str, comment: str, tenant: str | None
    ) -> ReviewRecord:
        """Decide a review in a `review {decision}` span of the job's trace."""
        storable.check_id("review_id", review_id)
        storable.check_text("comment", comment)
        review = await self.store.review_get(review_id, tenant_id=tenant)
        job = await self.store.job_get(review.job_id)
        decision = "approved" if approve else "rejected"
        attributes = tracing.job_attributes(
            job.tenant_id,
            job.id,
            job.workflow,
            step=review.step_key,
            **{"review.id": review_id, "review.decision": decision, "review.reviewer": reviewer},
        )
        with tracing.span(f"review {decision}", job.trace_context, attributes):
            decided = await self.store.review_decide(
                review_id, approve=approve, reviewer=reviewer, comment=comment, tenant_id=tenant
            )
        if not approve:
            _finished(await self.store.job_get(review.job_id))
        return decided

    async def redrive(
        self, job_id: str, *, tenant: str | None = None, actor: str = "client", reason: str = ""
    ) -> JobRecord:
        """Resume a dead-lettered or escalated job from its failed step; completed steps never
        run again. Given a dead letter's id, the letter must be open: a job dead-lettered again
        since that letter was redriven is redriven through its new letter, not the old one."""
        storable.check_id("job_id", job_id)
        storable.check_text("reason", reason)
        if job_id.startswith("dlq_"):
            letter = await self.store.dead_letter_get(job_id, tenant_id=tenant)
            if letter.status != "open":
                raise NotRedrivableError(
                    f"dead letter {letter.id} is {letter.status}; only an open one can be redriven",
                    id=letter.id,
                    status=letter.status,
                )
            job_id = letter.job_id
        return await self.store.job_redrive(job_id, tenant_id=tenant, actor=actor, reason=reason)

    # -- API keys ---------------------------------------------------------------------------------

    async def key_create(
        self, *, tenant: str, role: str, name: str | None = None, actor: str = "client"
    ) -> CreatedKey:
        """Create an API key for `tenant` with `role`; the token in the answer is shown once
        and never stored (only its digest is)."""
        _check_key("tenant", tenant)
        try:
            chosen = Role(role)
        except ValueError:
            raise UsageError(
                f"role {role!r} is not one of {', '.join(r.value for r in Role)}", field="role"
            ) from None
        key_id = new_id("key")
        label = name or f"{chosen.value}-{key_id[-6:]}"
        _check_key("name", label)
        stored, token = new_key(key_id, tenant, label, chosen, now=time.time(), created_by=actor)
        record = await self.store.key_create(stored)
        return CreatedKey(record, token)

    async def keys(
        self, *, tenant: str | None = None, include_revoked: bool = False
    ) -> builtins.list[KeyRecord]:
        """API keys (never their secrets), oldest first."""
        return await self.store.key_list(tenant_id=tenant, include_revoked=include_revoked)

    async def key_revoke(
        self, key: str, *, tenant: str | None = None, actor: str = "client"
    ) -> KeyRecord:
        """Revoke a key by its id or name; it stops working on the next request."""
        return await self.store.key_revoke(key, tenant_id=tenant, actor=actor)

    async def key(self, key_id: str) -> KeyRecord | None:
        """A key by its id, revoked or not (never its digest); None when there is none."""
        found = await self.store.key_get(key_id)
        return found[0] if found else None

    async def secret(self, name: str) -> str:
        """The secret `name`, shared by every process of this database (created on first
        use): e.g. the key that signs web UI sessions."""
        return await self.store.secret_get(name)

    async def authenticate(self, token: str) -> Principal:
        """The caller a token belongs to; `AuthenticationError` for a missing, malformed,
        unknown or revoked key (one message for all, so the answer reveals nothing)."""
        parsed = parse_token(token) if token else None
        found = await self.store.key_get(parsed[0]) if parsed else None
        if parsed is None or found is None or not matches(found[1], *parsed) or found[0].revoked:
            raise AuthenticationError(
                "a valid API key is required: send `Authorization: Bearer <key>` (create one "
                "with `stalwart keys create`)",
                field="authorization",
            )
        record = found[0]
        now = time.monotonic()
        if now - self._touched.get(record.id, -TOUCH_EVERY_SECONDS) >= TOUCH_EVERY_SECONDS:
            self._touched[record.id] = now
            await self.store.key_touch(record.id)
        return Principal(record.id, record.tenant_id, record.role, record.name)

    async def dashboard(self, *, tenant: str | None = None) -> Dashboard:
        """Jobs by status, success rate, p95 latency, queue, approvals, dead letters, cost."""
        return await self.store.dashboard(tenant_id=tenant)


def _finished(job: JobRecord) -> None:
    """Emit a job's root span if it has just finished here."""
    if job.status in JOB_TERMINAL:
        tracing.emit_job_span(
            traceparent=job.trace_context,
            tenant=job.tenant_id,
            job_id=job.id,
            workflow=job.workflow,
            status=job.status,
            created=job.created,
            finished=job.finished,
            error=job.error,
        )


def _check_key(field: str, value: str) -> None:
    if not value or not value.strip():
        raise UsageError(f"{field} must not be empty", field=field)
    if len(value) > MAX_KEY_LENGTH:
        raise UsageError(f"{field} is longer than {MAX_KEY_LENGTH} characters", field=field)
    storable.check_key(field, value)
