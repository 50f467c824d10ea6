"""Workflows: named job types with an input schema, templates, budget and approval policy."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from stalwart.domain.plans import Template

DEFAULT_MAX_REPLANS = 1


class Budget(BaseModel):
    """Limits the engine enforces on one job without any LLM: steps executed and wall time."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_steps: int | None = Field(None, ge=1, description="Most step attempts one job may run.")
    max_wall_seconds: float | None = Field(
        None, gt=0, description="Seconds from submission after which the job is failed."
    )


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

    def template(self, name: str) -> Template | None:
        """The template with this name, or None."""
        for template in self.templates:
            if template.name == name:
                return template
        return None
