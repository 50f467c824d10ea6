"""The HTTP API: `create_api(app)` builds the FastAPI application; `stalwart serve` runs it."""

from stalwart.api.factory import create_api

__all__ = ["create_api"]
