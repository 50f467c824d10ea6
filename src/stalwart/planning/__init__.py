"""Planning: templates, the template planner, plan validation."""

from stalwart.planning.planner import TemplatePlanner
from stalwart.planning.templates import load_template, parse_template
from stalwart.planning.validation import (
    PlanLimits,
    plan_problems,
    template_problems,
    validate_plan,
)
from stalwart.planning.workflows import ApprovalPolicy, Budget, Workflow

__all__ = [
    "ApprovalPolicy",
    "Budget",
    "PlanLimits",
    "TemplatePlanner",
    "Workflow",
    "load_template",
    "parse_template",
    "plan_problems",
    "template_problems",
    "validate_plan",
]
