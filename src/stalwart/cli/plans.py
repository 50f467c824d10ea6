"""`stalwart plan`: validate templates against the app, show a job's plans."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import BaseModel

from stalwart.cli import output as ui
from stalwart.cli.context import read_input, run_async, state_of, with_client
from stalwart.domain.agents import AgentSpec
from stalwart.errors import PlanValidationError, UsageError

plan_cli = typer.Typer(help="Validate templates and show plans.", no_args_is_help=True)


@plan_cli.command("validate")
def plan_validate(
    ctx: typer.Context,
    files: Annotated[list[Path], typer.Argument(help="Template YAML files.")],
    workflow: Annotated[
        str | None, typer.Option(help="Check against this workflow's allowed tools.")
    ] = None,
    input: Annotated[
        str | None, typer.Option("--input", "-i", help="Bind this input (JSON or @file).")
    ] = None,
) -> None:
    """Validate templates against your app's tools; every problem listed with its step id."""
    from stalwart.planning.templates import load_template
    from stalwart.planning.validation import template_problems
    from stalwart.planning.workflows import Workflow

    state = state_of(ctx)
    data = read_input(input)

    def check() -> list[dict[str, Any]]:
        app = state.app()
        results = []
        for file in files:
            template = load_template(file)
            flow = app.workflows.get(workflow) if workflow else None
            if workflow and flow is None:
                raise UsageError(f"no workflow named {workflow!r}", field="workflow")
            base = flow or Workflow(name="<template>", input_model=BaseModel, templates=(template,))
            # Input references are checked against the input model even without an input: the
            # given workflow's, or that of the workflows that register this very template.
            digest = template.template_hash()
            owners = [flow] if flow else app.workflows.values()
            models = {
                w.input_model
                for w in owners
                if w is flow or any(t.template_hash() == digest for t in w.templates)
            }
            problems = template_problems(template, models.pop() if len(models) == 1 else None)
            flagged = {(p["step"], "${" + p["reference"] + "}") for p in problems}
            try:
                app.planner().bind(base, template, data)
            except PlanValidationError as exc:
                problems += [
                    p
                    for p in exc.problems
                    if (
                        input is not None
                        or (
                            "the input has no" not in p["problem"]
                            and "was not bound" not in p["problem"]
                        )
                    )
                    and not any(s == p["step"] and r in p["problem"] for s, r in flagged)
                ]
            result: dict[str, Any] = {
                "file": str(file),
                "template": template.name,
                "problems": problems,
            }
            agents = [agent_summary(s.id, s.agent) for s in template.steps if s.agent]
            if agents:
                result["agents"] = agents
            results.append(result)
        return results

    async def go() -> list[dict[str, Any]]:
        return check()

    results = run_async(go)
    bad = sum(len(r["problems"]) for r in results)
    if state.json:
        ui.dump_json(results)
    else:
        for r in results:
            if r["problems"]:
                ui.out.print(
                    f"[red]✗[/] {r['file']} ({r['template']}): {len(r['problems'])} problem(s)"
                )
                for p in r["problems"]:
                    ui.out.print(f"    {p['step'] or '<plan>'}: {p['problem']}", markup=False)
            else:
                ui.out.print(f"[green]✓[/] {r['file']} ({r['template']})")
            for agent in r.get("agents", []):
                ui.out.print(f"    {agent['step']}: {agent_text(agent)}", markup=False)
    if bad:
        raise typer.Exit(1)


@plan_cli.command("show")
def plan_show(
    ctx: typer.Context,
    job_id: str,
    all_versions: Annotated[bool, typer.Option("--all", help="Every plan version.")] = False,
) -> None:
    """A job's plan: steps, dependencies, tools, approvals; with hashes."""
    state = state_of(ctx)
    plans = with_client(state, lambda c: c.plans(job_id, tenant=state.tenant))
    chosen = plans if all_versions else plans[-1:]
    if state.json:
        ui.dump_json([dataclasses.asdict(p) for p in chosen])
        return
    for p in chosen:
        ui.out.print(
            f"[bold]plan v{p.version}[/] of {p.job_id}: template {p.template_name} "
            f"({p.template_hash[:12]}), plan hash {p.plan_hash[:12]}"
        )
        ui.out.print(
            ui.table(
                None,
                ["step", "kind/tool", "depends on", "critical", "approval", "timeout", "retries"],
                [step_row(s) for s in p.plan["steps"]],
            )
        )


def step_row(step: dict[str, Any]) -> tuple[Any, ...]:
    """One row of `plan show`'s table, from a plan step as stored (JSON)."""
    agent = step.get("agent")
    what = step.get("tool") or step["kind"]
    approval = ui.short(step["requires_approval"], 40) if step["requires_approval"] else "-"
    if agent:
        summary = agent_summary(step["id"], agent)
        what = agent_text(summary)
        if summary["approve"]:
            calls = f"calls of {', '.join(summary['approve'])}"
            approval = calls if approval == "-" else f"{approval}; {calls}"
    return (
        step["id"],
        what,
        ", ".join(step["depends_on"]) or "-",
        "yes" if step["critical"] else "no",
        approval,
        f"{step['timeout_seconds']}s" if step.get("timeout_seconds") else "-",
        step["retry"]["max_attempts"],
    )


def agent_summary(step_id: str, agent: BaseModel | dict[str, Any]) -> dict[str, Any]:
    """What to show of an agent step: its tools, its bounds and the tools whose calls may wait
    for a reviewer."""
    spec = AgentSpec.model_validate(agent)
    return {
        "step": step_id,
        "tools": spec.tools,
        "max_turns": spec.max_turns,
        "max_tool_calls": spec.max_tool_calls,
        "output": spec.output,
        "approve": [name for name, when in spec.approve.items() if when is not False],
    }


def agent_text(summary: dict[str, Any]) -> str:
    """`agent: lookup, pay (max 8 turns, 32 calls) -> Report`."""
    text = (
        f"agent: {', '.join(summary['tools'])} (max {summary['max_turns']} turns, "
        f"{summary['max_tool_calls']} calls)"
    )
    return f"{text} -> {summary['output']}" if summary["output"] else text
