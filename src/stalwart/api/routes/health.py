"""`/healthz` (the process answers) and `/readyz` (the database answers, schema current)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from stalwart.api.schemas import Health
from stalwart.api.state import server
from stalwart.errors import StalwartError

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, summary="Liveness")
async def healthz() -> Health:
    """200 while the process serves requests."""
    return Health(status="ok")


@router.get(
    "/readyz",
    response_model=Health,
    responses={503: {"model": Health, "description": "Not ready: see `checks`."}},
    summary="Readiness",
)
async def readyz(request: Request) -> JSONResponse:
    """200 when the database is reachable and its schema is current; 503 otherwise, with the
    failing check."""
    checks: dict[str, str] = {}
    try:
        status = await server(request).client.migration_status()
        checks["database"] = "ok"
        checks["migrations"] = (
            "ok" if status.current else f"{len(status.pending)} pending: run stalwart db migrate"
        )
    except StalwartError as exc:
        checks["database"] = exc.message
    except OSError as exc:
        checks["database"] = str(exc)
    ready = all(v == "ok" for v in checks.values()) and "migrations" in checks
    body = Health(status="ready" if ready else "not_ready", checks=checks)
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503)
