"""`stalwart demo`, `stalwart worker` and `stalwart serve`: the commands that run Stalwart
(registered on the root command by `stalwart.cli.main`)."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import signal
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from stalwart.cli import output as ui
from stalwart.cli.context import State, fail, run_async, state_of, usage
from stalwart.errors import StalwartError, UsageError
from stalwart.settings import Settings
from stalwart.store import open_store
from stalwart.types import redact_url
from stalwart.worker.ready import ready_file_check, ready_file_remove, ready_file_write


def demo(
    ctx: typer.Context,
    resume: Annotated[
        bool, typer.Option(help="Keep the demo database; run the workers again until quiet.")
    ] = False,
    serve: Annotated[
        bool,
        typer.Option(help="Then serve the API and web UI on the demo database until Ctrl-C."),
    ] = True,
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port of the server.")] = 8000,
) -> None:
    """Run the example workflows offline against a flaky local service (from the repo root),
    then serve the web UI on the result (under CI=true it starts, checks and stops)."""
    state = state_of(ctx)
    url = state.settings.database_url
    if url == Settings.model_fields["database_url"].default:
        url = "sqlite:///.demo/stalwart.db"
    sys.path.insert(0, str(Path.cwd()))
    try:
        demo_module: Any = importlib.import_module("examples.demo")
    except ImportError as exc:
        ui.err.print(
            f"[red]error:[/] the demo lives in examples/ of the repository ({exc}); run it from "
            "the repository root"
        )
        raise typer.Exit(1) from None
    try:
        code = demo_module.run(database_url=url, resume=resume, serve=serve, port=port)
    except StalwartError as exc:  # e.g. a database a newer Stalwart migrated
        fail(exc)
    raise typer.Exit(code)


LogFormatOption = Annotated[
    str | None,
    typer.Option(
        help="auto (text on a terminal, else JSON lines), json or text "
        "(default: STALWART_LOG_FORMAT, else auto).",
        show_default=False,
    ),
]


def _configure_logs(state: State, level: str, fmt: str | None) -> bool:
    """Log lines to stderr in the chosen format; True when they are JSON."""
    from stalwart.observability.logs import configure_logging, resolve_format

    chosen = (fmt or state.settings.log_format).lower()
    if chosen not in ("auto", "json", "text"):
        raise usage(f"--log-format must be auto, json or text, not {fmt!r}")
    try:
        configure_logging(level, chosen)
    except ValueError:
        raise usage(f"--log-level must be debug, info, warning or error, not {level!r}") from None
    return resolve_format(chosen, sys.stderr) == "json"


def _announce(as_json: bool, text: str, **fields: Any) -> None:
    """A line for the operator: a log line when logs are JSON (stderr stays all JSON)."""
    if as_json:
        logging.getLogger("stalwart.cli").info(text, extra=fields)
    else:
        ui.err.print(text)


def worker(
    ctx: typer.Context,
    concurrency: Annotated[int | None, typer.Option(min=1, help="Steps run at once.")] = None,
    worker_id: Annotated[str | None, typer.Option(help="Default: host:pid.")] = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning, error.")] = "info",
    log_format: LogFormatOption = None,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            min=0,
            max=65535,
            help="Serve Prometheus metrics at http://HOST:PORT/metrics (the whole deployment's, "
            "read from the database, plus this process's).",
            show_default=False,
        ),
    ] = None,
    metrics_host: Annotated[
        str, typer.Option(help="Interface for --metrics-port (0.0.0.0: every interface).")
    ] = "127.0.0.1",
    ready_file: Annotated[
        Path | None,
        typer.Option(
            help="Write this file (JSON: worker, host, pid) once the worker is ready to claim, "
            "and remove it when it drains: readiness for probes and scripts, whatever the "
            "log level.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Run a worker until SIGTERM or Ctrl-C (then drain: finish or release running steps)."""
    state = state_of(ctx)
    as_json = _configure_logs(state, log_level, log_format)

    async def go() -> None:
        if ready_file is not None:
            ready_file_check(ready_file)
        app = state.app()
        store = app.store()
        await app.client(store).migrate()
        await app.load_mcp_async()  # list MCP servers' tools off the event loop
        w = app.worker(store=store, concurrency=concurrency, worker_id=worker_id)
        loop = asyncio.get_running_loop()
        metrics = None
        if metrics_port is not None:
            from stalwart.observability.metrics import serve_metrics

            try:
                metrics = serve_metrics(
                    store,
                    port=metrics_port,
                    host=metrics_host,
                    workers=lambda: [w],
                    live_seconds=app.settings.lease_seconds,
                )
            except OSError as exc:
                raise UsageError(f"--metrics-port {metrics_port}: {exc}") from None

        def stop() -> None:
            if ready_file is not None:
                ready_file_remove(ready_file)  # draining: no longer ready for work
            w.stop()

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop)
        await w.start()
        _announce(
            as_json,
            f"worker {w.worker_id} (host {w.host}, pid {w.pid}) on {redact_url(store.url)}, "
            f"concurrency {w.concurrency}"
            + (f"; recovered {w.reclaimed} leases of its earlier life" if w.reclaimed else "")
            + (f"; metrics on {metrics.url}" if metrics is not None else "")
            + "; Ctrl-C or SIGTERM to drain and stop",
            action="worker_ready",
            worker=w.worker_id,
        )
        try:
            if ready_file is not None:
                ready_file_write(ready_file, worker=w.worker_id, host=w.host)
            await w.run()
        finally:
            if ready_file is not None:
                ready_file_remove(ready_file)
            if metrics is not None:
                metrics.close()
            await store.close()
        if w.failed:
            raise typer.Exit(1)

    run_async(go)


def serve(
    ctx: typer.Context,
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="TCP port.")] = 8000,
    workers: Annotated[
        int, typer.Option(min=0, help="Workers in this process (0: API and UI only).")
    ] = 1,
    log_level: Annotated[str, typer.Option(help="debug, info, warning, error.")] = "info",
    log_format: LogFormatOption = None,
) -> None:
    """Serve the HTTP API, the web UI (/ui) and, by default, a worker, on one port, until
    SIGTERM or Ctrl-C (then drain)."""
    from stalwart.api.server import config

    state = state_of(ctx)
    as_json = _configure_logs(state, log_level, log_format)
    app = state.app()

    async def migrate() -> None:
        store = open_store(app.settings.database_url, app.settings)
        try:
            await app.client(store).migrate()
        finally:
            await store.close()

    run_async(migrate)
    # uvicorn's loggers go through the handler configured above (log_config=None).
    cfg = config(
        app, host=host, port=port, workers=workers, log_level=log_level.lower(), log_config=None
    )
    shown = f"[{host}]" if ":" in host else host
    _announce(
        as_json,
        f"serving {redact_url(app.settings.database_url)} on http://{shown}:{port} "
        f"(API /v1, docs /docs, UI /ui) with {workers} worker(s); Ctrl-C to stop",
        action="server_ready",
    )
    import uvicorn

    # uvicorn drains on the first SIGINT/SIGTERM, then re-raises it: that is the normal end.
    with contextlib.suppress(KeyboardInterrupt):
        uvicorn.Server(cfg).run()
