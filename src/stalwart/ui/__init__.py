"""The web UI for reviewers and operators, at `/ui` (server-rendered)."""

from __future__ import annotations

from fastapi import FastAPI


def mount(api: FastAPI) -> None:
    """Add the UI's routes and static files to `api`."""
