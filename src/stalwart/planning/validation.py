"""Plan validation: every plan is checked before any of its steps runs.

`plan_problems` returns every problem, each with its step id; `validate_plan` raises
`PlanValidationError` listing them all.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, TypeAdapter, ValidationError

from stalwart.domain.conditions import condition_problems, parse_expression
from stalwart.domain.plans import Plan, PlanStep
from stalwart.domain.refs import find_refs
from stalwart.errors import PlanValidationError
from stalwart.llm.routing import Router
from stalwart.tools.registry import ToolRegistry

log = logging.getLogger("stalwart.planning")


@dataclass(frozen=True, slots=True)
class PlanLimits:
    """The bounds a plan must stay within (from settings)."""

    max_steps: int = 100
    max_attempts: int = 20
    max_retry_cap_seconds: float = 3600.0


def _problem(step: str | None, text: str) -> dict[str, str]:
    return {"step": step or "", "problem": text}


def plan_problems(
    plan: Plan,
    tools: ToolRegistry,
    *,
    allowed_tools: frozenset[str] | None = None,
    limits: PlanLimits | None = None,
    schemas: Mapping[str, type[BaseModel]] | None = None,
    tiers: frozenset[str] | None = None,
) -> list[dict[str, str]]:
    """Every problem of `plan`, each with its step id (empty for plan-wide problems).

    `schemas` are the output schemas llm steps may name; `tiers` the tiers that have a model
    (None: not checked here)."""
    limits = limits or PlanLimits()
    problems: list[dict[str, str]] = []
    if not plan.steps:
        problems.append(_problem(None, "the plan has no steps"))
    if len(plan.steps) > limits.max_steps:
        problems.append(
            _problem(None, f"the plan has {len(plan.steps)} steps; the cap is {limits.max_steps}")
        )
    ids = [s.id for s in plan.steps]
    seen: set[str] = set()
    for step_id in ids:
        if step_id in seen:
            problems.append(_problem(step_id, "step id is used more than once"))
        seen.add(step_id)
    for step in plan.steps:
        problems.extend(_step_problems(step, seen, tools, allowed_tools, limits))
        problems.extend(_llm_problems(step, seen, schemas or {}, tiers))
        problems.extend(_check_problems(step, tiers))
    problems.extend(_cycle_problems(plan))
    return problems


def validate_plan(
    plan: Plan,
    tools: ToolRegistry,
    *,
    allowed_tools: frozenset[str] | None = None,
    limits: PlanLimits | None = None,
    schemas: Mapping[str, type[BaseModel]] | None = None,
    tiers: frozenset[str] | None = None,
) -> None:
    """Raise `PlanValidationError` listing every problem of `plan`; return if it is valid."""
    problems = plan_problems(
        plan, tools, allowed_tools=allowed_tools, limits=limits, schemas=schemas, tiers=tiers
    )
    if problems:
        raise PlanValidationError(problems)


def _step_problems(
    step: PlanStep,
    ids: set[str],
    tools: ToolRegistry,
    allowed: frozenset[str] | None,
    limits: PlanLimits,
) -> list[dict[str, str]]:
    out: list[dict[str, str]] = []
    sid = step.id
    if step.kind == "llm":
        if step.tool:
            out.append(_problem(sid, "an llm step does not call a tool; remove 'tool'"))
    elif step.kind == "human":
        if step.tool:
            out.append(_problem(sid, "a human step does not call a tool; remove 'tool'"))
    else:
        out.extend(_tool_problems(step, tools, allowed))
    for dep in step.depends_on:
        if dep == sid:
            out.append(_problem(sid, "the step depends on itself"))
        elif dep not in ids:
            out.append(_problem(sid, f"depends_on names unknown step {dep!r}"))
    for path in find_refs(step.args):
        out.extend(_ref_problems(sid, path, ids))
    # An unknown tool is one problem, not two: its missing timeout follows from it.
    if step.kind == "tool" and step.timeout_seconds is None and step.tool in tools:
        out.append(
            _problem(sid, "no timeout: set timeout_seconds on the step or timeout= on the tool")
        )
    if step.retry.max_attempts > limits.max_attempts:
        out.append(
            _problem(
                sid,
                f"retry.max_attempts is {step.retry.max_attempts}; retries must be bounded "
                f"(at most {limits.max_attempts})",
            )
        )
    if step.retry.cap_seconds > limits.max_retry_cap_seconds:
        out.append(
            _problem(
                sid,
                f"retry.cap_seconds is {step.retry.cap_seconds:g}; at most "
                f"{limits.max_retry_cap_seconds:g}",
            )
        )
    for name, condition in (
        ("requires_approval", step.requires_approval),
        ("success", step.success),
    ):
        if isinstance(condition, dict):
            out.extend(_problem(sid, f"{name}: {p}") for p in condition_problems(condition))
    return out


def _llm_problems(
    step: PlanStep,
    ids: set[str],
    schemas: Mapping[str, type[BaseModel]],
    tiers: frozenset[str] | None,
) -> list[dict[str, str]]:
    llm, sid = step.llm, step.id
    if llm is None:
        return [_problem(sid, "an llm step needs a prompt")] if step.kind == "llm" else []
    out: list[dict[str, str]] = []
    if llm.output is not None and llm.output not in schemas:
        known = ", ".join(sorted(schemas)) or "none registered"
        out.append(
            _problem(
                sid,
                f"output schema {llm.output!r} is not registered (known: {known}); "
                "register it with app.schema(Model)",
            )
        )
    if llm.cacheable and llm.temperature != 0:
        out.append(
            _problem(sid, "cacheable answers need temperature 0 (a sampled answer is not reusable)")
        )
    tier = Router.tier_for(llm.purpose, llm.tier)
    if tiers is not None and not llm.consensus_models and tier not in tiers:
        out.append(
            _problem(
                sid,
                f"no model is routed for tier {tier!r}: set STALWART_LLM_TIERS or app.route()",
            )
        )
    models, votes = llm.consensus_models, llm.consensus
    if models is not None and votes is not None and len(models) < votes:
        out.append(
            _problem(
                sid, f"consensus of {votes} needs as many consensus_models (got {len(models)})"
            )
        )
    for path in find_refs(llm.prompt) + find_refs(llm.system):
        out.extend(_ref_problems(sid, path, ids))
    return out


def _check_problems(step: PlanStep, tiers: frozenset[str] | None) -> list[dict[str, str]]:
    out: list[dict[str, str]] = []
    for check in step.checks:
        if isinstance(check.expect, str):
            try:
                parse_expression(check.expect)
            except ValueError as exc:
                out.append(_problem(step.id, f"checks: {exc}"))
        else:
            out.extend(_problem(step.id, f"checks: {p}") for p in condition_problems(check.expect))
    if step.judge is not None and tiers is not None and step.judge.tier not in tiers:
        out.append(_problem(step.id, f"judge: no model is routed for tier {step.judge.tier!r}"))
    return out


def _ref_problems(sid: str, path: str, ids: set[str]) -> list[dict[str, str]]:
    parts = path.split(".")
    if parts[0] == "input":
        return [_problem(sid, f"reference ${{{path}}} was not bound: the input has no such field")]
    if parts[0] != "steps":
        return [
            _problem(sid, f"reference ${{{path}}}: references start with input. or steps.<id>.")
        ]
    if len(parts) < 3 or parts[2] != "output":
        return [_problem(sid, f"reference ${{{path}}}: write steps.<id>.output[.field]")]
    if parts[1] not in ids:
        return [_problem(sid, f"reference ${{{path}}} names unknown step {parts[1]!r}")]
    if parts[1] == sid:
        return [_problem(sid, f"reference ${{{path}}} refers to the step's own output")]
    return []


def _tool_problems(
    step: PlanStep, tools: ToolRegistry, allowed: frozenset[str] | None
) -> list[dict[str, str]]:
    sid = step.id
    if not step.tool:
        return [_problem(sid, "a tool step must name its tool")]
    spec = tools.get(step.tool)
    if spec is None:
        known = ", ".join(tools.names()) or "none registered"
        return [_problem(sid, f"unknown tool {step.tool!r} (known: {known})")]
    out: list[dict[str, str]] = []
    if allowed is not None and step.tool not in allowed:
        out.append(_problem(sid, f"tool {step.tool!r} is not allowed in this workflow"))
    fields = spec.args_model.model_fields
    for name in step.args:
        if name not in fields:
            out.append(
                _problem(
                    sid,
                    f"unknown argument {name!r} for tool {step.tool!r} "
                    f"(accepts: {', '.join(fields) or 'nothing'})",
                )
            )
    for name, info in fields.items():
        if info.is_required() and name not in step.args:
            out.append(_problem(sid, f"missing required argument {name!r} for tool {step.tool!r}"))
    for name, value in step.args.items():
        if name in fields and not find_refs(value):
            out.extend(_static_arg_problems(sid, step.tool, name, fields[name].annotation, value))
    return out


def _static_arg_problems(
    sid: str, tool: str, name: str, annotation: Any, value: Any
) -> list[dict[str, str]]:
    try:
        TypeAdapter(annotation).validate_python(value)
    except ValidationError as exc:
        messages = "; ".join(e["msg"] for e in exc.errors(include_url=False, include_input=False))
        return [_problem(sid, f"argument {name!r} of tool {tool!r} is not valid: {messages}")]
    except Exception:
        # An annotation TypeAdapter cannot build, or a validator that raised something other
        # than a validation error: left to run time, but said (it may be a bug in the tool).
        log.warning(
            "argument %r of tool %r could not be checked before run time (step %s)",
            name,
            tool,
            sid,
            exc_info=True,
            extra={"action": "plan_arg_unchecked", "tool": tool, "step": sid},
        )
        return []
    return []


def _cycle_problems(plan: Plan) -> list[dict[str, str]]:
    graph = {s.id: [d for d in s.depends_on if d != s.id] for s in plan.steps}
    state: dict[str, int] = {}
    cycles: list[dict[str, str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in graph.get(node, []):
            if dep not in graph:
                continue
            if state.get(dep) == 1:
                loop = [*path[path.index(dep) :], dep] if dep in path else [node, dep]
                cycles.append(_problem(dep, "dependency cycle: " + " -> ".join(loop)))
            elif dep not in state:
                visit(dep, [*path, dep])
        state[node] = 2

    for node in graph:
        if node not in state:
            visit(node, [node])
    return cycles
