"""`stalwart workers`: who is alive and what each holds."""

from __future__ import annotations

from typing import Annotated

import typer

from stalwart.cli import output as ui
from stalwart.cli.context import state_of, with_client

workers_cli = typer.Typer(help="Workers: who is alive and what each holds.", no_args_is_help=True)


@workers_cli.command("list")
def workers_list(
    ctx: typer.Context,
    all_: Annotated[bool, typer.Option("--all", help="Include workers that stopped.")] = False,
) -> None:
    """Live and dead workers (a worker is dead when its heartbeat is older than the lease time),
    with the steps each holds."""
    state = state_of(ctx)

    found = with_client(state, lambda c: c.workers(include_stopped=all_))
    if state.json:
        ui.dump_json([w.to_dict() for w in found])
        return
    if not found:
        ui.out.print("no workers registered")
        return
    ui.out.print(
        ui.table(
            None,
            ["id", "host", "pid", "status", "heartbeat", "started", "slots", "holding"],
            [
                (
                    w.id,
                    w.host,
                    str(w.pid),
                    ui.status(w.status),
                    ui.ago(w.heartbeat),
                    ui.ago(w.started),
                    f"{len(w.holding)}/{w.concurrency}",
                    ui.short(", ".join(f"{h['job_id']}/{h['step']}" for h in w.holding), 60),
                )
                for w in found
            ],
        )
    )
