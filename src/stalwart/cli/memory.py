"""`stalwart memory`: a tenant's knowledge collections and episodes, from the shell."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer

from stalwart.cli import output as ui
from stalwart.cli.context import fail, state_of, with_client
from stalwart.client import Client
from stalwart.errors import UsageError

if TYPE_CHECKING:
    from stalwart.client_memory import SearchResult

T = TypeVar("T")

memory_cli = typer.Typer(
    help="Memory: knowledge collections and past episodes, per tenant.", no_args_is_help=True
)


def _with_memory(ctx: typer.Context, fn: Callable[[Client, str], Awaitable[T]]) -> T:
    """Run `fn(client, tenant)` on a migrated store; the app's embedder when --app is given."""
    state = state_of(ctx)
    tenant = state.tenant or state.settings.default_tenant
    app = state.app() if state.app_spec else None
    return with_client(state, lambda client: fn(client, tenant), migrate=True, app=app)


def _json(ctx: typer.Context) -> bool:
    return bool(state_of(ctx).json)


@memory_cli.command("add")
def memory_add(
    ctx: typer.Context,
    collection: Annotated[str, typer.Argument(help="The collection (created on first use).")],
    files: Annotated[list[Path], typer.Argument(help="Text, Markdown or HTML files.")],
    retention_days: Annotated[
        float | None, typer.Option(help="Forget documents of this collection after N days.")
    ] = None,
) -> None:
    """Add files to a knowledge collection: extracted, chunked with overlap, embedded."""
    docs = _with_memory(
        ctx,
        lambda c, tenant: c.memory.add(
            tenant, collection, list(files), retention_days=retention_days
        ),
    )
    if _json(ctx):
        ui.dump_json([asdict(d) for d in docs])
        return
    for d in docs:
        ui.out.print(f"added {d.source}: {d.chunks} chunks to {d.collection!r}")


@memory_cli.command("search")
def memory_search(
    ctx: typer.Context,
    query: Annotated[str, typer.Argument(help="What to look for.")],
    collection: Annotated[
        list[str] | None, typer.Option(help="Search these collections (default: all).")
    ] = None,
    k: Annotated[int, typer.Option(min=1, max=100, help="How many hits at most.")] = 5,
    min_similarity: Annotated[
        float | None,
        typer.Option(help="Cosine similarity a hit needs (default 0.70; episodes 0.75)."),
    ] = None,
    episodes: Annotated[
        bool, typer.Option("--episodes", help="Search past episodes instead of knowledge.")
    ] = False,
) -> None:
    """The best matches for QUERY in the tenant's knowledge (or past episodes)."""

    async def go(c: Client, tenant: str) -> SearchResult:
        if episodes:
            return await c.memory.episodes(
                tenant, query, k=k, min_similarity=_or(min_similarity, 0.75)
            )
        return await c.memory.search(
            tenant, query, collections=collection, k=k, min_similarity=_or(min_similarity, 0.70)
        )

    result = _with_memory(ctx, go)
    if _json(ctx):
        ui.dump_json(
            {
                "method": result.method,
                "notes": result.notes,
                "hits": [h.as_dict() for h in result.hits],
            }
        )
        return
    for note in result.notes:
        ui.err.print(f"[yellow]{note}[/]")
    if not result.hits:
        ui.out.print("nothing relevant found")
        return
    for n, hit in enumerate(result.hits, 1):
        ui.out.print(
            f"[bold]{n}. {hit.ref}[/]  relevance {hit.relevance:.2f} ({hit.method}), "
            f"score {hit.score:.2f}"
        )
        ui.out.print(f"   {ui.short(hit.text, 300)}")


@memory_cli.command("list")
def memory_list(
    ctx: typer.Context,
    collection: Annotated[
        str | None, typer.Argument(help="List this collection's documents.")
    ] = None,
) -> None:
    """The tenant's collections, or one collection's documents."""
    if collection is None:
        found = _with_memory(ctx, lambda c, tenant: c.memory.collections(tenant))
        if _json(ctx):
            ui.dump_json([asdict(x) for x in found])
            return
        if not found:
            ui.out.print("no collections yet: add one with `stalwart memory add NAME FILE...`")
            return
        ui.out.print(
            ui.table(
                None,
                ["collection", "documents", "chunks", "embedder", "retention", "created"],
                [
                    (
                        x.name,
                        x.documents,
                        x.chunks,
                        f"{x.embedder} ({x.dimension})" if x.embedder else "none (BM25)",
                        f"{x.retention_days:g} days" if x.retention_days else "-",
                        ui.when(x.created),
                    )
                    for x in found
                ],
            )
        )
        return
    docs = _with_memory(ctx, lambda c, tenant: c.memory.documents(tenant, collection))
    if _json(ctx):
        ui.dump_json([asdict(d) for d in docs])
        return
    ui.out.print(
        ui.table(
            collection,
            ["source", "chunks", "sha256", "added"],
            [(d.source, d.chunks, d.digest[:12], ui.when(d.created)) for d in docs],
        )
    )


@memory_cli.command("forget")
def memory_forget(
    ctx: typer.Context,
    collection: Annotated[str, typer.Argument(help="The collection.")],
    source: Annotated[
        str | None, typer.Option(help="Forget only this document (its file name).")
    ] = None,
) -> None:
    """Forget a whole collection, or one document of it."""
    removed = _with_memory(ctx, lambda c, tenant: c.memory.forget(tenant, collection, source))
    if _json(ctx):
        ui.dump_json(removed)
        return
    ui.out.print(
        "forgot "
        + ", ".join(f"{n} {table.removeprefix('memory_')}" for table, n in removed.items())
    )


@memory_cli.command("erase")
def memory_erase(
    ctx: typer.Context,
    yes: Annotated[bool, typer.Option("--yes", help="Confirm: this cannot be undone.")] = False,
) -> None:
    """Erase every memory row of the tenant given with --tenant (collections, documents,
    chunks, episodes)."""
    state = state_of(ctx)
    if not state.tenant:
        fail(UsageError("name the tenant to erase with --tenant", field="tenant"))
    if not yes:
        fail(
            UsageError(
                f"erasing tenant {state.tenant!r}'s memory cannot be undone: add --yes",
                field="yes",
            )
        )
    removed = _with_memory(ctx, lambda c, tenant: c.memory.erase(tenant))
    if _json(ctx):
        ui.dump_json(removed)
        return
    ui.out.print(f"erased tenant {state.tenant!r}: " + _counts(removed))


def _or(value: float | None, default: float) -> float:
    return default if value is None else value


def _counts(removed: dict[str, int]) -> str:
    return ", ".join(f"{n} {table.removeprefix('memory_')}" for table, n in removed.items())
