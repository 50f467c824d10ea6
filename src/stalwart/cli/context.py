"""What every `stalwart` command shares: the global options' `State`, running a coroutine,
reporting errors (one line, or the API's error body with --json) and opening the store and the
`Client` over it.

Command modules import this module, never `stalwart.cli.main` (which imports them to build the
command tree, and runs as `__main__` under `python -m stalwart.cli.main`).
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import typer
from pydantic import ValidationError
from rich.markup import escape

from stalwart.app import App
from stalwart.cli import output as ui
from stalwart.cli.loading import load_app, open_existing
from stalwart.client import Client
from stalwart.errors import PlanValidationError, StalwartError, UsageError, error_body
from stalwart.settings import Settings
from stalwart.store import Store, open_store

T = TypeVar("T")


@dataclass
class State:
    """What the global options chose."""

    settings: Settings
    app_spec: str | None
    json: bool
    tenant: str | None
    url_given: bool = False

    def app(self) -> App:
        """The app named by --app / STALWART_APP; a clear error if none."""
        if not self.app_spec:
            raise UsageError(
                "this command needs your app: pass --app module:attribute (or set STALWART_APP)",
                field="app",
            )
        return load_app(self.app_spec, self.settings.database_url if self.url_given else None)


# The state of this invocation, for reporting errors where no typer context is at hand.
CURRENT: ContextVar[State | None] = ContextVar("stalwart_cli_state", default=None)


def state_of(ctx: typer.Context) -> State:
    """The global options' state of a command's context."""
    state = ctx.find_root().obj
    assert isinstance(state, State)
    return state


def run_async(coro_fn: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine to its end; a Stalwart error is reported and exits 1, bad data exits 2."""

    async def main() -> T:
        return await coro_fn()

    try:
        return asyncio.run(main())
    except StalwartError as exc:
        fail(exc)
    except ValidationError as exc:
        ui.err.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from None


def fail(exc: StalwartError) -> NoReturn:
    """Report `exc` and exit 1."""
    report(exc)
    raise typer.Exit(1)


def report(exc: StalwartError) -> None:
    """One error on stderr: a line for people, or with --json the API's error body."""
    state = CURRENT.get()
    if state is not None and state.json:
        print(json.dumps(error_body(exc), default=str), file=sys.stderr)
    else:
        # The message is the user's text (step ids like `steps[fetch]`), never rich markup.
        ui.err.print(f"[red]error:[/] {escape(exc.message)}", markup=True, highlight=False)
        if isinstance(exc, PlanValidationError) and len(exc.problems) > 1:
            for problem in exc.problems:
                line = f"  - {problem['step'] or '<plan>'}: {problem['problem']}"
                ui.err.print(line, markup=False, highlight=False)


def usage(message: str, field: str | None = None) -> typer.Exit:
    """Report a usage error; the exit (code 2) to raise."""
    report(UsageError(message, field=field))
    return typer.Exit(2)


def read_input(text: str | None) -> dict[str, Any]:
    """The JSON object of an `--input` option: inline, or `@path` to read it from a file."""
    if text is None:
        return {}
    if text.startswith("@"):
        try:
            text = Path(text[1:]).read_text(encoding="utf-8")
        except OSError as exc:
            raise usage(f"--input: cannot read {text[1:]}: {exc.strerror}", "input") from exc
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise usage(f"--input is not valid JSON: {exc.msg} at column {exc.colno}", "input") from exc
    if not isinstance(value, dict):
        raise usage("--input must be a JSON object", "input")
    return value


def with_client(
    state: State,
    fn: Callable[[Client], Awaitable[T]],
    *,
    migrate: bool = False,
    app: App | None = None,
) -> T:
    """Run `fn` with a `Client` over the store, closed afterwards. The database must exist and
    be migrated, unless `migrate`: then it is created and migrated if needed (keys and memory
    come before `serve`). With `app`, the client is the app's (it plans, and recalls with the
    app's embedder)."""

    async def go() -> T:
        store: Store = (
            open_store(state.settings.database_url, state.settings)
            if migrate
            else await open_existing(state.settings)
        )
        try:
            client = Client(store, app=app) if app else Client(store, settings=state.settings)
            if migrate:
                await client.migrate()
            return await fn(client)
        finally:
            await store.close()

    return run_async(go)
