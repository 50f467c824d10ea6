"""The template planner: select a template for a job's input and bind it into a `Plan`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel

from stalwart.domain.conditions import evaluate
from stalwart.domain.plans import Plan, PlanStep, ReviewTrigger, StepSpec, Template
from stalwart.domain.refs import UnresolvedReferenceError, resolve
from stalwart.domain.retry import RetryPolicy
from stalwart.errors import PlanValidationError
from stalwart.planning.costs import CostEstimator
from stalwart.planning.validation import PlanLimits, validate_plan
from stalwart.planning.workflows import Workflow
from stalwart.tools.registry import ToolRegistry


class TemplatePlanner:
    """Select the first template whose `when` holds and that was not already tried; bind the
    job's input into it; validate the result. Deterministic: the same input gives the same plan.
    """

    def __init__(
        self,
        tools: ToolRegistry,
        limits: PlanLimits | None = None,
        *,
        schemas: Mapping[str, type[BaseModel]] | None = None,
        tiers: frozenset[str] | None = None,
        costs: CostEstimator | None = None,
    ) -> None:
        self.tools = tools
        self.limits = limits or PlanLimits()
        self.schemas: Mapping[str, type[BaseModel]] = schemas or {}
        self.tiers = tiers
        # Set: every bound plan records its estimated cost and is fitted into the job's budget.
        self.costs = costs

    def plan(
        self,
        workflow: Workflow,
        job_input: dict[str, Any],
        *,
        version: int = 1,
        tried_hashes: frozenset[str] = frozenset(),
        feedback: dict[str, Any] | None = None,
        past: dict[str, Any] | None = None,
    ) -> Plan:
        """A validated plan for `job_input`.

        On a replan, pass the hashes of the plans already tried: the planner prefers a template
        whose plan is new, and returns a repeated plan only when nothing else matches (the
        engine then escalates instead of looping). `past` is what episodic memory knows of
        similar jobs (`domain.memory.past_context`), for `when` conditions on `past.*`.
        Raises `PlanValidationError`.
        """
        context: dict[str, Any] = {"input": job_input, "past": past or {}}
        candidates = [t for t in workflow.templates if evaluate(t.when, context)]
        if not candidates:
            names = ", ".join(t.name for t in workflow.templates)
            raise PlanValidationError(
                [
                    {
                        "step": "",
                        "problem": f"no template of workflow {workflow.name!r} matches the "
                        f"input (templates: {names}); check their 'when' conditions",
                    }
                ]
            )
        notes: dict[str, Any] = {"feedback": feedback} if feedback else {}
        if past and past.get("similar"):
            notes["past"] = past
        first: Plan | None = None
        for template in candidates:
            plan = self.bind(workflow, template, job_input, version=version, notes=notes)
            if plan.plan_hash() not in tried_hashes:
                return plan
            first = first or plan
        assert first is not None
        return first

    def bind(
        self,
        workflow: Workflow,
        template: Template,
        job_input: dict[str, Any],
        *,
        version: int = 1,
        notes: dict[str, Any] | None = None,
    ) -> Plan:
        """Bind `input.*` references and fill defaults from the tools; then validate. With a
        cost estimator, record the estimate and fit the plan into `workflow.budget.max_usd`
        (dropping non-critical steps, or raising `PlanValidationError`)."""
        problems: list[dict[str, str]] = []
        steps = [self._bind_step(workflow, s, job_input, problems) for s in template.steps]
        steps = self._with_review_triggers(workflow, steps)
        plan = Plan(
            version=version,
            template_name=template.name,
            template_hash=template.template_hash(),
            steps=steps,
            notes=notes or {},
        )
        try:
            validate_plan(
                plan,
                self.tools,
                allowed_tools=workflow.allowed_tools,
                limits=self.limits,
                schemas=self.schemas,
                tiers=self.tiers,
            )
        except PlanValidationError as exc:
            problems.extend(exc.problems)
        if problems:
            raise PlanValidationError(problems)
        if self.costs is not None:
            max_usd = workflow.budget.max_usd
            plan = self.costs.annotate(plan) if max_usd is None else self.costs.fit(plan, max_usd)
        return plan

    def _bind_step(
        self,
        workflow: Workflow,
        step: StepSpec,
        job_input: dict[str, Any],
        problems: list[dict[str, str]],
    ) -> PlanStep:
        try:
            args = resolve(step.args, {"input": job_input}, roots=("input",))
        except UnresolvedReferenceError as exc:
            problems.append(
                {"step": step.id, "problem": f"{exc.message}: the input has no {exc.path!r}"}
            )
            args = step.args
        llm = step.llm
        if llm is not None:
            try:
                llm = llm.model_copy(
                    update={
                        "prompt": resolve(llm.prompt, {"input": job_input}, roots=("input",)),
                        "system": resolve(llm.system, {"input": job_input}, roots=("input",)),
                    }
                )
            except UnresolvedReferenceError as exc:
                problems.append(
                    {"step": step.id, "problem": f"{exc.message}: the input has no {exc.path!r}"}
                )
        agent = step.agent
        if agent is not None:
            try:
                agent = agent.model_copy(
                    update={
                        "prompt": resolve(agent.prompt, {"input": job_input}, roots=("input",)),
                        "instructions": resolve(
                            agent.instructions, {"input": job_input}, roots=("input",)
                        ),
                    }
                )
            except UnresolvedReferenceError as exc:
                problems.append(
                    {"step": step.id, "problem": f"{exc.message}: the input has no {exc.path!r}"}
                )
        spec = self.tools.get(step.tool) if step.tool else None
        timeout = step.timeout_seconds or (spec.timeout_seconds if spec else None)
        retry = step.retry or (spec.retry if spec else None) or RetryPolicy()
        requires: Any = step.requires_approval
        if step.kind == "human" or (
            spec is not None and spec.risk in workflow.approval.risk_levels
        ):
            requires = True
        return PlanStep(
            id=step.id,
            kind=step.kind,
            tool=step.tool,
            description=step.description,
            args=args,
            depends_on=step.dependencies(),
            timeout_seconds=timeout,
            # Tools and models fail transiently (timeouts, outages): both retry durably.
            retry=retry if step.kind in ("tool", "llm", "agent") else RetryPolicy(max_attempts=1),
            requires_approval=requires,
            review=step.review,
            critical=step.critical,
            success=step.success,
            # An agent step resumes from its transcript: its calls carry their own contracts.
            idempotent=spec.idempotent if spec else True,
            has_reconcile=spec.reconcile is not None if spec else False,
            llm=llm,
            agent=agent,
            checks=step.checks,
            judge=step.judge,
            on_budget=workflow.budget.on_exceeded,
            cost_usd=step.cost_usd
            if step.cost_usd is not None
            else (spec.cost_usd if spec else None),
        )

    def output_model(self, step: PlanStep) -> type[BaseModel] | None:
        """The pydantic model of a step's output, when known (a tool's result, an llm or agent
        step's schema)."""
        if step.llm is not None and step.llm.output:
            return self.schemas.get(step.llm.output)
        if step.agent is not None and step.agent.output:
            return self.schemas.get(step.agent.output)
        spec = self.tools.get(step.tool) if step.tool else None
        return spec.result_model if spec else None

    def _with_review_triggers(self, workflow: Workflow, steps: list[PlanStep]) -> list[PlanStep]:
        """Gate the steps that consume an output with a low `confidence` or a `risk_flags`
        entry: they wait for a reviewer before they run."""
        triggers: dict[str, list[ReviewTrigger]] = {}
        for step in steps:
            model = self.output_model(step)
            fields = model.model_fields if model is not None else {}
            found = []
            if "confidence" in fields and workflow.review_confidence is not None:
                threshold = workflow.review_confidence
                found.append(
                    ReviewTrigger(
                        when={f"steps.{step.id}.output.confidence": {"lt": threshold}},
                        reason=f"the confidence of step {step.id} is below {threshold:g}",
                    )
                )
            if "risk_flags" in fields:
                found.append(
                    ReviewTrigger(
                        when={f"steps.{step.id}.output.risk_flags": {"ne": []}},
                        reason=f"step {step.id} raised risk flags",
                    )
                )
            if found:
                triggers[step.id] = found
        if not triggers:
            return steps
        ancestors = _ancestors(steps)
        out = []
        for step in steps:
            gates = []
            for dep in step.depends_on:
                # One review per uncertain output: a consumer after another consumer of the
                # same output was already reviewed through it.
                earlier = [
                    other.id
                    for other in steps
                    if dep in other.depends_on and other.id in ancestors[step.id]
                ]
                if not earlier:
                    gates += triggers.get(dep, [])
            out.append(step.model_copy(update={"review_if": gates}) if gates else step)
        return out


def _ancestors(steps: list[PlanStep]) -> dict[str, set[str]]:
    """Every step each step waits for, directly or not."""
    direct = {s.id: set(s.depends_on) for s in steps}
    found: dict[str, set[str]] = {}

    def visit(step_id: str, path: frozenset[str]) -> set[str]:
        if step_id in found:
            return found[step_id]
        out: set[str] = set()
        for dep in direct.get(step_id, set()):
            if dep not in path:  # cycles are reported by validation
                out |= {dep} | visit(dep, path | {dep})
        found[step_id] = out
        return out

    for s in steps:
        visit(s.id, frozenset({s.id}))
    return found
