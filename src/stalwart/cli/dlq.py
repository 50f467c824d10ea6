"""`stalwart dlq`: dead letters, inspected and redriven."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from stalwart.cli import output as ui
from stalwart.cli.context import state_of, with_client

dlq_cli = typer.Typer(help="Dead letters: inspect and redrive.", no_args_is_help=True)


@dlq_cli.command("list")
def dlq_list(
    ctx: typer.Context,
    all_: Annotated[bool, typer.Option("--all", help="Include redriven and closed.")] = False,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 50,
) -> None:
    """Dead-lettered and escalated jobs waiting for an operator."""
    state = state_of(ctx)
    statuses = () if all_ else ("open",)
    letters = with_client(
        state, lambda c: c.dead_letters(tenant=state.tenant, statuses=statuses, limit=limit)
    )
    if state.json:
        ui.dump_json([d.to_dict() for d in letters])
        return
    if not letters:
        ui.out.print("no dead letters")
        return
    ui.out.print(
        ui.table(
            None,
            ["id", "job", "workflow", "step", "reason", "status", "created"],
            [
                (
                    d.id,
                    d.job_id,
                    d.workflow,
                    d.step_key,
                    ui.short(d.reason, 70),
                    ui.status(d.status),
                    ui.ago(d.created),
                )
                for d in letters
            ],
        )
    )


@dlq_cli.command("show")
def dlq_show(ctx: typer.Context, dead_letter_id: str) -> None:
    """One dead letter (by its id or its job's id): the error and its full context."""
    state = state_of(ctx)
    letter = with_client(state, lambda c: c.dead_letter(dead_letter_id, tenant=state.tenant))
    if state.json:
        ui.dump_json(letter.to_dict())
        return
    ui.out.print(
        f"[bold]{letter.id}[/]  {ui.status(letter.status)}  job {letter.job_id} "
        f"({letter.workflow})" + (f"  step {letter.step_key}" if letter.step_key else "")
    )
    ui.out.print(f"reason: {letter.reason}")
    if letter.error:
        ui.out.print(
            f"error:  {letter.error.get('error_class')}: {letter.error.get('message')}",
            markup=False,
        )
    ui.out.print("context:")
    ui.out.print_json(json.dumps(letter.context, default=str))
    ui.out.print(f"redrive with: stalwart dlq redrive {letter.job_id}")


@dlq_cli.command("redrive")
def dlq_redrive(
    ctx: typer.Context,
    job_id: Annotated[str, typer.Argument(help="The job's id (or the dead letter's id).")],
    actor: Annotated[str, typer.Option(help="Who redrives (recorded).")] = "cli",
    reason: Annotated[str, typer.Option(help="Recorded in the audit trail.")] = "",
) -> None:
    """Resume from the failed step; completed steps never run again."""
    state = state_of(ctx)
    job = with_client(
        state, lambda c: c.redrive(job_id, tenant=state.tenant, actor=actor, reason=reason)
    )
    if state.json:
        ui.dump_json(job.to_dict())
    else:
        ui.out.print(f"job {job.id}: {ui.status(job.status)}; a worker picks up its failed step")
