"""`stalwart`: submit and run jobs, review risky steps, redrive dead letters, migrate.

Global options come once, before the command: `stalwart --database-url sqlite:///x.db --json
jobs list`. Each is also an environment variable (`STALWART_DATABASE_URL`, `STALWART_APP`).
Every user error prints one line and exits non-zero.
"""

from __future__ import annotations

import os
from typing import Annotated, Any

import typer
from pydantic import ValidationError

from stalwart.cli import output as ui
from stalwart.cli.context import CURRENT, State
from stalwart.cli.db import db_cli
from stalwart.cli.dlq import dlq_cli
from stalwart.cli.jobs import jobs_cli
from stalwart.cli.keys import keys_cli
from stalwart.cli.limits import budgets_cli, limits_cli
from stalwart.cli.memory import memory_cli
from stalwart.cli.plans import plan_cli
from stalwart.cli.reviews import review_cli
from stalwart.cli.run import demo, serve, worker
from stalwart.cli.submit import EXIT_STILL_RUNNING, JOB_EXIT_CODES, submit
from stalwart.cli.workers import workers_cli
from stalwart.settings import Settings

# Exit codes of `submit --exit-code`, importable from here as before the split.
__all__ = ["EXIT_STILL_RUNNING", "JOB_EXIT_CODES", "cli", "main"]

cli = typer.Typer(
    name="stalwart",
    help="A durable runtime for production LLM agents.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@cli.callback()
def main_options(
    ctx: typer.Context,
    database_url: Annotated[
        str | None,
        typer.Option(
            help="sqlite:///path.db or postgresql://user:pass@host/db (env: STALWART_DATABASE_URL)",
            show_default=False,
        ),
    ] = None,
    app: Annotated[
        str | None,
        typer.Option(help="Your app as module:attribute (env: STALWART_APP)", show_default=False),
    ] = None,
    tenant: Annotated[
        str | None, typer.Option(help="Act for this tenant (default: all for reads).")
    ] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """A durable runtime for production LLM agents."""
    overrides: dict[str, Any] = {}
    if database_url:
        overrides["database_url"] = database_url
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        ui.err.print(f"[red]error:[/] invalid setting: {exc.errors()[0]['msg']}")
        raise typer.Exit(2) from None
    ctx.obj = State(
        settings,
        app or settings.app,
        json_output,
        tenant,
        url_given=bool(database_url) or "STALWART_DATABASE_URL" in os.environ,
    )
    CURRENT.set(ctx.obj)


# The command tree: every command lives in the module of its group; they are registered here, in
# the order of `stalwart --help`.
for command in (demo, worker, serve, submit):
    cli.command()(command)
cli.add_typer(jobs_cli, name="jobs")
cli.add_typer(review_cli, name="review")
cli.add_typer(dlq_cli, name="dlq")
cli.add_typer(plan_cli, name="plan")
cli.add_typer(db_cli, name="db")
cli.add_typer(workers_cli, name="workers")
cli.add_typer(keys_cli, name="keys")
cli.add_typer(limits_cli, name="limits")
cli.add_typer(budgets_cli, name="budgets")
cli.add_typer(memory_cli, name="memory")


def main() -> None:
    """Entry point of the `stalwart` command."""
    cli()


if __name__ == "__main__":
    main()
