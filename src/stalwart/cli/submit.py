"""`stalwart submit`: submit a job, optionally wait for it and exit with how it ended
(registered on the root command by `stalwart.cli.main`)."""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Any

import typer

from stalwart.cli import output as ui
from stalwart.cli.context import read_input, run_async, state_of
from stalwart.client import Client
from stalwart.domain.states import JOB_PARKED, JOB_TERMINAL


def submit(
    ctx: typer.Context,
    workflow: Annotated[str, typer.Argument(help="The workflow's name.")],
    input: Annotated[
        str | None, typer.Option("--input", "-i", help="Input as JSON, or @file.json.")
    ] = None,
    idempotency_key: Annotated[str | None, typer.Option(help="Deduplicate on this key.")] = None,
    priority: Annotated[int, typer.Option(help="Higher runs first.")] = 0,
    wait: Annotated[
        bool, typer.Option(help="Wait until the job finishes or waits for a human.")
    ] = False,
    timeout: Annotated[float, typer.Option(help="Seconds --wait waits.")] = 300.0,
    exit_code: Annotated[
        bool,
        typer.Option(
            "--exit-code",
            help="Wait (implies --wait), then exit with a status that says how the job ended: "
            "0 completed, 3 failed, 4 dead_lettered, 5 rejected, 6 escalated, 7 cancelled, "
            "8 waiting for a reviewer, 9 still running when --timeout ran out.",
        ),
    ] = False,
) -> None:
    """Submit a job (validated and planned now; a worker runs it)."""
    state = state_of(ctx)
    data = read_input(input)

    async def go() -> str:
        app = state.app()
        store = app.store()
        try:
            client = app.client(store)
            await client.migrate()
            result = await client.submit(
                workflow,
                data,
                tenant=state.tenant,
                idempotency_key=idempotency_key,
                priority=priority,
            )
            job = result.job
            if wait or exit_code:
                job = await _wait(client, job.id, timeout, quiet=state.json)
            if state.json:
                ui.dump_json({"created": result.created, "job": job.to_dict()})
            else:
                verb = "submitted" if result.created else "duplicate of"
                ui.out.print(
                    f"{verb} job [bold]{job.id}[/] ({job.workflow}): {ui.status(job.status)}"
                )
            return str(job.status)
        finally:
            await store.close()

    ended = run_async(go)
    if exit_code:
        raise typer.Exit(JOB_EXIT_CODES.get(ended, EXIT_STILL_RUNNING))


# `submit --exit-code`: how the job ended, as the exit status (1 and 2 stay Stalwart's own errors
# and usage mistakes). Documented in docs/reference/cli.md#submit; never renumber.
JOB_EXIT_CODES = {
    "completed": 0,
    "failed": 3,
    "dead_lettered": 4,
    "rejected": 5,
    "escalated": 6,
    "cancelled": 7,
    "waiting_approval": 8,
}
EXIT_STILL_RUNNING = 9


async def _wait(client: Client, job_id: str, wait_seconds: float, *, quiet: bool) -> Any:
    deadline = time.monotonic() + wait_seconds
    job = await client.get(job_id)
    with ui.err.status(f"job {job_id}: {job.status}", spinner="dots") as spinner:
        while job.status not in JOB_TERMINAL | JOB_PARKED and job.status != "waiting_approval":
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
            job = await client.get(job_id)
            steps = await client.steps(job_id)
            done = sum(1 for s in steps if s.status in ("succeeded", "skipped"))
            if not quiet:
                spinner.update(f"job {job_id}: {job.status} ({done}/{len(steps)} steps done)")
    return job
