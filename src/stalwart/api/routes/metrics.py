"""`GET /metrics`: Prometheus metrics of the whole deployment, read from the database (see
docs/concepts/observability.md). No API key: serve it on a private network or behind your proxy,
never on the public internet."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from stalwart.api.state import server
from stalwart.errors import StoreError
from stalwart.observability.metrics import MetricsExporter, metrics_registry

router = APIRouter(tags=["metrics"])


@dataclass(slots=True)
class ServerMetrics:
    """The exporter of one running server (its place in the event log) and its registry."""

    exporter: MetricsExporter
    registry: CollectorRegistry


def server_metrics(request: Request) -> ServerMetrics:
    """This server's metrics, made on first use (no module globals: one per app)."""
    found = getattr(request.app.state, "stalwart_metrics", None)
    if isinstance(found, ServerMetrics):
        return found
    state = server(request)
    exporter = MetricsExporter(state.store, live_seconds=state.settings.lease_seconds)
    registry = metrics_registry(exporter, workers=lambda: state.workers)
    made = ServerMetrics(exporter, registry)
    request.app.state.stalwart_metrics = made
    return made


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    """Every metric in the Prometheus text format; 503 when the database cannot be read."""
    found = server_metrics(request)
    try:
        await found.exporter.refresh()
    except StoreError as exc:
        return PlainTextResponse(f"# the database cannot be read: {exc.message}\n", 503)
    return Response(generate_latest(found.registry), media_type=CONTENT_TYPE_LATEST)
