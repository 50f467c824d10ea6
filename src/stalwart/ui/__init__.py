"""The web UI for reviewers and operators, at `/ui` (server-rendered).

Jinja2 templates and our own small CSS and JavaScript; people sign in with an API key, which
becomes a signed session cookie (`session.py`). Every page goes through `Client`, within the
signed-in key's tenant, and shows only what the key's role may use.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles


def mount(api: FastAPI) -> None:
    """Add the UI's routes and static files to `api`."""
    from stalwart.ui.render import STATIC
    from stalwart.ui.routes import router

    # Static files first: the router's catch-all 404 page would otherwise answer for them.
    api.mount("/ui/static", StaticFiles(directory=STATIC), name="ui-static")
    api.include_router(router)
