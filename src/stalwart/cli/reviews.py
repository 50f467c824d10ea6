"""`stalwart review`: the human approval queue."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from stalwart.cli import output as ui
from stalwart.cli.context import state_of, with_client
from stalwart.client import Client

review_cli = typer.Typer(help="The human approval queue.", no_args_is_help=True)


@review_cli.command("list")
def review_list(
    ctx: typer.Context,
    all_: Annotated[bool, typer.Option("--all", help="Include decided reviews.")] = False,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 50,
) -> None:
    """Reviews waiting for a decision, oldest first, with time left on their SLA."""
    state = state_of(ctx)
    statuses = () if all_ else ("pending", "escalated")
    reviews = with_client(
        state, lambda c: c.reviews(tenant=state.tenant, statuses=statuses, limit=limit)
    )
    if state.json:
        ui.dump_json([r.to_dict() for r in reviews])
        return
    if not reviews:
        ui.out.print("no reviews waiting" if not all_ else "no reviews")
        return
    ui.out.print(
        ui.table(
            None,
            ["id", "job", "step", "kind", "status", "asked", "SLA"],
            [
                (
                    r.id,
                    r.job_id,
                    r.step_key,
                    r.kind,
                    ui.status(r.status),
                    ui.short(r.asked, 60),
                    ui.ago(r.sla_deadline),
                )
                for r in reviews
            ],
        )
    )


@review_cli.command("show")
def review_show(ctx: typer.Context, review_id: str) -> None:
    """One review: why, what is asked, the options and their impact, the context."""
    state = state_of(ctx)
    review = with_client(state, lambda c: c.review(review_id, tenant=state.tenant))
    if state.json:
        ui.dump_json(review.to_dict())
        return
    ui.out.print(
        f"[bold]{review.id}[/]  {ui.status(review.status)}  job {review.job_id}  "
        f"step {review.step_key}  ({review.kind})"
    )
    ui.out.print(f"why:    {review.reason}", markup=False)
    ui.out.print(f"asked:  {review.asked}", markup=False)
    for option in review.options:
        ui.out.print(f"  - {option.get('name')}: {option.get('impact', '')}")
    ui.out.print(f"SLA:    {ui.when(review.sla_deadline)}")
    if review.decision:
        ui.out.print(
            f"decided {review.decision} by {review.decided_by} "
            f"{ui.when(review.decided)}: {review.comment or ''}"
        )
    if review.context.get("agent"):
        # A call in the middle of an agent loop: the goal, the call, then how it got here.
        # The goal and the transcript are the job's and the model's words: shown as written.
        ui.out.print(f"goal:   {review.context.get('goal', '')}", markup=False)
        turn_of = (review.context.get("call") or {}).get("turn")
        ui.out.print(f"call:   {review.context.get('tool')} (turn {turn_of})", markup=False)
        for turn in review.context.get("transcript") or []:
            calls = ", ".join(
                f"{c.get('tool')} -> {c.get('status')}" for c in turn.get("calls") or []
            )
            ui.out.print(f"  turn {turn.get('turn')}: {calls or 'answer'}", markup=False)
    if review.arguments is not None:
        ui.out.print("arguments:")
        ui.out.print_json(json.dumps(review.arguments, default=str))
    ui.out.print("context:")
    ui.out.print_json(json.dumps(review.context, default=str))


def _decide(ctx: typer.Context, review_id: str, approve: bool, reviewer: str, comment: str) -> None:
    state = state_of(ctx)

    async def go(c: Client) -> Any:
        if approve:
            return await c.approve(
                review_id, reviewer=reviewer, comment=comment, tenant=state.tenant
            )
        return await c.reject(review_id, reviewer=reviewer, comment=comment, tenant=state.tenant)

    review = with_client(state, go)
    if state.json:
        ui.dump_json(review.to_dict())
    else:
        ui.out.print(
            f"review {review.id}: {ui.status(review.status)} by {review.decided_by}; "
            f"job {review.job_id} step {review.step_key}"
        )


@review_cli.command("approve")
def review_approve(
    ctx: typer.Context,
    review_id: str,
    reviewer: Annotated[str, typer.Option(help="Who approves (recorded).")],
    comment: Annotated[str, typer.Option(help="Recorded in the audit trail.")] = "",
) -> None:
    """Approve: the step becomes ready and a worker runs it."""
    _decide(ctx, review_id, True, reviewer, comment)


@review_cli.command("reject")
def review_reject(
    ctx: typer.Context,
    review_id: str,
    reviewer: Annotated[str, typer.Option(help="Who rejects (recorded).")],
    comment: Annotated[
        str, typer.Option(help="Why; fed to the replanner if the policy replans.")
    ] = "",
) -> None:
    """Reject: the step does not run; the job fails or replans, per the workflow's policy."""
    _decide(ctx, review_id, False, reviewer, comment)
