"""`stalwart db`: apply and show schema migrations."""

from __future__ import annotations

from typing import Any

import typer

from stalwart.cli import output as ui
from stalwart.cli.context import run_async, state_of
from stalwart.client import Client
from stalwart.store import open_store
from stalwart.types import redact_url

db_cli = typer.Typer(help="Database schema.", no_args_is_help=True)


@db_cli.command("migrate")
def db_migrate(ctx: typer.Context) -> None:
    """Apply pending migrations (safe to run from several processes at once)."""
    state = state_of(ctx)

    async def go() -> list[int]:
        store = open_store(state.settings.database_url, state.settings)
        try:
            return await Client(store, settings=state.settings).migrate()
        finally:
            await store.close()

    applied = run_async(go)
    if state.json:
        ui.dump_json({"applied": applied})
    elif applied:
        ui.out.print(
            f"applied migration(s) {', '.join(map(str, applied))} to "
            f"{redact_url(state.settings.database_url)}"
        )
    else:
        ui.out.print(f"{redact_url(state.settings.database_url)} is up to date")


@db_cli.command("status")
def db_status(ctx: typer.Context) -> None:
    """Applied and pending migrations."""
    state = state_of(ctx)

    async def go() -> Any:
        store = open_store(state.settings.database_url, state.settings)
        try:
            return await Client(store, settings=state.settings).migration_status()
        finally:
            await store.close()

    status = run_async(go)
    if state.json:
        ui.dump_json(
            {"applied": status.applied, "pending": status.pending, "current": status.current}
        )
        return
    for version, name, applied in status.applied:
        ui.out.print(f"[green]applied[/]  {version:04d} {name}  {ui.when(applied)}")
    for version, name in status.pending:
        ui.out.print(f"[yellow]pending[/]  {version:04d} {name}")
    if not status.applied and not status.pending:
        ui.out.print("no migrations known")
