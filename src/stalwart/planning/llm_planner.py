"""The LLM planner: a model writes the plan, in structured output, and it is validated exactly
like a template plan.

The model sees the workflow, the job's input, the tools it may use (with their schemas, risk
and cost), the output schemas registered and the budget; on a replan it also sees what failed
and the plans already tried. It answers a `PlanDraft` of tool steps and agent steps (a model
offered some of the tools, for work whose calls depend on what earlier calls return). The
draft becomes a `Template` that the `TemplatePlanner` binds and validates; every problem goes
back to the model, a bounded number of times, and then the plan is rejected with
`PlanValidationError`. Every ask goes through the gateway, so it is budgeted and recorded in
the ledger.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError

from stalwart.domain.budgets import CallScope
from stalwart.domain.plans import STEP_ID_PATTERN, Plan, PlanStep, StepSpec, Template
from stalwart.errors import PlanValidationError
from stalwart.llm.gateway import Gateway, LlmCall
from stalwart.llm.types import Message
from stalwart.planning.planner import TemplatePlanner
from stalwart.planning.workflows import Workflow
from stalwart.tools.registry import ToolSpec

Problems = list[dict[str, str]]

# The parts of `ToolSpec.describe()` the model is shown.
TOOL_FIELDS = ("name", "description", "args_schema", "result_schema", "risk", "cost_usd")


# The fields of a draft step that only an agent step has.
AGENT_DRAFT_FIELDS = ("prompt", "tools", "output", "max_turns")


class DraftStep(BaseModel):
    """One step as the model writes it: a tool step, or an agent step."""

    id: str = Field(description=f"Unique step id matching {STEP_ID_PATTERN}.")
    kind: Literal["tool", "agent"] = Field(
        "tool",
        description="tool: call one tool with the given args. agent: a model calls the listed "
        "tools itself, turn by turn, until it answers; for work whose calls depend on what "
        "earlier calls return.",
    )
    tool: str | None = Field(None, description="Tool steps: name of one of the allowed tools.")
    description: str = Field("", description="What the step is for, in one sentence.")
    args: dict[str, Any] = Field(
        default_factory=dict,
        description="Tool steps: the tool's arguments; values may reference ${input.<field>} "
        "and ${steps.<id>.output.<field>}.",
    )
    depends_on: list[str] = Field(
        default_factory=list, description="Ids of steps that must finish first."
    )
    critical: bool = Field(True, description="False when the job may complete without this step.")
    prompt: str | None = Field(
        None,
        description="Agent steps: the task, in words; may reference ${input.<field>} and "
        "${steps.<id>.output.<field>}.",
    )
    tools: list[str] | None = Field(
        None, description="Agent steps: the allowed tools it may call, each once."
    )
    output: str | None = Field(
        None,
        description="Agent steps: name of an output schema for its answer; without one it "
        'answers {"text": ...}.',
    )
    max_turns: int | None = Field(
        None, description="Agent steps: the most model turns (default 8); each one costs a call."
    )


class PlanDraft(BaseModel):
    """The model's answer: the plan's steps and why."""

    steps: list[DraftStep]
    rationale: str = Field("", description="Why this plan, in a few sentences.")


class LlmPlanner:
    """Ask a model for a plan and validate it like a template plan (see the module doc)."""

    def __init__(
        self,
        gateway: Gateway,
        templates: TemplatePlanner,
        *,
        max_reasks: int = 2,
        max_tokens: int = 2000,
    ) -> None:
        if max_reasks < 0:
            raise ValueError("max_reasks must be 0 or more")
        self.gateway = gateway
        self.templates = templates
        self.max_reasks = max_reasks
        self.max_tokens = max_tokens

    async def plan(
        self,
        workflow: Workflow,
        job_input: dict[str, Any],
        *,
        scope: CallScope,
        version: int = 1,
        tried: Sequence[Plan] = (),
        feedback: dict[str, Any] | None = None,
        tier: str | None = None,
        past: Sequence[str] = (),
    ) -> Plan:
        """A validated plan for `job_input`, written by the model.

        On a replan pass the failure context (`feedback`) and the plans already tried; the
        model is asked for a different plan. Raises `PlanValidationError` when the model's plan
        is still invalid after `max_reasks` re-asks, and whatever the gateway raises
        (`BudgetExceeded`, `ProviderError`, `InvalidOutputError`). `past` holds the summaries of
        the most similar past jobs (episodic memory), shown to the model as experience.
        """
        messages = [
            Message("system", self._system_prompt()),
            Message("user", self._request(workflow, job_input, tried, feedback, past)),
        ]
        notes: dict[str, Any] = {"planner": "llm"}
        if feedback:
            notes["feedback"] = feedback
        problems: Problems = []
        for _ in range(self.max_reasks + 1):
            draft = await self._ask(messages, scope, tier)
            try:
                return self._bind(workflow, job_input, draft, version, notes)
            except PlanValidationError as exc:
                problems = exc.problems
            messages += [
                Message("assistant", draft.model_dump_json()),
                Message("user", _problems_message(problems)),
            ]
        raise PlanValidationError(
            problems,
            message=f"the model's plan was rejected after {self.max_reasks + 1} asks: "
            + "; ".join(f"{p['step'] or '<plan>'}: {p['problem']}" for p in problems),
        )

    async def _ask(
        self, messages: Sequence[Message], scope: CallScope, tier: str | None
    ) -> PlanDraft:
        result = await self.gateway.call(
            LlmCall(
                messages=list(messages),
                purpose="planning",
                tier=tier,
                output=PlanDraft,
                max_tokens=self.max_tokens,
                temperature=0.0,
            ),
            scope,
        )
        if isinstance(result.output, PlanDraft):
            return result.output
        return PlanDraft.model_validate(result.data)

    def _bind(
        self,
        workflow: Workflow,
        job_input: dict[str, Any],
        draft: PlanDraft,
        version: int,
        notes: dict[str, Any],
    ) -> Plan:
        """The draft as a bound, validated plan; raises `PlanValidationError`."""
        template = draft_template(draft, version)
        return self.templates.bind(
            workflow,
            template,
            job_input,
            version=version,
            notes={**notes, "rationale": draft.rationale},
        )

    # -- the prompt ---------------------------------------------------------------------------

    def _system_prompt(self) -> str:
        return "\n".join(
            [
                "You plan the work of one job for a workflow engine. A plan is a DAG of tool "
                "steps and agent steps. Rules:",
                "- Answer only with a JSON object that matches the PlanDraft schema: no prose, "
                "no code fences.",
                f"- Step ids are unique and match {STEP_ID_PATTERN}.",
                "- Use only the allowed tools, with arguments that match their args schema.",
                "- An argument may reference the job input as ${input.<field>} and an earlier "
                "step's result as ${steps.<id>.output.<field>} (fields of the tool's result "
                "schema). A whole-string reference keeps the value's type.",
                "- A step that references another step depends on it; list other ordering "
                "needs in depends_on. No cycles.",
                "- A tool step (kind: tool) calls its tool once with its args. An agent step "
                "(kind: agent) has no tool and no args: its prompt says the task, tools lists "
                "the allowed tools its model may call (at least one, each once), output names an "
                'output schema for its answer (without one it answers {"text": ...}), and '
                "max_turns bounds its model turns. Its output is referenced like any step's: "
                "${steps.<id>.output.<field>} (fields of its output schema).",
                "- Use an agent step only when the calls depend on what earlier calls return; "
                "it costs up to max_turns model calls, so keep max_turns small.",
                f"- At most {self.templates.limits.max_steps} steps.",
                "- Mark a step critical: false only when the job can succeed without it.",
                "- Keep within the budget: prefer fewer and cheaper steps.",
            ]
        )

    def _request(
        self,
        workflow: Workflow,
        job_input: dict[str, Any],
        tried: Sequence[Plan],
        feedback: dict[str, Any] | None,
        past: Sequence[str] = (),
    ) -> str:
        parts = [
            f"Workflow: {workflow.name}",
            f"Description: {workflow.description or '(none)'}",
            f"Job input (JSON): {_json(job_input)}",
            f"Allowed tools (JSON): {_json([_tool_view(t) for t in self._tools(workflow)])}",
        ]
        schemas = self.templates.schemas
        if schemas:
            views = {name: model.model_json_schema() for name, model in sorted(schemas.items())}
            parts.append(f"Output schemas an agent step may name (JSON): {_json(views)}")
        parts.append(f"Budget: {_budget_text(workflow)}")
        if past:
            parts.append(
                "Similar past jobs, most similar first (learn from how they ended):\n"
                + "\n".join(f"- {text}" for text in past)
            )
        if feedback or tried:
            parts.append(_replan_text(tried, feedback))
        parts.append("Write the plan.")
        return "\n\n".join(parts)

    def _tools(self, workflow: Workflow) -> list[ToolSpec]:
        registry = self.templates.tools
        names = registry.names()
        if workflow.allowed_tools is not None:
            names = [n for n in names if n in workflow.allowed_tools]
        return [spec for n in names if (spec := registry.get(n)) is not None]


def draft_template(draft: PlanDraft, version: int) -> Template:
    """The draft as a template named `llm-v<version>`; raises `PlanValidationError` listing every
    step the template cannot hold (a bad id, a bad argument value)."""
    problems: Problems = []
    steps: list[StepSpec] = []
    for index, step in enumerate(draft.steps):
        where = step.id or f"#{index + 1}"
        data: dict[str, Any] = {
            "id": step.id,
            "kind": step.kind,
            "tool": step.tool,
            "description": step.description,
            "args": step.args,
            "depends_on": step.depends_on,
            "critical": step.critical,
        }
        given = [name for name in AGENT_DRAFT_FIELDS if getattr(step, name) is not None]
        if step.kind == "agent":
            # Written flat, as in a template: the step gathers them into its `agent`.
            data.update({name: getattr(step, name) for name in given})
        elif given:
            problems.append(
                {
                    "step": where,
                    "problem": f"{', '.join(given)} belong to agent steps: set kind: agent "
                    "(and list the tools it may call in tools), or remove them",
                }
            )
            continue
        try:
            steps.append(StepSpec.model_validate(data))
        except ValidationError as exc:
            problems.extend(_validation_problems(where, exc))
    if not draft.steps:
        problems.append({"step": "", "problem": "the plan has no steps"})
    if problems:
        raise PlanValidationError(problems)
    return Template(name=f"llm-v{version}", steps=steps)


def _validation_problems(step_id: str, exc: ValidationError) -> Problems:
    out = []
    for error in exc.errors(include_url=False, include_input=False):
        where = ".".join(str(part) for part in error["loc"])
        out.append({"step": step_id, "problem": f"{where}: {error['msg']}"})
    return out


def _problems_message(problems: Problems) -> str:
    lines = [
        f"- step {p['step']!r}: {p['problem']}" if p["step"] else f"- plan: {p['problem']}"
        for p in problems
    ]
    return (
        "Your plan was rejected. Problems:\n"
        + "\n".join(lines)
        + "\nFix every problem and answer again with only the corrected JSON plan."
    )


def _tool_view(spec: ToolSpec) -> dict[str, Any]:
    described = spec.describe()
    return {field: described[field] for field in TOOL_FIELDS}


def _budget_text(workflow: Workflow) -> str:
    budget = workflow.budget
    limits = []
    if budget.max_usd is not None:
        limits.append(f"at most ${budget.max_usd:g} for the whole job")
    if budget.max_tokens is not None:
        limits.append(f"at most {budget.max_tokens} model tokens")
    return "; ".join(limits) if limits else "no limit set; do not waste money"


def _replan_text(tried: Sequence[Plan], feedback: dict[str, Any] | None) -> str:
    parts = ["This is a replan: an earlier plan failed."]
    if feedback:
        parts.append(f"What failed (JSON): {_json(feedback)}")
    for plan in tried:
        steps = [_tried_view(s) for s in plan.steps]
        parts.append(f"Plan version {plan.version}, already tried (JSON): {_json(steps)}")
    parts.append("Write a different plan that avoids the failure; do not repeat a tried plan.")
    return "\n".join(parts)


def _tried_view(step: PlanStep) -> dict[str, Any]:
    """A step of a tried plan as the model is shown it."""
    view: dict[str, Any] = {"id": step.id, "kind": step.kind}
    if step.agent is not None:
        view.update(prompt=step.agent.prompt, tools=step.agent.tools)
    else:
        view.update(tool=step.tool, args=step.args)
    view["depends_on"] = step.depends_on
    return view


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)


__all__ = ["DraftStep", "LlmPlanner", "PlanDraft", "draft_template"]
