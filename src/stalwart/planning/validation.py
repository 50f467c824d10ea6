"""Plan validation: every plan is checked before any of its steps runs.

`plan_problems` returns every problem, each with its step id; `validate_plan` raises
`PlanValidationError` listing them all. An agent step is checked as a whole before it runs,
although its model chooses its calls later: the tools it is offered (registered, allowed, once
each), the calls that wait for a reviewer (`approve`: one of those tools, a well-formed condition
on paths that exist), its output schema and tier, and the references in its prompt.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, TypeAdapter, ValidationError

from stalwart.domain.agents import AgentSpec
from stalwart.domain.conditions import Condition, condition_problems, parse_expression
from stalwart.domain.plans import Plan, PlanStep, SignOff, StepSpec, Template, TextAnswer
from stalwart.domain.refs import find_refs
from stalwart.errors import PlanValidationError
from stalwart.llm.routing import Router
from stalwart.planning.paths import closest, path_miss
from stalwart.tools.registry import ToolRegistry, ToolSpec

log = logging.getLogger("stalwart.planning")


@dataclass(frozen=True, slots=True)
class PlanLimits:
    """The bounds a plan must stay within (from settings)."""

    max_steps: int = 100
    max_attempts: int = 20
    max_retry_cap_seconds: float = 3600.0


def _problem(step: str | None, text: str) -> dict[str, str]:
    return {"step": step or "", "problem": text}


def _fixable(step: str, field: str, text: str, fix: str) -> dict[str, str]:
    """A problem with the step field at fault (as written in the template) and what to do; the
    fix is in the sentence too, for the reader of a one-line message."""
    return {"step": step, "problem": f"{text}: {fix}", "field": field, "fix": fix}


def _did_you_mean(name: str, known: Iterable[str]) -> str:
    """`; did you mean `x`?` when a known name is close to `name` (difflib), else ""."""
    found = closest(name, known)
    return f"; did you mean `{found}`?" if found else ""


@dataclass(frozen=True, slots=True)
class _Shape:
    """What a step's output (or the job input) is known to be, and how to name it."""

    label: str
    model: type[BaseModel]


def _output_shapes(
    plan: Plan, tools: ToolRegistry, schemas: Mapping[str, type[BaseModel]]
) -> dict[str, _Shape]:
    """The known output model of each step; a step whose output is not known is absent."""
    shapes: dict[str, _Shape] = {}
    for step in plan.steps:
        where = f"the output of step {step.id}"
        if step.kind == "human":
            shapes[step.id] = _Shape(f"{where} (a human step's sign-off)", SignOff)
        elif (asked := step.llm if step.kind == "llm" else step.agent) is not None:
            name = asked.output
            if name is None:
                label = (
                    f"{where} (an {step.kind} step without an output schema answers "
                    '{"text": ...})'
                )
                shapes[step.id] = _Shape(label, TextAnswer)
            elif name in schemas:
                shapes[step.id] = _Shape(f"{where} (schema {name!r})", schemas[name])
        elif (
            step.kind == "tool"
            and step.tool
            and (spec := tools.get(step.tool)) is not None
            # A tool may return an instance of a subclass of its declared model, whose dump
            # has the subclass's fields too: then its output is not known here.
            and not spec.result_model.__subclasses__()
        ):
            label = f"{where} (tool {step.tool!r} returns {spec.result_model.__name__})"
            shapes[step.id] = _Shape(label, spec.result_model)
    return shapes


def _path_problems(
    sid: str, reference: str, shape: _Shape | None, rest: list[str], *, condition: bool = False
) -> list[dict[str, str]]:
    """A problem when `rest` (the path below the output or input) cannot exist in `shape`."""
    if shape is None:
        return []
    miss = path_miss(shape.model, rest)
    if miss is None:
        return []
    what = f"condition on {reference!r}" if condition else f"reference ${{{reference}}}"
    problem = _problem(sid, f"{what}: {miss.describe(shape.label)}")
    problem.update(reference=reference, field=miss.segment)
    best = miss.suggestion()
    if best is not None:
        problem["suggestion"] = best
    return [problem]


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

    `schemas` are the output schemas llm and agent steps may name; `tiers` the tiers that have
    a model (None: not checked here). Every `steps.<id>.output.*` path is checked against the
    output model of step `<id>` when it is known (a tool's result model, an llm or agent step's
    schema, `{"text"}` for one without); a miss also carries `reference`, `field` and, when a
    known field is close, `suggestion`. A problem of an agent step's own fields carries `field`
    (the field as written in the template: `tools`, `approve.<tool>`, `output`) and `fix`."""
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
    shapes = _output_shapes(plan, tools, schemas or {})
    for step in plan.steps:
        problems.extend(_step_problems(step, seen, tools, allowed_tools, limits, shapes))
        problems.extend(_llm_problems(step, seen, schemas or {}, tiers, shapes))
        problems.extend(
            _agent_problems(step, seen, tools, allowed_tools, schemas or {}, tiers, shapes)
        )
        problems.extend(_check_problems(step, tiers))
        problems.extend(_condition_path_problems(step, seen, shapes))
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
    shapes: Mapping[str, _Shape],
) -> list[dict[str, str]]:
    out: list[dict[str, str]] = []
    sid = step.id
    if step.kind == "llm":
        if step.tool:
            out.append(_problem(sid, "an llm step does not call a tool; remove 'tool'"))
    elif step.kind == "human":
        if step.tool:
            out.append(_problem(sid, "a human step does not call a tool; remove 'tool'"))
    elif step.kind == "agent":
        pass  # its tools are checked with the rest of its spec (_agent_problems)
    else:
        out.extend(_tool_problems(step, tools, allowed))
    for dep in step.depends_on:
        if dep == sid:
            out.append(_problem(sid, "the step depends on itself"))
        elif dep not in ids:
            out.append(
                _problem(sid, f"depends_on names unknown step {dep!r}" + _did_you_mean(dep, ids))
            )
    for path in find_refs(step.args):
        out.extend(_ref_problems(sid, path, ids, shapes))
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
    shapes: Mapping[str, _Shape],
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
                "register it with app.schema(Model)" + _did_you_mean(llm.output, schemas),
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
        out.extend(_ref_problems(sid, path, ids, shapes))
    return out


def _agent_problems(
    step: PlanStep,
    ids: set[str],
    tools: ToolRegistry,
    allowed: frozenset[str] | None,
    schemas: Mapping[str, type[BaseModel]],
    tiers: frozenset[str] | None,
    shapes: Mapping[str, _Shape],
) -> list[dict[str, str]]:
    """An agent step's spec: its tools, approvals, output schema, tier and prompt references.

    A tool whose risk the workflow sends to a reviewer is fine here: each call of it waits for
    the reviewer mid-loop, not the whole step before it starts."""
    agent, sid = step.agent, step.id
    if agent is None:
        if step.kind == "agent":
            return [
                _fixable(
                    sid,
                    "prompt",
                    "an agent step needs a prompt and tools",
                    "write prompt: and tools: [...] on the step",
                )
            ]
        return []
    out = _agent_tool_problems(sid, agent, tools, allowed)
    if step.args:
        out.append(
            _fixable(
                sid,
                "args",
                "an agent step takes no args: its model writes the arguments of each call",
                "remove args and say what the model needs in the prompt "
                "(${input.<field>}, ${steps.<id>.output.<field>})",
            )
        )
    for name, approve in agent.approve.items():
        out.extend(_approve_problems(sid, name, approve, agent, tools, ids, shapes))
    if agent.output is not None and agent.output not in schemas:
        known = ", ".join(sorted(schemas)) or "none registered"
        out.append(
            _fixable(
                sid,
                "output",
                f"output schema {agent.output!r} is not registered (known: {known})",
                "register it with app.schema(Model)" + _did_you_mean(agent.output, schemas),
            )
        )
    tier = Router.tier_for(agent.purpose, agent.tier)
    if tiers is not None and tier not in tiers:
        out.append(
            _fixable(
                sid,
                "tier" if agent.tier else "purpose",
                f"no model is routed for tier {tier!r}",
                "set STALWART_LLM_TIERS or app.route(), or choose a routed tier",
            )
        )
    for path in find_refs(agent.prompt) + find_refs(agent.instructions):
        out.extend(_ref_problems(sid, path, ids, shapes))
    return out


def _agent_tool_problems(
    sid: str, agent: AgentSpec, tools: ToolRegistry, allowed: frozenset[str] | None
) -> list[dict[str, str]]:
    """The tools an agent step is offered: at least one, each once, registered and allowed."""
    if not agent.tools:
        return [
            _fixable(sid, "tools", "an agent step offers no tools", "list the tools it may call")
        ]
    out: list[dict[str, str]] = []
    seen: set[str] = set()
    for name in agent.tools:
        if name in seen:
            out.append(
                _fixable(sid, "tools", f"tools lists {name!r} more than once", "list it once")
            )
            continue
        seen.add(name)
        if name not in tools:
            known = ", ".join(tools.names()) or "none registered"
            near = closest(name, tools.names())
            fix = f"write `{near}`" if near else "register it with @app.tool or remove it"
            out.append(
                _fixable(sid, "tools", f"unknown tool {name!r} in tools (known: {known})", fix)
            )
        elif allowed is not None and name not in allowed:
            out.append(
                _fixable(
                    sid,
                    "tools",
                    f"tool {name!r} is not allowed in this workflow",
                    "remove it from tools, or add it to the workflow's allowed_tools",
                )
            )
    return out


def _approve_problems(
    sid: str,
    name: str,
    approve: bool | Condition,
    agent: AgentSpec,
    tools: ToolRegistry,
    ids: set[str],
    shapes: Mapping[str, _Shape],
) -> list[dict[str, str]]:
    """One entry of `approve`: a tool the step is offered, and a condition that can hold. A
    condition on a path that cannot exist would quietly never ask a reviewer."""
    field = f"approve.{name}"
    if name not in agent.tools:
        near = closest(name, agent.tools)
        fix = (
            f"write approve.{near}" if near else f"add {name!r} to tools, or remove approve.{name}"
        )
        offered = ", ".join(agent.tools)
        return [
            _fixable(
                sid,
                field,
                f"approve names {name!r}, which is not one of the tools ({offered})",
                fix,
            )
        ]
    if not isinstance(approve, dict):
        return []
    out = [
        _fixable(sid, field, text, "write {path: value} or {path: {operator: value}}")
        for text in condition_problems(approve)
    ]
    spec = tools.get(name)
    for path in approve:
        out.extend(_approve_path_problems(sid, field, path, spec, ids, shapes))
    return out


def _approve_path_problems(
    sid: str,
    field: str,
    path: str,
    spec: ToolSpec | None,
    ids: set[str],
    shapes: Mapping[str, _Shape],
) -> list[dict[str, str]]:
    """A path of an `approve` condition: the call's arguments (`args.*`, against the tool's
    arguments model), an earlier step's output, or the input (checked by template_problems)."""
    parts = path.split(".")
    what = f"condition on {path!r}"
    shape: _Shape | None = None
    if parts[0] == "args" and len(parts) > 1:
        head = parts[:1]
        if spec is not None:
            shape = _Shape(
                f"the argument schema of tool {spec.name!r} ({spec.args_model.__name__})",
                spec.args_model,
            )
    elif parts[0] == "input":
        return []
    elif parts[0] == "steps" and len(parts) >= 3 and parts[2] == "output":
        head = parts[:3]
        if parts[1] == sid:
            return [
                _fixable(
                    sid,
                    field,
                    f"{what} reads the step's own output, which a call cannot wait for",
                    "read the call's arguments (args.*) or an earlier step's output",
                )
            ]
        if parts[1] not in ids:
            near = closest(parts[1], ids - {sid})
            fix = f"write steps.{near}.output" if near else "name a step of the plan"
            return [_fixable(sid, field, f"{what} names unknown step {parts[1]!r}", fix)]
        shape = shapes.get(parts[1])
    else:
        fix = (
            f"write args.{path} for the call's argument {path!r}"
            if parts[0] not in ("args", "steps")
            else "write args.<argument>, input.<field> or steps.<id>.output.<field>"
        )
        return [
            _fixable(
                sid,
                field,
                f"{what}: a call's condition reads its arguments, the input or an earlier "
                "step's output",
                fix,
            )
        ]
    if shape is None:
        return []
    miss = path_miss(shape.model, parts[len(head) :])
    if miss is None:
        return []
    best = miss.suggestion()
    fix = f"write {'.'.join([*head, *miss.at, best])}" if best else "name a path that exists"
    problem = _fixable(sid, field, f"{what}: {miss.describe(shape.label)}", fix)
    problem["reference"] = path
    if best is not None:
        problem["suggestion"] = best
    return [problem]


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


def template_problems(
    template: Template, input_model: type[BaseModel] | None
) -> list[dict[str, str]]:
    """Every `input.*` path of `template` that cannot exist in the workflow's input model: the
    references in arguments and prompts, and the paths of its conditions (`when`,
    `requires_approval`, `success`, checks, an agent step's `approve`). Found without any
    input, so at registration and by `stalwart plan validate`. Nothing is checked when the
    input model is not known (None, or `BaseModel` itself)."""
    if input_model is None or input_model is BaseModel:
        return []
    shape = _Shape(f"the input ({input_model.__name__})", input_model)
    out: list[dict[str, str]] = []
    seen: set[tuple[str, str]] = set()

    def check(sid: str, path: str, *, condition: bool) -> None:
        parts = path.split(".")
        if parts[0] != "input" or (sid, path) in seen:
            return
        seen.add((sid, path))
        out.extend(_path_problems(sid, path, shape, parts[1:], condition=condition))

    for path in template.when or {}:
        check("", path, condition=True)
    for step in template.steps:
        refs = find_refs(step.args)
        if step.llm is not None:
            refs += find_refs(step.llm.prompt) + find_refs(step.llm.system)
        conditions = _conditions(step)
        if step.agent is not None:
            refs += find_refs(step.agent.prompt) + find_refs(step.agent.instructions)
            conditions += [c for c in step.agent.approve.values() if isinstance(c, dict)]
        for path in refs:
            check(step.id, path, condition=False)
        for condition in conditions:
            for path in condition:
                check(step.id, path, condition=True)
    return out


def _conditions(step: StepSpec | PlanStep) -> list[Condition]:
    """The step's conditions: `requires_approval` (when one), `success`, and its checks."""
    found: list[Condition] = []
    if isinstance(step.requires_approval, dict):
        found.append(step.requires_approval)
    if step.success:
        found.append(step.success)
    for check in step.checks:
        if isinstance(check.expect, dict):
            found.append(check.expect)
        else:
            try:
                found.append(parse_expression(check.expect, prefix="output."))
            except ValueError:
                continue  # reported as a problem of its own
    return found


def _condition_path_problems(
    step: PlanStep, ids: set[str], shapes: Mapping[str, _Shape]
) -> list[dict[str, str]]:
    """Paths of the step's conditions that cannot exist in the known output models: a typo there
    would make a condition quietly never hold (no approval asked, a check never passing)."""
    out: list[dict[str, str]] = []
    # `output.*` is the step's own output in `success` and checks; `requires_approval` is
    # decided before the step runs, so there it reads nothing (and is left alone here).
    for condition in _conditions(step):
        for path in condition:
            parts = path.split(".")
            if parts[0] == "output" and condition is not step.requires_approval:
                shape = shapes.get(step.id)
                out.extend(_path_problems(step.id, path, shape, parts[1:], condition=True))
            elif (
                len(parts) >= 3
                and parts[0] == "steps"
                and parts[2] == "output"
                and parts[1] in ids
                and parts[1] != step.id
            ):
                shape = shapes.get(parts[1])
                out.extend(_path_problems(step.id, path, shape, parts[3:], condition=True))
    return out


def _ref_problems(
    sid: str, path: str, ids: set[str], shapes: Mapping[str, _Shape]
) -> list[dict[str, str]]:
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
        hint = _did_you_mean(parts[1], ids - {sid})
        return [_problem(sid, f"reference ${{{path}}} names unknown step {parts[1]!r}{hint}")]
    if parts[1] == sid:
        return [_problem(sid, f"reference ${{{path}}} refers to the step's own output")]
    return _path_problems(sid, path, shapes.get(parts[1]), parts[3:])


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
                    f"(accepts: {', '.join(fields) or 'nothing'})" + _did_you_mean(name, fields),
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
