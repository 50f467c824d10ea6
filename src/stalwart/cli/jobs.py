"""`stalwart jobs`: list, show, trace and cancel jobs."""

from __future__ import annotations

import time
from typing import Annotated, Any

import typer

from stalwart.cli import output as ui
from stalwart.cli.context import state_of, with_client
from stalwart.client import Client
from stalwart.domain.budgets import ledger_totals

jobs_cli = typer.Typer(help="List, inspect and cancel jobs.", no_args_is_help=True)


@jobs_cli.command("list")
def jobs_list(
    ctx: typer.Context,
    status: Annotated[list[str] | None, typer.Option(help="Filter by status (repeatable).")] = None,
    workflow: Annotated[str | None, typer.Option(help="Filter by workflow.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 50,
    before: Annotated[str | None, typer.Option(help="Page: jobs older than this id.")] = None,
) -> None:
    """Jobs, newest first."""
    state = state_of(ctx)
    jobs = with_client(
        state,
        lambda c: c.list(
            tenant=state.tenant,
            statuses=status or (),
            workflow=workflow,
            limit=limit,
            before=before,
        ),
    )
    if state.json:
        ui.dump_json([j.to_dict() for j in jobs])
        return
    if not jobs:
        ui.out.print("no jobs" + (" match" if status or workflow else " yet"))
        return
    ui.out.print(
        ui.table(
            None,
            ["id", "workflow", "status", "tenant", "plan", "steps run", "created"],
            [
                (
                    j.id,
                    j.workflow,
                    ui.status(j.status) + (" [red]corrupt[/]" if j.corrupt else ""),
                    j.tenant_id,
                    f"v{j.plan_version}",
                    j.steps_executed,
                    ui.when(j.created),
                )
                for j in jobs
            ],
        )
    )
    for j in jobs:
        if j.corrupt:  # listed with what could be read; the worker quarantines the job
            ui.out.print(f"job {j.id} is corrupt: {j.corrupt}", markup=False)


@jobs_cli.command("show")
def jobs_show(ctx: typer.Context, job_id: str) -> None:
    """A job: its steps, attempts, outputs, agent transcripts, model calls and event
    timeline."""
    state = state_of(ctx)

    async def fetch(c: Client) -> tuple[Any, Any, Any, Any, Any]:
        job = await c.get(job_id, tenant=state.tenant)
        steps = await c.steps(job_id, tenant=state.tenant)
        agents = any(s.kind == "agent" for s in steps)
        return (
            job,
            steps,
            await c.events(job_id, tenant=state.tenant),
            await c.llm_calls(job_id, tenant=state.tenant),
            await c.transcripts(job_id, tenant=state.tenant) if agents else [],
        )

    job, steps, events, calls, transcripts = with_client(state, fetch)
    totals = ledger_totals(calls)
    if state.json:
        ui.dump_json(
            {
                "job": job.to_dict(),
                "steps": [s.to_dict() for s in steps],
                "events": [e.to_dict() for e in events],
                "llm_calls": [c.to_dict() for c in calls],
                "llm_totals": totals,
                "transcripts": [t.to_dict() for t in transcripts],
            }
        )
        return
    ui.out.print(
        f"[bold]{job.id}[/]  {job.workflow}  {ui.status(job.status)}"
        + ("  [yellow](degraded)[/]" if job.degraded else "")
    )
    ui.out.print(
        f"tenant {job.tenant_id}  plan v{job.plan_version} ({job.template_name}, "
        f"{(job.template_hash or '')[:12]})  replans {job.replans}/{job.max_replans}  "
        f"created {ui.when(job.created)}"
    )
    if job.error:
        ui.out.print(f"[red]error:[/] {job.error.get('message')}")
    ui.out.print(
        ui.table(
            "steps",
            ["step", "kind/tool", "status", "attempts", "arguments", "output / error"],
            [
                (
                    s.key,
                    s.tool or s.kind,
                    ui.status(s.status),
                    f"{s.attempt}/{s.max_attempts}",
                    "-" if s.args is None else ui.short(s.args, 60),
                    ui.short(
                        s.error.get("message") if s.error and s.status != "succeeded" else s.output
                    ),
                )
                for s in steps
            ],
        )
    )
    for transcript in transcripts:
        ui.out.print("\n".join(ui.transcript(transcript)))
    if calls:
        ui.out.print(
            ui.table(
                "llm calls",
                ["step", "model", "tier", "outcome", "tokens in/out (cached)", "cost", "ms"],
                [
                    (
                        c.step_key or c.purpose or "-",
                        f"{c.provider}:{c.model}",
                        c.tier or "-",
                        ui.status(c.outcome) if c.outcome != "cached" else "cache hit",
                        f"{c.input_tokens}/{c.output_tokens} ({c.cached_tokens})",
                        ui.usd(c.cost_nanos) if c.priced else "unpriced",
                        f"{c.latency_ms:.0f}" if c.latency_ms is not None else "-",
                    )
                    for c in calls
                ],
            )
        )
        ui.out.print(
            f"llm totals: {totals['calls']} calls ({totals['cache_hits']} cache hits, "
            f"{totals['refused']} refused), {totals['input_tokens']} tokens in, "
            f"{totals['output_tokens']} out, ${totals['cost_usd']:.6f}"
        )
    ui.out.print(
        ui.table(
            "timeline",
            ["at", "event", "step", "actor", "reason"],
            [
                (f"{ui.when(e.at)}", e.kind, e.step_key or "", e.actor, ui.short(e.reason, 70))
                for e in events
            ],
        )
    )


@jobs_cli.command("trace")
def jobs_trace(ctx: typer.Context, job_id: str) -> None:
    """A job's trace as a tree: planning, each step attempt, its tool run and model calls,
    approvals; with times from the job's start, durations, tokens and cost. Rebuilt from the
    stored events and ledger: no trace collector needed."""
    from rich.console import Console

    from stalwart.observability.timeline import build_trace, trace_totals

    state = state_of(ctx)

    async def fetch(c: Client) -> Any:
        job = await c.get(job_id, tenant=state.tenant)
        events = await c.events(job_id, tenant=state.tenant)
        while events and len(events) % 1000 == 0:  # a page was full: read on
            more = await c.events(job_id, tenant=state.tenant, after_id=events[-1].id)
            if not more:
                break
            events += more
        return build_trace(
            job,
            await c.steps(job_id, tenant=state.tenant, all_versions=True),
            events,
            await c.llm_calls(job_id, tenant=state.tenant),
            await c.plans(job_id, tenant=state.tenant),
        )

    root = with_client(state, fetch)
    totals = trace_totals(root)
    if state.json:
        ui.dump_json(
            {
                "job_id": root.attributes["job_id"],
                "trace_id": root.attributes.get("trace_id"),
                "totals": totals,
                "root": root.to_dict(),
            }
        )
        return
    # Not on a terminal (a pipe, a file): whole lines, never cut at 80 columns.
    wide = ui.out if ui.out.is_terminal else Console(highlight=False, soft_wrap=True, width=1000)
    wide.print(_trace_tree(root, time.time()))
    ui.out.print(
        f"total: {_count(totals['steps'], 'step')}, {_count(totals['attempts'], 'attempt')} "
        f"({totals['failed_attempts']} failed), {_count(totals['model_calls'], 'model call')} "
        f"({totals['cache_hits']} from cache), {totals['input_tokens']} tokens in, "
        f"{totals['output_tokens']} out, ${totals['cost_usd']:.6f}"
    )
    if root.attributes.get("trace_id"):
        ui.out.print(f"trace id: {root.attributes['trace_id']}")


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _trace_tree(root: Any, now: float) -> Any:
    """The trace as a rich Tree: one line a span, times from the job's start."""
    from rich.markup import escape
    from rich.tree import Tree

    from stalwart.observability.timeline import LLM, MARKER, PLAN, STEP, format_duration

    styles = {"ok": "green", "error": "red"}

    def label(node: Any) -> str:
        a = node.attributes
        name = node.name + (f" #{a['attempt']}" if node.kind == STEP else "")
        if node.kind == STEP and root.attributes.get("plan_version", 1) > 1:
            name += f" (plan v{a.get('plan_version', '?')})"
        parts = [f"[bold]{escape(name)}[/]", f"[dim]+{node.start - root.start:.2f}s[/]"]
        if node.kind != MARKER:
            took = format_duration(node.extent(now))
            parts.append(took if node.end is not None else f"{took} so far")
            style = styles.get(node.status)
            outcome = escape(node.outcome or node.status)
            parts.append(f"[{style}]{outcome}[/]" if style else outcome)
        if node.kind == PLAN and a.get("version") is not None:
            parts.append(f"v{a['version']} {escape(str(a.get('template') or ''))}".rstrip())
        chats = [n for n in node.walk() if n.kind == LLM]
        if node.kind in (LLM, STEP, PLAN) and chats:
            tokens_in = sum(n.attributes["input_tokens"] for n in chats)
            tokens_out = sum(n.attributes["output_tokens"] for n in chats)
            nanos = sum(n.attributes["cost_nanos"] for n in chats)
            parts.append(f"{tokens_in} in / {tokens_out} out tokens  {ui.usd(nanos)}")
            if node.kind == LLM and a.get("cache_hit"):
                parts.append("cache hit")
        if a.get("error_class"):
            parts.append(f"[red]{escape(str(a['error_class']))}[/]")
        if a.get("reviewer"):
            parts.append(f"by {escape(str(a['reviewer']))}")
        if node.kind == MARKER and a.get("reason"):
            parts.append(f"[dim]{escape(ui.short(a['reason'], 90))}[/]")
        return "  ".join(parts)

    def grow(tree: Any, node: Any) -> None:
        for child in node.children:
            grow(tree.add(label(child)), child)

    top = Tree(f"{label(root)}  job {escape(root.attributes['job_id'])}")
    grow(top, root)
    return top


@jobs_cli.command("cancel")
def jobs_cancel(
    ctx: typer.Context,
    job_id: str,
    reason: Annotated[str, typer.Option(help="Recorded in the audit trail.")] = "",
    actor: Annotated[str, typer.Option(help="Who cancels.")] = "cli",
) -> None:
    """Cancel a job: pending steps stop; running tools see the flag within one heartbeat."""
    state = state_of(ctx)
    job = with_client(
        state, lambda c: c.cancel(job_id, tenant=state.tenant, actor=actor, reason=reason)
    )
    if state.json:
        ui.dump_json(job.to_dict())
    else:
        ui.out.print(f"job {job.id}: {ui.status(job.status)}")
