"""`stalwart limits` and `stalwart budgets`: what a deployment may use and spend (shared
limits, LLM budgets)."""

from __future__ import annotations

from typing import Any

import typer

from stalwart.cli import output as ui
from stalwart.cli.context import state_of, with_client

limits_cli = typer.Typer(
    help="Shared limits: concurrency caps, rate limits, pauses, breakers.", no_args_is_help=True
)
budgets_cli = typer.Typer(
    help="LLM budgets: limits, spend and reservations per job and tenant.", no_args_is_help=True
)


def _breaker(lim: Any) -> str:
    if not lim.breaker_failures:
        return str(lim.breaker_state) if lim.breaker_state != "closed" else "-"
    return f"{lim.breaker_state} ({lim.breaker_count}/{lim.breaker_failures} failures)"


@limits_cli.command("list")
def limits_list(ctx: typer.Context) -> None:
    """Every limited tool and tenant: slots in use, tokens left, pauses, breaker state."""
    state = state_of(ctx)

    found = with_client(state, lambda c: c.limits())
    if state.json:
        ui.dump_json([lim.to_dict() for lim in found])
        return
    if not found:
        ui.out.print("no limits")
        return
    ui.out.print(
        ui.table(
            None,
            ["key", "running/cap", "rate", "tokens", "paused", "breaker"],
            [
                (
                    lim.key,
                    f"{lim.in_use}/{lim.concurrency}" if lim.concurrency else "-",
                    f"{lim.rate:g}/s" if lim.rate else "-",
                    f"{lim.tokens:g}" if lim.tokens is not None else "-",
                    f"{ui.ago(lim.paused_until)} ({lim.pause_reason})" if lim.paused_until else "-",
                    _breaker(lim),
                )
                for lim in found
            ],
        )
    )


@budgets_cli.command("list")
def budgets_list(ctx: typer.Context) -> None:
    """Every budget of the tenant (all tenants without --tenant): limit, spent, held by calls in
    flight, and whether its warning fired."""
    state = state_of(ctx)
    found = with_client(state, lambda c: c.budgets(tenant=state.tenant))
    if state.json:
        ui.dump_json([b.to_dict() for b in found])
        return
    if not found:
        ui.out.print("no budgets yet: they appear with the first model call")
        return
    ui.out.print(
        ui.table(
            None,
            ["budget", "limit", "spent", "in flight", "tokens", "warned"],
            [
                (
                    b.key,
                    ui.usd(b.limit_nanos),
                    ui.usd(b.spent_nanos),
                    ui.usd(b.reserved_nanos),
                    f"{b.spent_tokens}" + (f"/{b.limit_tokens}" if b.limit_tokens else ""),
                    "yes" if b.warned else "-",
                )
                for b in found
            ],
        )
    )
