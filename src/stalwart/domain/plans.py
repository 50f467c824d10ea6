"""Plan templates and plans: pure data.

A `Template` is a reviewed DAG of `StepSpec`s, written in YAML or Python. The template planner
selects one and binds it to a job's input, which makes an immutable `Plan`: one version per
(re)plan, with a hash of its normalized steps so a repeated plan is recognised.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from stalwart.domain.conditions import Condition
from stalwart.domain.refs import find_refs, ref_step
from stalwart.domain.retry import RetryPolicy
from stalwart.types import JSON, canonical_hash

StepKind = Literal["tool", "human", "llm"]
STEP_ID_PATTERN = r"^[A-Za-z_][A-Za-z0-9_\-]*$"


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

    def dependencies(self) -> list[str]:
        """Declared dependencies plus every step the arguments or the conditions reference, in
        order, once (a condition on `steps.x.output` needs x's output)."""
        deps = list(self.depends_on)
        paths = find_refs(self.args)
        if isinstance(self.requires_approval, dict):
            paths += list(self.requires_approval)
        paths += list(self.success or {})
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

    def dependents(self) -> dict[str, list[str]]:
        """For each step id, the ids of steps that depend on it."""
        out: dict[str, list[str]] = {s.id: [] for s in self.steps}
        for step in self.steps:
            for dep in step.depends_on:
                out.setdefault(dep, []).append(step.id)
        return out
