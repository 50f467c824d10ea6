"""Plan templates and plans: pure data.

A `Template` is a reviewed DAG of `StepSpec`s, written in YAML or Python. The template planner
selects one and binds it to a job's input, which makes an immutable `Plan`: one version per
(re)plan, with a hash of its normalized steps so a repeated plan is recognised.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from stalwart.domain.agents import AGENT_FIELDS, AgentSpec
from stalwart.domain.conditions import Condition
from stalwart.domain.refs import find_refs, ref_step
from stalwart.domain.retry import RetryPolicy
from stalwart.types import JSON, canonical_hash

StepKind = Literal["tool", "human", "llm", "agent"]
STEP_ID_PATTERN = r"^[A-Za-z_][A-Za-z0-9_\-]*$"
Severity = Literal["soft", "hard", "critical"]
BudgetFallback = Literal["cheaper_tier", "partial", "escalate", "fail"]
LLM_FIELDS = frozenset(
    {
        "prompt",
        "system",
        "output",
        "purpose",
        "tier",
        "max_tokens",
        "temperature",
        "cacheable",
        "max_reasks",
        "consensus",
        "consensus_models",
        "context",
        "context_window",
    }
)


class LlmSpec(BaseModel):
    """What an `llm` step asks and how. Written flat on the step in templates:

    ```yaml
    - id: extract
      kind: llm
      purpose: extraction          # picks the default tier (small)
      prompt: "Extract the fields of this invoice: ${steps.fetch.output.text}"
      output: InvoiceExtraction    # a pydantic model registered with app.schema()
      max_tokens: 400
      temperature: 0
      cacheable: true
    ```
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt: str = Field(min_length=1)
    system: str = ""
    output: str | None = Field(None, description="Name of a schema registered with app.schema.")
    purpose: str = "reasoning"
    tier: Literal["small", "medium", "large"] | None = None
    max_tokens: int = Field(1024, ge=1, le=200_000)
    temperature: float = Field(0.0, ge=0, le=2)
    cacheable: bool = False
    max_reasks: int | None = Field(None, ge=0, le=10)
    consensus: int | None = Field(None, ge=2, le=9)
    consensus_models: list[str] | None = None
    # What the model sees besides the prompt: the job input and the outputs of the steps this
    # one depends on ("dependencies"), or nothing ("none").
    context: Literal["dependencies", "none"] = "dependencies"
    context_window: int | None = Field(None, ge=256)


def gather_model_fields(data: Any) -> Any:
    """Move an llm step's flat fields into `llm`, an agent step's into `agent`."""
    if not isinstance(data, dict):
        return data
    agent = data.get("kind") == "agent"
    names = (AGENT_FIELDS if agent else LLM_FIELDS) & data.keys()
    if not names:
        return data
    data = dict(data)
    home = "agent" if agent else "llm"
    nested = dict(data.get(home) or {})
    for name in names:
        nested[name] = data.pop(name)
    data[home] = nested
    return data


def check_model_fields(
    kind: str, llm: LlmSpec | None, agent: AgentSpec | None, tool: str | None
) -> None:
    """An llm step has a prompt, an agent step a prompt and tools, and no other kind has
    either."""
    if kind == "llm" and llm is None:
        raise ValueError("an llm step needs a prompt")
    if kind != "llm" and llm is not None:
        raise ValueError(f"prompt, output and tier belong to llm steps, not {kind} steps")
    if kind == "agent" and agent is None:
        raise ValueError("an agent step needs a prompt and tools (the tools it may call)")
    if kind != "agent" and agent is not None:
        raise ValueError(f"tools and max_turns belong to agent steps, not {kind} steps")
    if kind == "agent" and tool:
        raise ValueError(
            "an agent step names the tools it may call in `tools`, not `tool`; "
            f"write tools: [{tool}]"
        )


class TextAnswer(BaseModel):
    """What an llm step without an output schema records."""

    text: str


class SignOff(BaseModel):
    """What an approved human step records."""

    approved: bool
    reviewer: str | None
    comment: str | None


class Check(BaseModel):
    """One success criterion of a step's output, and what failing it means: `soft` warns and
    continues, `hard` replans with the failure as context, `critical` halts and escalates.
    `expect` is an expression (`"confidence >= 0.85"`, `"missing_fields == []"`; paths are
    relative to the output) or a condition mapping."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    expect: str | Condition
    on_fail: Severity = "hard"
    message: str = ""


class Judge(BaseModel):
    """An LLM judge on a cheap tier: asked `question` about the output, it answers pass/fail
    with a reason."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    question: str = Field(min_length=1)
    tier: Literal["small", "medium", "large"] = "small"
    on_fail: Severity = "hard"
    max_tokens: int = Field(300, ge=16)


class ReviewTrigger(BaseModel):
    """Send this step to the review queue before it runs when `when` holds (it looks at an
    earlier step's output: a low confidence, a risk flag)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    when: Condition
    reason: str


class ReviewOption(BaseModel):
    """One choice a reviewer has, with what it will do."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    impact: str = ""


class ReviewSpec(BaseModel):
    """What the review queue shows a human for a step: why, what is asked, the options."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    reason: str = ""
    asked: str = ""
    options: list[ReviewOption] = Field(
        default_factory=lambda: [
            ReviewOption(name="approve", impact="the step runs"),
            ReviewOption(name="reject", impact="the step does not run"),
        ]
    )
    sla_seconds: float | None = Field(None, gt=0)


class StepSpec(BaseModel):
    """One node of a plan template.

    `args` may reference `${input.*}` and `${steps.<id>.output.*}`; a referenced step is an
    implicit dependency. `requires_approval` is a bool or a condition evaluated when the step is
    about to run. `critical: false` lets the job complete degraded without this step.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=STEP_ID_PATTERN, max_length=64)
    kind: StepKind = "tool"
    tool: str | None = None
    description: str = ""
    args: dict[str, JSON] = Field(default_factory=dict)
    depends_on: list[str] = Field(default_factory=list)
    timeout_seconds: float | None = Field(None, gt=0)
    retry: RetryPolicy | None = None
    requires_approval: bool | Condition = False
    review: ReviewSpec | None = None
    critical: bool = True
    success: Condition | None = None
    llm: LlmSpec | None = None
    agent: AgentSpec | None = None
    checks: list[Check] = Field(default_factory=list)
    judge: Judge | None = None
    cost_usd: float | None = Field(None, ge=0, description="Estimated cost of a tool step.")

    @model_validator(mode="before")
    @classmethod
    def _gather_llm_fields(cls, data: Any) -> Any:
        """Templates write an llm (or agent) step's fields on the step; they live in `llm` (or
        `agent`)."""
        return gather_model_fields(data)

    @model_validator(mode="after")
    def _llm_matches_kind(self) -> StepSpec:
        check_model_fields(self.kind, self.llm, self.agent, self.tool)
        return self

    def dependencies(self) -> list[str]:
        """Declared dependencies plus every step the arguments, prompts or conditions reference
        (an agent step's `approve` conditions too), in order, once (a condition on
        `steps.x.output` needs x's output)."""
        deps = list(self.depends_on)
        paths = find_refs(self.args)
        if isinstance(self.requires_approval, dict):
            paths += list(self.requires_approval)
        paths += list(self.success or {})
        if self.llm is not None:
            paths += find_refs(self.llm.prompt) + find_refs(self.llm.system)
        if self.agent is not None:
            paths += find_refs(self.agent.prompt) + find_refs(self.agent.instructions)
            # A call waits for a reviewer when its condition holds: read when the call is made.
            paths += [p for c in self.agent.approve.values() if isinstance(c, dict) for p in c]
        for path in paths:
            step = ref_step(path)
            if step is not None and step != self.id and step not in deps:
                deps.append(step)
        return deps


class Template(BaseModel):
    """A reviewed DAG of steps, selected for a job when its `when` condition holds."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=STEP_ID_PATTERN, max_length=100)
    version: str = "1"
    description: str = ""
    when: Condition | None = None
    steps: list[StepSpec] = Field(min_length=1)

    def template_hash(self) -> str:
        """sha256 of the template's canonical JSON: recorded on every job that uses it."""
        return canonical_hash(self.model_dump(mode="json"))


class PlanStep(BaseModel):
    """A step of a bound plan: defaults filled in, `input.*` bound, dependencies explicit."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    kind: StepKind
    tool: str | None
    description: str = ""
    args: dict[str, JSON]
    depends_on: list[str]
    timeout_seconds: float | None
    retry: RetryPolicy
    requires_approval: bool | Condition
    review: ReviewSpec | None
    critical: bool
    success: Condition | None
    idempotent: bool = True
    has_reconcile: bool = False
    llm: LlmSpec | None = None
    agent: AgentSpec | None = None
    checks: list[Check] = Field(default_factory=list)
    judge: Judge | None = None
    review_if: list[ReviewTrigger] = Field(default_factory=list)
    on_budget: BudgetFallback = "fail"
    cost_usd: float | None = None

    def spec_hash(self) -> str:
        """A hash of what this step does; equal hashes across plan versions reuse the output."""
        return canonical_hash(self.model_dump(mode="json"))


class Plan(BaseModel):
    """An immutable, validated DAG bound to one job. A replan makes a new version."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: int = 1
    template_name: str
    template_hash: str
    steps: list[PlanStep]
    notes: dict[str, Any] = Field(default_factory=dict)

    def plan_hash(self) -> str:
        """Hash of the normalized steps (sorted by id), independent of version and notes."""
        steps = sorted((s.model_dump(mode="json") for s in self.steps), key=lambda s: s["id"])
        return canonical_hash(steps)

    def step(self, step_id: str) -> PlanStep:
        """The step with this id."""
        for step in self.steps:
            if step.id == step_id:
                return step
        raise KeyError(step_id)

    def tool_names(self) -> list[str]:
        """Every tool the plan may call, in order, once: each step's `tool` and every tool an
        agent step is offered (its model picks among them at run time)."""
        names: dict[str, None] = {}
        for step in self.steps:
            if step.tool:
                names[step.tool] = None
            if step.agent is not None:
                names.update(dict.fromkeys(step.agent.tools))
        return list(names)

    def dependents(self) -> dict[str, list[str]]:
        """For each step id, the ids of steps that depend on it."""
        out: dict[str, list[str]] = {s.id: [] for s in self.steps}
        for step in self.steps:
            for dep in step.depends_on:
                out.setdefault(dep, []).append(step.id)
        return out
