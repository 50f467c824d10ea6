"""Workflows: named job types with an input schema, templates, budget and approval policy."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from stalwart.domain.plans import BudgetFallback, Template
from stalwart.domain.webhooks import Webhook

DEFAULT_MAX_REPLANS = 1


class Budget(BaseModel):
    """Limits on one job: steps executed and wall time (enforced by the engine), tokens and USD
    spent on model calls (enforced by the LLM gateway before each call), and what happens when
    a call is refused (`on_exceeded`): try the next cheaper tier, complete with a partial result
    (skip the step when it is not critical), escalate to a human, or fail the job."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_steps: int | None = Field(None, ge=1, description="Most step attempts one job may run.")
    max_wall_seconds: float | None = Field(
        None, gt=0, description="Seconds from submission after which the job is failed."
    )
    max_usd: float | None = Field(None, ge=0, description="Most USD its model calls may cost.")
    max_tokens: int | None = Field(None, ge=1, description="Most tokens its model calls may use.")
    on_exceeded: BudgetFallback = "cheaper_tier"


class ApprovalPolicy(BaseModel):
    """When steps need a human, how long the human has, and what a rejection does."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    risk_levels: tuple[Literal["low", "medium", "high"], ...] = ("high",)
    sla_seconds: float | None = Field(None, gt=0, description="Defaults to review_sla_seconds.")
    on_reject: Literal["fail", "replan"] = "fail"


@dataclass(frozen=True, slots=True)
class Workflow:
    """A registered workflow. Made by `app.workflow(...)`."""

    name: str
    input_model: type[BaseModel]
    templates: tuple[Template, ...]
    budget: Budget = field(default_factory=Budget)
    max_replans: int = DEFAULT_MAX_REPLANS
    approval: ApprovalPolicy = field(default_factory=ApprovalPolicy)
    allowed_tools: frozenset[str] | None = None
    description: str = ""
    # "llm": a model writes the first plan (in a worker); "template" selects a template.
    planner: Literal["template", "llm"] = "template"
    # After a failure, let a model write the next plan (free-form, bounded by max_replans).
    llm_replan: bool = False
    # Steps that consume an output whose `confidence` is below this wait for a reviewer.
    review_confidence: float | None = None
    # How `POST /v1/webhooks/{name}` accepts events (signature, event id, input mapping).
    webhook: Webhook | None = None

    def template(self, name: str) -> Template | None:
        """The template with this name, or None."""
        for template in self.templates:
            if template.name == name:
                return template
        return None
