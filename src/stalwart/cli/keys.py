"""`stalwart keys`: create, list and revoke API keys."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from stalwart.cli import output as ui
from stalwart.cli.context import state_of, with_client

keys_cli = typer.Typer(
    help="API keys: one per service or person, with a tenant and a role.", no_args_is_help=True
)


@keys_cli.command("create")
def keys_create(
    ctx: typer.Context,
    role: Annotated[str, typer.Option(help="submitter, reviewer, operator or admin.")],
    tenant: Annotated[
        str | None, typer.Option(help="The key's tenant (default: --tenant, else 'default').")
    ] = None,
    name: Annotated[
        str | None,
        typer.Option(help="Who or what uses it; recorded on every decision it makes."),
    ] = None,
) -> None:
    """Create a key and print it once: it is stored only as a digest and cannot be shown
    again."""
    state = state_of(ctx)
    # An explicit --tenant, even an empty one (refused below), is never swapped for the default.
    owner = tenant if tenant is not None else state.tenant or state.settings.default_tenant
    actor = f"cli:{os.environ.get('USER', 'unknown')}"
    created = with_client(
        state,
        lambda c: c.key_create(tenant=owner, role=role, name=name, actor=actor),
        migrate=True,
    )
    if state.json:
        ui.dump_json({**created.record.to_dict(), "token": created.token})
        return
    rec = created.record
    ui.out.print(created.token)
    ui.err.print(
        f"key {rec.id} '{rec.name}' for tenant {rec.tenant_id!r}, role {rec.role}. Copy it now: "
        "it is not shown again. Send it as `Authorization: Bearer <key>`."
    )


@keys_cli.command("list")
def keys_list(
    ctx: typer.Context,
    revoked: Annotated[bool, typer.Option("--revoked", help="Include revoked keys.")] = False,
) -> None:
    """Keys of the tenant (all tenants without --tenant), never their secrets."""
    state = state_of(ctx)
    found = with_client(state, lambda c: c.keys(tenant=state.tenant, include_revoked=revoked))
    if state.json:
        ui.dump_json([k.to_dict() for k in found])
        return
    if not found:
        ui.out.print("no keys yet: create one with `stalwart keys create --role ...`")
        return
    ui.out.print(
        ui.table(
            None,
            ["id", "name", "tenant", "role", "starts with", "created", "last used", "revoked"],
            [
                (
                    k.id,
                    k.name,
                    k.tenant_id,
                    k.role,
                    k.prefix,
                    ui.when(k.created),
                    ui.ago(k.last_used) or "never",
                    f"{ui.ago(k.revoked)} by {k.revoked_by}" if k.revoked else "-",
                )
                for k in found
            ],
        )
    )


@keys_cli.command("revoke")
def keys_revoke(
    ctx: typer.Context,
    key: Annotated[str, typer.Argument(help="The key's id (key_...) or name.")],
) -> None:
    """Revoke a key: it stops working on the next request."""
    state = state_of(ctx)
    actor = f"cli:{os.environ.get('USER', 'unknown')}"
    rec = with_client(state, lambda c: c.key_revoke(key, tenant=state.tenant, actor=actor))
    if state.json:
        ui.dump_json(rec.to_dict())
        return
    ui.out.print(f"revoked key {rec.id} '{rec.name}' of tenant {rec.tenant_id!r}")
