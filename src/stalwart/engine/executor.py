"""The executor: drives one claimed step through its attempt and records the outcome.

It resolves the step's references, checks the tool still matches the schemas the job was
planned with, runs the tool (or its reconcile function) under its timeout, checks the output
against size and success criteria, and hands the store either the output or a classified error
with the decision `domain.failures.decide` made for it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

from opentelemetry.trace import Span
from pydantic import BaseModel

from stalwart.domain.arguments import reference_context
from stalwart.domain.budgets import CallScope
from stalwart.domain.conditions import evaluate
from stalwart.domain.failures import Decision, Outcome, decide
from stalwart.domain.memory import job_query, past_context, uses_past
from stalwart.domain.plans import Check, Judge, Plan, SignOff
from stalwart.domain.records import Claim, JobRecord, StepError
from stalwart.domain.refs import UnresolvedReferenceError, resolve
from stalwart.domain.retry import RetryPolicy
from stalwart.domain.states import JOB_TERMINAL
from stalwart.engine.agent_steps import ESCALATING_CODES, AgentStepRunner
from stalwart.engine.evaluator import Evaluator
from stalwart.engine.llm_steps import LlmStepRunner
from stalwart.engine.tool_spans import traced_invoke
from stalwart.errors import (
    BudgetExceeded,
    ConfigurationError,
    CorruptStateError,
    EffectFailedError,
    ErrorClass,
    PlanValidationError,
    StalwartError,
    StoreUnavailableError,
    ToolError,
)
from stalwart.llm.gateway import Gateway
from stalwart.observability import tracing
from stalwart.observability.logs import bind
from stalwart.planning.llm_planner import LlmPlanner
from stalwart.planning.planner import TemplatePlanner
from stalwart.planning.workflows import Workflow
from stalwart.settings import Settings
from stalwart.store.base import ReplanClaim, Store
from stalwart.tools.context import MemorySearch, ToolContext
from stalwart.tools.invoke import ToolOutcome
from stalwart.tools.registry import ToolRegistry, ToolSpec
from stalwart.types import dumps

T = TypeVar("T")
log = logging.getLogger("stalwart.engine")


class Executor:
    """Runs claimed steps and replans jobs, through the store, one step at a time."""

    def __init__(
        self,
        *,
        store: Store,
        tools: ToolRegistry,
        workflows: Mapping[str, Workflow],
        planner: TemplatePlanner,
        settings: Settings,
        gateway: Gateway | None = None,
        schemas: Mapping[str, type[BaseModel]] | None = None,
        memory: MemorySearch | None = None,
    ) -> None:
        self.store = store
        self.memory = memory
        self.tools = tools
        self.workflows = workflows
        self.planner = planner
        self.settings = settings
        self.gateway = gateway
        self.llm = LlmStepRunner(gateway, schemas or {}, workflows, settings) if gateway else None
        self.agents = (
            AgentStepRunner(self.llm, store, tools, schemas or {}, workflows, settings, memory)
            if self.llm is not None
            else None
        )
        self.evaluator = Evaluator(gateway)
        self.llm_planner = (
            LlmPlanner(gateway, planner, max_reasks=settings.llm_max_reasks) if gateway else None
        )

    def context_for(self, claim: Claim) -> ToolContext:
        """The ToolContext for one attempt of a claimed step."""
        timeout = float(claim.spec.get("timeout_seconds") or self.settings.lease_seconds)
        ctx = ToolContext(
            tenant_id=claim.tenant_id,
            job_id=claim.job_id,
            step_id=claim.key,
            attempt=claim.attempt,
            idempotency_key=claim.idempotency_key,
            deadline=time.time() + timeout,
            workflow=claim.workflow,
            memory=self.memory,
        )
        if claim.cancel_requested:
            ctx.cancel()
        return ctx

    async def run(
        self, claim: Claim, ctx: ToolContext, *, worker_id: str, claim_next: bool = True
    ) -> Claim | None:
        """Execute one attempt and record it; return the job's next step if the completion
        claimed one for this worker. The attempt is one span, `step {key}`, in the job's
        trace."""
        attributes = tracing.job_attributes(
            claim.tenant_id,
            claim.job_id,
            claim.workflow,
            step=claim.key,
            attempt=claim.attempt,
            **{"step.kind": claim.kind, "idempotency_key": claim.idempotency_key},
        )
        with (
            bind(tenant=claim.tenant_id, job=claim.job_id, step=claim.key, attempt=claim.attempt),
            tracing.span(f"step {claim.key}", claim.trace_context, attributes) as current,
        ):
            try:
                next_claim, job_finished = await self._run(
                    claim, ctx, worker_id, claim_next, current
                )
            except CorruptStateError as exc:
                # State this step needed (another step's output, read as the job finished)
                # failed to decode: that job alone is quarantined; the worker goes on.
                await self._quarantine(claim.job_id, exc, worker_id)
                return None
        if job_finished is not None:
            self._job_finished(claim, job_finished)
        return next_claim

    async def _run(
        self, claim: Claim, ctx: ToolContext, worker_id: str, claim_next: bool, current: Span
    ) -> tuple[Claim | None, JobRecord | str | None]:
        """The attempt and its record: the next claim, and the job (or its status) when this
        attempt finished it."""
        started = time.perf_counter()
        outcome = await self.attempt(claim, ctx, worker_id=worker_id)
        if outcome.parked:
            # An agent step waits for a reviewer mid-loop: the park is recorded, the slot free.
            return None, None
        if outcome.error is None:
            output = outcome.output
            try:
                completion = await self._while_leased(
                    claim,
                    lambda: self.store.step_complete(
                        claim,
                        output,
                        worker_id=worker_id,
                        claim_next=claim_next,
                        lease_seconds=self.settings.lease_seconds,
                        effects=ctx.effects,
                        warnings=outcome.warnings,
                    ),
                )
            except EffectFailedError as exc:
                # The user's own write failed: record the attempt as failed, effects unapplied.
                outcome = ToolOutcome(
                    error=StepError(ErrorClass.NON_RETRIABLE, exc.message, "effect_failed")
                )
                return None, await self._fail(claim, ctx, outcome, worker_id, started)
            if not completion.recorded:
                tracing.fail(current, "lease_lost", "the lease was lost; result discarded")
                log.warning(
                    "lease lost; result discarded",
                    extra={"action": "step_lease_lost", "job": claim.job_id, "step": claim.key},
                )
            ended = completion.job_status if completion.job_status in JOB_TERMINAL else None
            return completion.next_claim, ended
        finished = await self._fail(claim, ctx, outcome, worker_id, started)
        assert outcome.error is not None
        tracing.fail(current, outcome.error.error_class, outcome.error.message)
        return None, finished

    @staticmethod
    def _job_finished(claim: Claim, job: JobRecord | str) -> None:
        """Emit the finished job's root span (this process saw it finish): from the job read
        after a failure, or from the claim and the completion's status (no read)."""
        if isinstance(job, JobRecord):
            status, created, error = job.status, job.created, job.error
        else:
            status, created, error = job, claim.job_created or time.time(), None
        tracing.emit_job_span(
            traceparent=claim.trace_context,
            tenant=claim.tenant_id,
            job_id=claim.job_id,
            workflow=claim.workflow,
            status=status,
            created=created,
            finished=None,
            error=error,
        )

    async def _fail(
        self, claim: Claim, ctx: ToolContext, outcome: ToolOutcome, worker_id: str, started: float
    ) -> JobRecord | None:
        """Record the failed attempt and apply its decision; the job when that ended it."""
        error = outcome.error
        assert error is not None
        if ctx.cancelled and error.error_class != ErrorClass.CANCELLED:
            error = StepError(ErrorClass.CANCELLED, f"job cancelled ({error.message})", "cancelled")
        decision = self.decide(claim, error)
        recorded = await self._while_leased(
            claim, lambda: self.store.step_fail(claim, error, decision, worker_id=worker_id)
        )
        log.info(
            "step failed: %s -> %s",
            error.message,
            decision.outcome,
            extra={
                "action": "step_failed",
                "job": claim.job_id,
                "step": claim.key,
                "attempt": claim.attempt,
                "error_class": error.error_class,
                "outcome": decision.outcome.value,
                "recorded": recorded,
                "seconds": round(time.perf_counter() - started, 4),
            },
        )
        if recorded and decision.outcome is Outcome.REPLAN:
            await self.replan_waiting(worker_id)
        if recorded and decision.outcome in (Outcome.FAIL_JOB, Outcome.SKIP):
            job = await self.store.job_get(claim.job_id)
            return job if job.status in JOB_TERMINAL else None
        return None

    async def _while_leased(self, claim: Claim, write: Callable[[], Awaitable[T]]) -> T:
        """Record an attempt's outcome, trying again while the database is unreachable (a
        restart, a failover) and the lease may still be ours. The write is fenced by the lease
        token, so a try that did commit before the connection dropped makes the next one a
        harmless no-op."""
        delay = 0.1
        give_up = time.monotonic() + self.settings.lease_seconds
        while True:
            try:
                return await write()
            except StoreUnavailableError as exc:
                # Past a lease's length of trying, the lease is surely gone (heartbeats need the
                # database too): another worker will run the step again.
                if time.monotonic() + delay >= give_up:
                    raise
                log.warning(
                    "database unavailable while recording step %s; retrying in %.1fs: %s",
                    claim.key,
                    delay,
                    exc,
                    extra={"action": "store_unavailable", "job": claim.job_id, "step": claim.key},
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    def decide(self, claim: Claim, error: StepError) -> Decision:
        """What follows this failure (domain.failures.decide with the step's policy). An agent
        loop that stopped for a person (a refused call, a repeated call, out of turns or calls)
        escalates whatever the step's criticality."""
        if claim.kind == "agent" and error.code in ESCALATING_CODES:
            return Decision(Outcome.ESCALATE, f"{error.code}: a person must look at the loop")
        policy = RetryPolicy.model_validate(claim.spec.get("retry") or {})
        return decide(
            error,
            attempt=claim.attempt,
            policy=policy,
            critical=bool(claim.spec.get("critical", True)),
            replans=claim.plan_version - 1,  # every replan makes the next plan version
            max_replans=claim.max_replans,
            on_budget=str(claim.spec.get("on_budget") or "fail"),
        )

    async def attempt(
        self, claim: Claim, ctx: ToolContext, *, worker_id: str = "worker"
    ) -> ToolOutcome:
        """Run the step's work and return its output or its classified error (or, for an
        agent step that parked mid-loop for a reviewer, an outcome marked `parked`)."""
        if ctx.cancelled:
            return ToolOutcome(error=StepError(ErrorClass.CANCELLED, "job cancelled", "cancelled"))
        if claim.kind == "human":
            review = claim.review or {}
            signed = SignOff(
                approved=True, reviewer=review.get("reviewer"), comment=review.get("comment")
            )
            return ToolOutcome(output=signed.model_dump())
        context = reference_context(claim.job_input, claim.outputs)
        if claim.kind == "llm":
            if self.llm is None:
                return _critical(
                    f"step {claim.key} is an llm step but this worker has no LLM gateway "
                    "(route a model with app.route() or STALWART_LLM_TIERS)",
                    code="llm_not_configured",
                )
            outcome = await _bounded(claim, self.llm.run(claim, context))
            return await self._checked(claim, outcome, context)
        if claim.kind == "agent":
            if self.agents is None:
                return _critical(
                    f"step {claim.key} is an agent step but this worker has no LLM gateway "
                    "(route a model with app.route() or STALWART_LLM_TIERS)",
                    code="llm_not_configured",
                )
            # A call cut off by the step's timeout is found running by the next attempt and
            # follows the tool-step rules.
            outcome = await _bounded(
                claim, self.agents.run(claim, ctx, context, worker_id=worker_id)
            )
            if outcome.parked:
                return outcome
            return await self._checked(claim, outcome, context)
        if claim.kind != "tool" or not claim.tool:
            return _critical(f"step kind {claim.kind!r} cannot run in this worker")
        spec = self.tools.get(claim.tool)
        if spec is None:
            return _critical(f"tool {claim.tool!r} is not registered in this worker")
        if claim.tool_schema_hash and claim.tool_schema_hash != spec.schema_hash:
            return _critical(
                f"tool {claim.tool!r} changed since this job was planned (schema hash "
                f"{claim.tool_schema_hash[:12]} became {spec.schema_hash[:12]}); failing closed",
                code="schema_changed",
            )
        try:
            # The arguments the claim resolved and stored are the ones the tool gets.
            args = claim.args
            if args is None:
                args = resolve(claim.spec.get("args") or {}, context)
        except UnresolvedReferenceError as exc:
            return ToolOutcome(
                error=StepError(ErrorClass.INVALID_ARGUMENTS, exc.message, "unresolved_reference")
            )
        timeout = max(0.001, ctx.deadline - time.time())
        if claim.reconcile_pending and spec.reconcile is not None:
            found = await self._tool(claim, spec, args, ctx, timeout, reconcile=True)
            if found.error is not None or found.output is not None:
                return await self._checked(claim, found, context)
            # Nothing found: the call itself gets its whole timeout, not what reconcile left.
            ctx.deadline = time.time() + timeout
        outcome = await self._tool(claim, spec, args, ctx, timeout)
        return await self._checked(claim, outcome, context)

    async def _tool(
        self,
        claim: Claim,
        spec: ToolSpec,
        args: Any,
        ctx: ToolContext,
        seconds: float,
        *,
        reconcile: bool = False,
    ) -> ToolOutcome:
        """Invoke the tool (or its reconcile function) in an `execute_tool {tool}` span."""
        return await traced_invoke(
            spec,
            args,
            ctx,
            call_id=f"{claim.step_id}.{claim.attempt}",
            timeout_seconds=seconds,
            content=self.settings.trace_content,
            reconcile=reconcile,
        )

    async def _checked(
        self, claim: Claim, outcome: ToolOutcome, context: dict[str, Any]
    ) -> ToolOutcome:
        if outcome.error is not None or outcome.output is None:
            return outcome
        size = len(dumps(outcome.output).encode())
        if size > self.settings.max_payload_bytes:
            return ToolOutcome(
                error=StepError(
                    ErrorClass.NON_RETRIABLE,
                    f"output of step {claim.key} is {size} bytes, over max_payload_bytes "
                    f"({self.settings.max_payload_bytes})",
                    "payload_too_large",
                )
            )
        criteria = claim.spec.get("success")
        if criteria and not evaluate(criteria, {**context, "output": outcome.output}):
            return ToolOutcome(
                error=StepError(
                    ErrorClass.SEMANTIC,
                    f"output of step {claim.key} does not meet its success criteria {criteria}",
                    "success_criteria",
                    details={"output": outcome.output},
                )
            )
        checks = [Check.model_validate(c) for c in claim.spec.get("checks") or []]
        judge = Judge.model_validate(claim.spec["judge"]) if claim.spec.get("judge") else None
        if not checks and judge is None:
            return outcome
        verdict = await self.evaluator.evaluate(
            claim.key, outcome.output, context, checks, judge, self._scope_for(claim)
        )
        if verdict.error is not None:
            return ToolOutcome(error=verdict.error)
        outcome.warnings += verdict.warnings
        return outcome

    def _scope_for(self, claim: Claim) -> Callable[[str], CallScope]:
        def scope(purpose: str) -> CallScope:
            assert self.llm is not None
            return self.llm.scope(claim, purpose)

        return scope

    async def replan_waiting(self, worker_id: str, *, limit: int = 5) -> int:
        """Claim jobs in `replanning` and give each a new plan, or escalate it. Returns how many
        jobs were handled."""
        claims = await self.store.job_claim_replanning(
            worker_id, lease_seconds=self.settings.lease_seconds, limit=limit
        )
        for claim in claims:
            try:
                await self._replan(claim, worker_id)
            except CorruptStateError as exc:  # its plans or step specs: this job alone
                await self._quarantine(claim.job.id, exc, worker_id)
        return len(claims)

    async def _quarantine(self, job_id: str, exc: CorruptStateError, worker_id: str) -> None:
        log.error(
            "job %s quarantined: %s",
            job_id,
            exc.message,
            extra={"action": "job_quarantined", "job": job_id},
        )
        await self.store.job_quarantine(job_id, exc, actor=worker_id)

    async def _new_plan(self, workflow: Workflow, claim: ReplanClaim, first: bool) -> Plan:
        """The template planner's plan, or the model's when the workflow plans with one (from
        the start, or after a failure when `llm_replan` is set)."""
        job = claim.job
        version = job.plan_version + 1
        by_model = workflow.planner == "llm" or (workflow.llm_replan and not first)
        if not by_model:
            past = None
            if uses_past([t.when for t in workflow.templates]):
                hits = await self._similar(job.tenant_id, job.id, workflow.name, job.input)
                past = past_context(hits)
            return self.planner.plan(
                workflow,
                job.input,
                version=version,
                tried_hashes=claim.tried_hashes,
                feedback=claim.feedback,
                past=past,
            )
        if self.llm_planner is None or self.llm is None:
            raise PlanValidationError(
                [
                    {
                        "step": "",
                        "problem": f"workflow {workflow.name!r} plans with a model but this "
                        "worker has no LLM gateway (app.route() or STALWART_LLM_TIERS)",
                    }
                ]
            )
        tried = [
            Plan.model_validate(record.plan)
            for record in await self.store.plan_list(job.id, tenant_id=job.tenant_id)
        ]
        scope = self.llm.job_scope(
            job.tenant_id, job.id, workflow.name, "planning", attempt=version
        )
        return await self.llm_planner.plan(
            workflow,
            job.input,
            scope=scope,
            version=version,
            tried=tried,
            feedback=claim.feedback,
            past=[
                str(h.text)
                for h in await self._similar(job.tenant_id, job.id, workflow.name, job.input)
            ],
        )

    async def _similar(
        self, tenant_id: str, job_id: str, workflow: str, job_input: dict[str, Any]
    ) -> list[Any]:
        """The past episodes most like this job, for planning; none when memory is off or
        fails (planning never waits on it)."""
        if self.memory is None:
            return []
        try:
            hits = await self.memory.episodes(
                tenant_id,
                job_query(workflow, job_input),
                workflow=workflow,
                exclude_job=job_id,
            )
        except StalwartError as exc:
            log.warning(
                "no past episodes for planning: %s", exc.message, extra={"action": "memory_failed"}
            )
            return []
        return hits

    async def _replan(self, claim: ReplanClaim, worker_id: str) -> None:
        job = claim.job
        workflow = self.workflows.get(job.workflow)
        if workflow is None:
            why = f"workflow {job.workflow!r} is not registered here"
            await self.store.job_escalate(
                claim, actor=worker_id, reason=why, error=_symptom(why, "workflow_unknown")
            )
            return
        first = job.status == "planning"
        if not first and job.replans >= job.max_replans:
            why = f"no replans left (max_replans={job.max_replans})"
            await self.store.job_escalate(
                claim, actor=worker_id, reason=why, error=_symptom(why, "replans_exhausted")
            )
            return
        doing = "planning" if first else "replanning"
        attributes = tracing.job_attributes(
            job.tenant_id, job.id, job.workflow, **{"plan.version": job.plan_version + 1}
        )
        try:
            with tracing.span(f"plan {job.workflow}", job.trace_context, attributes):
                plan = await self._new_plan(workflow, claim, first)
        except PlanValidationError as exc:
            why = f"{doing} produced an invalid plan: {exc.message}"
            await self.store.job_escalate(
                claim, actor=worker_id, reason=why, error=_symptom(why, "plan_invalid")
            )
            return
        except BudgetExceeded as exc:
            why = f"{doing} was refused by the budget: {exc.message}"
            await self.store.job_escalate(
                claim,
                actor=worker_id,
                reason=why,
                error=StepError(ErrorClass.BUDGET, why, "budget_exceeded"),
            )
            return
        except ConfigurationError as exc:
            why = f"{doing} is not configured: {exc.message}"
            await self.store.job_escalate(
                claim, actor=worker_id, reason=why, error=_symptom(why, "not_configured")
            )
            return
        except ToolError as exc:
            if exc.error_class is ErrorClass.TRANSIENT:
                # The job's planning lease expires and a worker tries again.
                log.warning(
                    "%s job %s failed for now: %s",
                    doing,
                    job.id,
                    exc.message,
                    extra={"action": "plan_deferred", "job": job.id},
                )
                return
            why = f"{doing} failed: {exc.message}"
            await self.store.job_escalate(
                claim,
                actor=worker_id,
                reason=why,
                error=StepError(exc.error_class, why, exc.code or "planning_failed"),
            )
            return
        if plan.plan_hash() in claim.tried_hashes:
            why = (
                f"the planner produced a plan already tried (hash {plan.plan_hash()[:12]}); "
                "escalating instead of looping"
            )
            await self.store.job_escalate(
                claim, actor=worker_id, reason=why, error=_symptom(why, "plan_repeated")
            )
            return
        hashes = self.tools.schema_hashes(plan.tool_names())
        plan = plan.model_copy(update={"notes": {**plan.notes, "tool_schema_hashes": hashes}})
        await self.store.job_replan(claim, plan, actor=worker_id)


async def _bounded(claim: Claim, work: Awaitable[ToolOutcome]) -> ToolOutcome:
    """`work` (a model step's attempt) under the step's `timeout_seconds` when it sets one; past
    it, a transient `timeout` error naming the step's kind and key."""
    raw = claim.spec.get("timeout_seconds")
    seconds = float(raw) if raw else None
    try:
        async with asyncio.timeout(seconds):
            return await work
    except TimeoutError:
        return ToolOutcome(
            error=StepError(
                ErrorClass.TRANSIENT,
                f"{claim.kind} step {claim.key} timed out after {seconds:g}s",
                "timeout",
            )
        )


def _critical(message: str, code: str = "critical") -> ToolOutcome:
    return ToolOutcome(error=StepError(ErrorClass.CRITICAL, message, code))


def _symptom(message: str, code: str) -> StepError:
    """Why a (re)plan could not go on: the job's error when nothing failed before it, else kept
    beside the step error that sent the job to replanning."""
    return StepError(ErrorClass.CRITICAL, message, code)


__all__ = ["Executor", "Outcome"]
