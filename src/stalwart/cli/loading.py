"""Finding the app (`--app module:attr`) and the store for a CLI command."""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

from stalwart.app import App
from stalwart.errors import AppImportError, ConfigurationError, StoreError
from stalwart.settings import Settings
from stalwart.store import Store, open_store
from stalwart.store.sqlite.connection import path_from_url
from stalwart.types import redact_url


def load_app(spec: str, database_url: str | None = None) -> App:
    """Import `module:attribute` (the current directory is on the path); a `database_url` given
    on the command line (or in the environment) replaces the app's own."""
    if ":" not in spec:
        raise AppImportError(
            f"--app {spec!r} must look like module:attribute (e.g. examples.app:app)", field="app"
        )
    module_name, attr = spec.split(":", 1)
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise AppImportError(
            f"cannot import {module_name!r} for --app: {exc}", field="app"
        ) from exc
    apps = sorted(name for name, value in vars(module).items() if isinstance(value, App))
    if not hasattr(module, attr):
        raise AppImportError(
            f"--app {spec}: module {module_name!r} has no attribute {attr!r}; "
            + _what_it_has(module, apps),
            field="app",
            module=module_name,
            attribute=attr,
            apps=apps,
            fix=_fix(module_name, apps),
        )
    app = getattr(module, attr)
    if not isinstance(app, App):
        raise AppImportError(
            f"--app {spec} is not a stalwart App (found {type(app).__name__}); "
            + _what_it_has(module, apps),
            field="app",
            module=module_name,
            attribute=attr,
            apps=apps,
            fix=_fix(module_name, apps),
        )
    if database_url is not None and database_url != app.settings.database_url:
        app.settings = app.settings.model_copy(update={"database_url": database_url})
        app._store = None
    return app


def _what_it_has(module: object, apps: list[str]) -> str:
    """The Apps a module holds, or else its public names: what `--app` could have said."""
    name = getattr(module, "__name__", "the module")
    if apps:
        return f"its App(s): {', '.join(f'{name}:{a}' for a in apps)}"
    public = sorted(n for n in vars(module) if not n.startswith("_"))
    shown = ", ".join(public[:20]) + (", …" if len(public) > 20 else "")
    return f"it holds no App; its names: {shown or '(none)'}"


def _fix(module_name: str, apps: list[str]) -> str:
    if len(apps) == 1:
        return f"pass --app {module_name}:{apps[0]}"
    if apps:
        return "pass --app naming one of the Apps listed"
    return f"name the App object of {module_name!r} (app = App(...)) in --app module:attribute"


def _exists(url: str) -> bool:
    return not url.startswith("sqlite:///") or Path(path_from_url(url)).exists()


async def open_existing(settings: Settings) -> Store:
    """The store at `database_url`, which must exist and be migrated (reads never create one)."""
    url = settings.database_url
    if not _exists(url):
        raise ConfigurationError(
            f"no database at {path_from_url(url)}; run `stalwart db migrate` first, or pass "
            "--database-url",
            field="database_url",
        )
    store = open_store(url, settings)
    status = await store.migration_status()
    if not status.current:
        await store.close()
        raise StoreError(
            f"the database at {redact_url(url)} has {len(status.pending)} pending migration(s); "
            "run "
            "`stalwart db migrate`"
        )
    return store
