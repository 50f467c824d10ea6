"""The template planner: select a template for a job's input and bind it into a `Plan`."""

from __future__ import annotations

from typing import Any

from stalwart.domain.conditions import evaluate
from stalwart.domain.plans import Plan, PlanStep, StepSpec, Template
from stalwart.domain.refs import UnresolvedReferenceError, resolve
from stalwart.domain.retry import RetryPolicy
from stalwart.errors import PlanValidationError
from stalwart.planning.validation import PlanLimits, validate_plan
from stalwart.planning.workflows import Workflow
from stalwart.tools.registry import ToolRegistry


class TemplatePlanner:
    """Select the first template whose `when` holds and that was not already tried; bind the
    job's input into it; validate the result. Deterministic: the same input gives the same plan.
    """

    def __init__(self, tools: ToolRegistry, limits: PlanLimits | None = None) -> None:
        self.tools = tools
        self.limits = limits or PlanLimits()

    def plan(
        self,
        workflow: Workflow,
        job_input: dict[str, Any],
        *,
        version: int = 1,
        tried_hashes: frozenset[str] = frozenset(),
        feedback: dict[str, Any] | None = None,
    ) -> Plan:
        """A validated plan for `job_input`.

        On a replan, pass the hashes of the plans already tried: the planner prefers a template
        whose plan is new, and returns a repeated plan only when nothing else matches (the
        engine then escalates instead of looping). Raises `PlanValidationError`.
        """
        context = {"input": job_input}
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
        notes = {"feedback": feedback} if feedback else {}
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
        """Bind `input.*` references and fill defaults from the tools; then validate."""
        problems: list[dict[str, str]] = []
        steps = [self._bind_step(workflow, s, job_input, problems) for s in template.steps]
        plan = Plan(
            version=version,
            template_name=template.name,
            template_hash=template.template_hash(),
            steps=steps,
            notes=notes or {},
        )
        try:
            validate_plan(
                plan, self.tools, allowed_tools=workflow.allowed_tools, limits=self.limits
            )
        except PlanValidationError as exc:
            problems.extend(exc.problems)
        if problems:
            raise PlanValidationError(problems)
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
            retry=retry if step.kind == "tool" else RetryPolicy(max_attempts=1),
            requires_approval=requires,
            review=step.review,
            critical=step.critical,
            success=step.success,
            idempotent=spec.idempotent if spec else True,
            has_reconcile=spec.reconcile is not None if spec else False,
        )
