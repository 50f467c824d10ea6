"""`stalwart`: submit and run jobs, review risky steps, redrive dead letters, migrate.

Global options come once, before the command: `stalwart --database-url sqlite:///x.db --json
jobs list`. Each is also an environment variable (`STALWART_DATABASE_URL`, `STALWART_APP`).
Every user error prints one line and exits non-zero.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import importlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from pydantic import BaseModel, ValidationError
from rich.markup import escape

from stalwart.app import App
from stalwart.cli import memory as memory_commands
from stalwart.cli import output as ui
from stalwart.cli.loading import load_app, open_existing
from stalwart.client import Client
from stalwart.domain.budgets import ledger_totals, to_usd
from stalwart.domain.states import JOB_PARKED, JOB_TERMINAL
from stalwart.errors import PlanValidationError, StalwartError, UsageError, error_body
from stalwart.settings import Settings
from stalwart.store import Store, open_store
from stalwart.types import redact_url
from stalwart.worker.ready import ready_file_check, ready_file_remove, ready_file_write

T = TypeVar("T")

cli = typer.Typer(
    name="stalwart",
    help="A durable runtime for production LLM agents.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
jobs_cli = typer.Typer(help="List, inspect and cancel jobs.", no_args_is_help=True)
review_cli = typer.Typer(help="The human approval queue.", no_args_is_help=True)
dlq_cli = typer.Typer(help="Dead letters: inspect and redrive.", no_args_is_help=True)
plan_cli = typer.Typer(help="Validate templates and show plans.", no_args_is_help=True)
db_cli = typer.Typer(help="Database schema.", no_args_is_help=True)
workers_cli = typer.Typer(help="Workers: who is alive and what each holds.", no_args_is_help=True)
limits_cli = typer.Typer(
    help="Shared limits: concurrency caps, rate limits, pauses, breakers.", no_args_is_help=True
)
cli.add_typer(jobs_cli, name="jobs")
cli.add_typer(review_cli, name="review")
cli.add_typer(dlq_cli, name="dlq")
cli.add_typer(plan_cli, name="plan")
cli.add_typer(db_cli, name="db")
cli.add_typer(workers_cli, name="workers")
budgets_cli = typer.Typer(
    help="LLM budgets: limits, spend and reservations per job and tenant.", no_args_is_help=True
)
keys_cli = typer.Typer(
    help="API keys: one per service or person, with a tenant and a role.", no_args_is_help=True
)
cli.add_typer(keys_cli, name="keys")
cli.add_typer(limits_cli, name="limits")
cli.add_typer(budgets_cli, name="budgets")


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


_CURRENT: ContextVar[State | None] = ContextVar("stalwart_cli_state", default=None)


def _state(ctx: typer.Context) -> State:
    state = ctx.find_root().obj
    assert isinstance(state, State)
    return state


def _run(coro_fn: Callable[[], Awaitable[T]]) -> T:
    async def main() -> T:
        return await coro_fn()

    try:
        return asyncio.run(main())
    except StalwartError as exc:
        _fail(exc)
    except ValidationError as exc:
        ui.err.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from None


def _fail(exc: StalwartError) -> NoReturn:
    _report(exc)
    raise typer.Exit(1)


def _report(exc: StalwartError) -> None:
    """One error on stderr: a line for people, or with --json the API's error body."""
    state = _CURRENT.get()
    if state is not None and state.json:
        print(json.dumps(error_body(exc), default=str), file=sys.stderr)
    else:
        # The message is the user's text (step ids like `steps[fetch]`), never rich markup.
        ui.err.print(f"[red]error:[/] {escape(exc.message)}", markup=True, highlight=False)
        if isinstance(exc, PlanValidationError) and len(exc.problems) > 1:
            for problem in exc.problems:
                line = f"  - {problem['step'] or '<plan>'}: {problem['problem']}"
                ui.err.print(line, markup=False, highlight=False)


@cli.callback()
def main_options(
    ctx: typer.Context,
    database_url: Annotated[
        str | None,
        typer.Option(
            help="sqlite:///path.db or postgresql://user:pass@host/db (env: STALWART_DATABASE_URL)",
            show_default=False,
        ),
    ] = None,
    app: Annotated[
        str | None,
        typer.Option(help="Your app as module:attribute (env: STALWART_APP)", show_default=False),
    ] = None,
    tenant: Annotated[
        str | None, typer.Option(help="Act for this tenant (default: all for reads).")
    ] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """A durable runtime for production LLM agents."""
    overrides: dict[str, Any] = {}
    if database_url:
        overrides["database_url"] = database_url
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        ui.err.print(f"[red]error:[/] invalid setting: {exc.errors()[0]['msg']}")
        raise typer.Exit(2) from None
    ctx.obj = State(
        settings,
        app or settings.app,
        json_output,
        tenant,
        url_given=bool(database_url) or "STALWART_DATABASE_URL" in os.environ,
    )
    _CURRENT.set(ctx.obj)


# -- demo and worker ------------------------------------------------------------------------------


@cli.command()
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
    state = _state(ctx)
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
        _fail(exc)
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
        raise _usage(f"--log-format must be auto, json or text, not {fmt!r}")
    try:
        configure_logging(level, chosen)
    except ValueError:
        raise _usage(f"--log-level must be debug, info, warning or error, not {level!r}") from None
    return resolve_format(chosen, sys.stderr) == "json"


def _announce(as_json: bool, text: str, **fields: Any) -> None:
    """A line for the operator: a log line when logs are JSON (stderr stays all JSON)."""
    if as_json:
        logging.getLogger("stalwart.cli").info(text, extra=fields)
    else:
        ui.err.print(text)


@cli.command()
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
    state = _state(ctx)
    as_json = _configure_logs(state, log_level, log_format)

    async def go() -> None:
        if ready_file is not None:
            ready_file_check(ready_file)
        app = state.app()
        store = app.store()
        await store.migrate()
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

    _run(go)


@cli.command()
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

    state = _state(ctx)
    as_json = _configure_logs(state, log_level, log_format)
    app = state.app()

    async def migrate() -> None:
        store = open_store(app.settings.database_url, app.settings)
        try:
            await store.migrate()
        finally:
            await store.close()

    _run(migrate)
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


# -- workers and limits ---------------------------------------------------------------------------


@workers_cli.command("list")
def workers_list(
    ctx: typer.Context,
    all_: Annotated[bool, typer.Option("--all", help="Include workers that stopped.")] = False,
) -> None:
    """Live and dead workers (a worker is dead when its heartbeat is older than the lease time),
    with the steps each holds."""
    state = _state(ctx)

    found = _with_store(
        state,
        lambda store: store.worker_list(
            live_seconds=state.settings.lease_seconds, include_stopped=all_
        ),
    )
    if state.json:
        ui.dump_json([w.to_dict() for w in found])
        return
    if not found:
        ui.out.print("no workers registered")
        return
    ui.out.print(
        ui.table(
            None,
            ["id", "host", "pid", "status", "heartbeat", "started", "slots", "holding"],
            [
                (
                    w.id,
                    w.host,
                    str(w.pid),
                    ui.status(w.status),
                    ui.ago(w.heartbeat),
                    ui.ago(w.started),
                    f"{len(w.holding)}/{w.concurrency}",
                    ui.short(", ".join(f"{h['job_id']}/{h['step']}" for h in w.holding), 60),
                )
                for w in found
            ],
        )
    )


def _breaker(lim: Any) -> str:
    if not lim.breaker_failures:
        return str(lim.breaker_state) if lim.breaker_state != "closed" else "-"
    return f"{lim.breaker_state} ({lim.breaker_count}/{lim.breaker_failures} failures)"


@limits_cli.command("list")
def limits_list(ctx: typer.Context) -> None:
    """Every limited tool and tenant: slots in use, tokens left, pauses, breaker state."""
    state = _state(ctx)

    found = _with_store(state, lambda store: store.limit_list())
    if state.json:
        ui.dump_json([lim.to_dict() for lim in found])
        return
    if not found:
        ui.out.print("no limits")
        return
    ui.out.print(
        ui.table(
            None,
            ["key", "running/cap", "rate", "tokens", "paused", "breaker"],
            [
                (
                    lim.key,
                    f"{lim.in_use}/{lim.concurrency}" if lim.concurrency else "-",
                    f"{lim.rate:g}/s" if lim.rate else "-",
                    f"{lim.tokens:g}" if lim.tokens is not None else "-",
                    f"{ui.ago(lim.paused_until)} ({lim.pause_reason})" if lim.paused_until else "-",
                    _breaker(lim),
                )
                for lim in found
            ],
        )
    )


def _usd(nanos: int | None) -> str:
    amount = to_usd(nanos)
    return "-" if amount is None else f"${amount:.6f}"


@budgets_cli.command("list")
def budgets_list(ctx: typer.Context) -> None:
    """Every budget of the tenant (all tenants without --tenant): limit, spent, held by calls in
    flight, and whether its warning fired."""
    state = _state(ctx)
    found = _with_store(state, lambda store: store.budget_list(tenant_id=state.tenant))
    if state.json:
        ui.dump_json([b.to_dict() for b in found])
        return
    if not found:
        ui.out.print("no budgets yet: they appear with the first model call")
        return
    ui.out.print(
        ui.table(
            None,
            ["budget", "limit", "spent", "in flight", "tokens", "warned"],
            [
                (
                    b.key,
                    _usd(b.limit_nanos),
                    _usd(b.spent_nanos),
                    _usd(b.reserved_nanos),
                    f"{b.spent_tokens}" + (f"/{b.limit_tokens}" if b.limit_tokens else ""),
                    "yes" if b.warned else "-",
                )
                for b in found
            ],
        )
    )


# -- submit ---------------------------------------------------------------------------------------


@cli.command()
def submit(
    ctx: typer.Context,
    workflow: Annotated[str, typer.Argument(help="The workflow's name.")],
    input: Annotated[
        str | None, typer.Option("--input", "-i", help="Input as JSON, or @file.json.")
    ] = None,
    idempotency_key: Annotated[str | None, typer.Option(help="Deduplicate on this key.")] = None,
    priority: Annotated[int, typer.Option(help="Higher runs first.")] = 0,
    wait: Annotated[
        bool, typer.Option(help="Wait until the job finishes or waits for a human.")
    ] = False,
    timeout: Annotated[float, typer.Option(help="Seconds --wait waits.")] = 300.0,
    exit_code: Annotated[
        bool,
        typer.Option(
            "--exit-code",
            help="Wait (implies --wait), then exit with a status that says how the job ended: "
            "0 completed, 3 failed, 4 dead_lettered, 5 rejected, 6 escalated, 7 cancelled, "
            "8 waiting for a reviewer, 9 still running when --timeout ran out.",
        ),
    ] = False,
) -> None:
    """Submit a job (validated and planned now; a worker runs it)."""
    state = _state(ctx)
    data = _read_input(input)

    async def go() -> str:
        app = state.app()
        store = app.store()
        await store.migrate()
        result = await Client(store, app=app).submit(
            workflow,
            data,
            tenant=state.tenant,
            idempotency_key=idempotency_key,
            priority=priority,
        )
        job = result.job
        if wait or exit_code:
            job = await _wait(Client(store), job.id, timeout, quiet=state.json)
        if state.json:
            ui.dump_json({"created": result.created, "job": job.to_dict()})
        else:
            verb = "submitted" if result.created else "duplicate of"
            ui.out.print(f"{verb} job [bold]{job.id}[/] ({job.workflow}): {ui.status(job.status)}")
        await store.close()
        return str(job.status)

    ended = _run(go)
    if exit_code:
        raise typer.Exit(JOB_EXIT_CODES.get(ended, EXIT_STILL_RUNNING))


# `submit --exit-code`: how the job ended, as the exit status (1 and 2 stay Stalwart's own errors
# and usage mistakes). Documented in docs/reference/cli.md#submit; never renumber.
JOB_EXIT_CODES = {
    "completed": 0,
    "failed": 3,
    "dead_lettered": 4,
    "rejected": 5,
    "escalated": 6,
    "cancelled": 7,
    "waiting_approval": 8,
}
EXIT_STILL_RUNNING = 9


def _read_input(text: str | None) -> dict[str, Any]:
    if text is None:
        return {}
    if text.startswith("@"):
        try:
            text = Path(text[1:]).read_text(encoding="utf-8")
        except OSError as exc:
            raise _usage(f"--input: cannot read {text[1:]}: {exc.strerror}", "input") from exc
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _usage(
            f"--input is not valid JSON: {exc.msg} at column {exc.colno}", "input"
        ) from exc
    if not isinstance(value, dict):
        raise _usage("--input must be a JSON object", "input")
    return value


def _usage(message: str, field: str | None = None) -> typer.Exit:
    _report(UsageError(message, field=field))
    return typer.Exit(2)


async def _wait(client: Client, job_id: str, wait_seconds: float, *, quiet: bool) -> Any:
    deadline = time.monotonic() + wait_seconds
    job = await client.get(job_id)
    with ui.err.status(f"job {job_id}: {job.status}", spinner="dots") as spinner:
        while job.status not in JOB_TERMINAL | JOB_PARKED and job.status != "waiting_approval":
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
            job = await client.get(job_id)
            steps = await client.steps(job_id)
            done = sum(1 for s in steps if s.status in ("succeeded", "skipped"))
            if not quiet:
                spinner.update(f"job {job_id}: {job.status} ({done}/{len(steps)} steps done)")
    return job


# -- jobs -----------------------------------------------------------------------------------------


def _with_store(state: State, fn: Callable[[Store], Awaitable[T]]) -> T:
    """Run `fn` on the existing, migrated store, closed afterwards."""

    async def go() -> T:
        store: Store = await open_existing(state.settings)
        try:
            return await fn(store)
        finally:
            await store.close()

    return _run(go)


def _client(state: State, fn: Callable[[Client], Awaitable[T]]) -> T:
    return _with_store(state, lambda store: fn(Client(store, settings=state.settings)))


@jobs_cli.command("list")
def jobs_list(
    ctx: typer.Context,
    status: Annotated[list[str] | None, typer.Option(help="Filter by status (repeatable).")] = None,
    workflow: Annotated[str | None, typer.Option(help="Filter by workflow.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 50,
    before: Annotated[str | None, typer.Option(help="Page: jobs older than this id.")] = None,
) -> None:
    """Jobs, newest first."""
    state = _state(ctx)
    jobs = _client(
        state,
        lambda c: c.list(
            tenant=state.tenant,
            statuses=status or (),
            workflow=workflow,
            limit=limit,
            before=before,
        ),
    )
    if state.json:
        ui.dump_json([j.to_dict() for j in jobs])
        return
    if not jobs:
        ui.out.print("no jobs" + (" match" if status or workflow else " yet"))
        return
    ui.out.print(
        ui.table(
            None,
            ["id", "workflow", "status", "tenant", "plan", "steps run", "created"],
            [
                (
                    j.id,
                    j.workflow,
                    ui.status(j.status) + (" [red]corrupt[/]" if j.corrupt else ""),
                    j.tenant_id,
                    f"v{j.plan_version}",
                    j.steps_executed,
                    ui.when(j.created),
                )
                for j in jobs
            ],
        )
    )
    for j in jobs:
        if j.corrupt:  # listed with what could be read; the worker quarantines the job
            ui.out.print(f"job {j.id} is corrupt: {j.corrupt}", markup=False)


@jobs_cli.command("show")
def jobs_show(ctx: typer.Context, job_id: str) -> None:
    """A job: its steps, attempts, outputs and event timeline."""
    state = _state(ctx)

    async def fetch(c: Client) -> tuple[Any, Any, Any, Any]:
        return (
            await c.get(job_id, tenant=state.tenant),
            await c.steps(job_id, tenant=state.tenant),
            await c.events(job_id, tenant=state.tenant),
            await c.llm_calls(job_id, tenant=state.tenant),
        )

    job, steps, events, calls = _client(state, fetch)
    totals = ledger_totals(calls)
    if state.json:
        ui.dump_json(
            {
                "job": job.to_dict(),
                "steps": [s.to_dict() for s in steps],
                "events": [e.to_dict() for e in events],
                "llm_calls": [c.to_dict() for c in calls],
                "llm_totals": totals,
            }
        )
        return
    ui.out.print(
        f"[bold]{job.id}[/]  {job.workflow}  {ui.status(job.status)}"
        + ("  [yellow](degraded)[/]" if job.degraded else "")
    )
    ui.out.print(
        f"tenant {job.tenant_id}  plan v{job.plan_version} ({job.template_name}, "
        f"{(job.template_hash or '')[:12]})  replans {job.replans}/{job.max_replans}  "
        f"created {ui.when(job.created)}"
    )
    if job.error:
        ui.out.print(f"[red]error:[/] {job.error.get('message')}")
    ui.out.print(
        ui.table(
            "steps",
            ["step", "kind/tool", "status", "attempts", "arguments", "output / error"],
            [
                (
                    s.key,
                    s.tool or s.kind,
                    ui.status(s.status),
                    f"{s.attempt}/{s.max_attempts}",
                    "-" if s.args is None else ui.short(s.args, 60),
                    ui.short(
                        s.error.get("message") if s.error and s.status != "succeeded" else s.output
                    ),
                )
                for s in steps
            ],
        )
    )
    if calls:
        ui.out.print(
            ui.table(
                "llm calls",
                ["step", "model", "tier", "outcome", "tokens in/out (cached)", "cost", "ms"],
                [
                    (
                        c.step_key or c.purpose or "-",
                        f"{c.provider}:{c.model}",
                        c.tier or "-",
                        ui.status(c.outcome) if c.outcome != "cached" else "cache hit",
                        f"{c.input_tokens}/{c.output_tokens} ({c.cached_tokens})",
                        _usd(c.cost_nanos) if c.priced else "unpriced",
                        f"{c.latency_ms:.0f}" if c.latency_ms is not None else "-",
                    )
                    for c in calls
                ],
            )
        )
        ui.out.print(
            f"llm totals: {totals['calls']} calls ({totals['cache_hits']} cache hits, "
            f"{totals['refused']} refused), {totals['input_tokens']} tokens in, "
            f"{totals['output_tokens']} out, ${totals['cost_usd']:.6f}"
        )
    ui.out.print(
        ui.table(
            "timeline",
            ["at", "event", "step", "actor", "reason"],
            [
                (f"{ui.when(e.at)}", e.kind, e.step_key or "", e.actor, ui.short(e.reason, 70))
                for e in events
            ],
        )
    )


@jobs_cli.command("trace")
def jobs_trace(ctx: typer.Context, job_id: str) -> None:
    """A job's trace as a tree: planning, each step attempt, its tool run and model calls,
    approvals; with times from the job's start, durations, tokens and cost. Rebuilt from the
    stored events and ledger: no trace collector needed."""
    from rich.console import Console

    from stalwart.observability.timeline import build_trace, trace_totals

    state = _state(ctx)

    async def fetch(c: Client) -> Any:
        job = await c.get(job_id, tenant=state.tenant)
        events = await c.events(job_id, tenant=state.tenant)
        while events and len(events) % 1000 == 0:  # a page was full: read on
            more = await c.events(job_id, tenant=state.tenant, after_id=events[-1].id)
            if not more:
                break
            events += more
        return build_trace(
            job,
            await c.steps(job_id, tenant=state.tenant, all_versions=True),
            events,
            await c.llm_calls(job_id, tenant=state.tenant),
            await c.plans(job_id, tenant=state.tenant),
        )

    root = _client(state, fetch)
    totals = trace_totals(root)
    if state.json:
        ui.dump_json(
            {
                "job_id": root.attributes["job_id"],
                "trace_id": root.attributes.get("trace_id"),
                "totals": totals,
                "root": root.to_dict(),
            }
        )
        return
    # Not on a terminal (a pipe, a file): whole lines, never cut at 80 columns.
    wide = ui.out if ui.out.is_terminal else Console(highlight=False, soft_wrap=True, width=1000)
    wide.print(_trace_tree(root, time.time()))
    ui.out.print(
        f"total: {_count(totals['steps'], 'step')}, {_count(totals['attempts'], 'attempt')} "
        f"({totals['failed_attempts']} failed), {_count(totals['model_calls'], 'model call')} "
        f"({totals['cache_hits']} from cache), {totals['input_tokens']} tokens in, "
        f"{totals['output_tokens']} out, ${totals['cost_usd']:.6f}"
    )
    if root.attributes.get("trace_id"):
        ui.out.print(f"trace id: {root.attributes['trace_id']}")


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _trace_tree(root: Any, now: float) -> Any:
    """The trace as a rich Tree: one line a span, times from the job's start."""
    from rich.markup import escape
    from rich.tree import Tree

    from stalwart.observability.timeline import LLM, MARKER, PLAN, STEP, format_duration

    styles = {"ok": "green", "error": "red"}

    def label(node: Any) -> str:
        a = node.attributes
        name = node.name + (f" #{a['attempt']}" if node.kind == STEP else "")
        if node.kind == STEP and root.attributes.get("plan_version", 1) > 1:
            name += f" (plan v{a.get('plan_version', '?')})"
        parts = [f"[bold]{escape(name)}[/]", f"[dim]+{node.start - root.start:.2f}s[/]"]
        if node.kind != MARKER:
            took = format_duration(node.extent(now))
            parts.append(took if node.end is not None else f"{took} so far")
            style = styles.get(node.status)
            outcome = escape(node.outcome or node.status)
            parts.append(f"[{style}]{outcome}[/]" if style else outcome)
        if node.kind == PLAN and a.get("version") is not None:
            parts.append(f"v{a['version']} {escape(str(a.get('template') or ''))}".rstrip())
        chats = [n for n in node.walk() if n.kind == LLM]
        if node.kind in (LLM, STEP, PLAN) and chats:
            tokens_in = sum(n.attributes["input_tokens"] for n in chats)
            tokens_out = sum(n.attributes["output_tokens"] for n in chats)
            nanos = sum(n.attributes["cost_nanos"] for n in chats)
            parts.append(f"{tokens_in} in / {tokens_out} out tokens  {_usd(nanos)}")
            if node.kind == LLM and a.get("cache_hit"):
                parts.append("cache hit")
        if a.get("error_class"):
            parts.append(f"[red]{escape(str(a['error_class']))}[/]")
        if a.get("reviewer"):
            parts.append(f"by {escape(str(a['reviewer']))}")
        if node.kind == MARKER and a.get("reason"):
            parts.append(f"[dim]{escape(ui.short(a['reason'], 90))}[/]")
        return "  ".join(parts)

    def grow(tree: Any, node: Any) -> None:
        for child in node.children:
            grow(tree.add(label(child)), child)

    top = Tree(f"{label(root)}  job {escape(root.attributes['job_id'])}")
    grow(top, root)
    return top


@jobs_cli.command("cancel")
def jobs_cancel(
    ctx: typer.Context,
    job_id: str,
    reason: Annotated[str, typer.Option(help="Recorded in the audit trail.")] = "",
    actor: Annotated[str, typer.Option(help="Who cancels.")] = "cli",
) -> None:
    """Cancel a job: pending steps stop; running tools see the flag within one heartbeat."""
    state = _state(ctx)
    job = _client(
        state, lambda c: c.cancel(job_id, tenant=state.tenant, actor=actor, reason=reason)
    )
    if state.json:
        ui.dump_json(job.to_dict())
    else:
        ui.out.print(f"job {job.id}: {ui.status(job.status)}")


# -- review ---------------------------------------------------------------------------------------


@review_cli.command("list")
def review_list(
    ctx: typer.Context,
    all_: Annotated[bool, typer.Option("--all", help="Include decided reviews.")] = False,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 50,
) -> None:
    """Reviews waiting for a decision, oldest first, with time left on their SLA."""
    state = _state(ctx)
    statuses = () if all_ else ("pending", "escalated")
    reviews = _client(
        state, lambda c: c.reviews(tenant=state.tenant, statuses=statuses, limit=limit)
    )
    if state.json:
        ui.dump_json([r.to_dict() for r in reviews])
        return
    if not reviews:
        ui.out.print("no reviews waiting" if not all_ else "no reviews")
        return
    ui.out.print(
        ui.table(
            None,
            ["id", "job", "step", "kind", "status", "asked", "SLA"],
            [
                (
                    r.id,
                    r.job_id,
                    r.step_key,
                    r.kind,
                    ui.status(r.status),
                    ui.short(r.asked, 60),
                    ui.ago(r.sla_deadline),
                )
                for r in reviews
            ],
        )
    )


@review_cli.command("show")
def review_show(ctx: typer.Context, review_id: str) -> None:
    """One review: why, what is asked, the options and their impact, the context."""
    state = _state(ctx)
    review = _client(state, lambda c: c.review(review_id, tenant=state.tenant))
    if state.json:
        ui.dump_json(review.to_dict())
        return
    ui.out.print(
        f"[bold]{review.id}[/]  {ui.status(review.status)}  job {review.job_id}  "
        f"step {review.step_key}  ({review.kind})"
    )
    ui.out.print(f"why:    {review.reason}")
    ui.out.print(f"asked:  {review.asked}")
    for option in review.options:
        ui.out.print(f"  - {option.get('name')}: {option.get('impact', '')}")
    ui.out.print(f"SLA:    {ui.when(review.sla_deadline)}")
    if review.decision:
        ui.out.print(
            f"decided {review.decision} by {review.decided_by} "
            f"{ui.when(review.decided)}: {review.comment or ''}"
        )
    if review.arguments is not None:
        ui.out.print("arguments:")
        ui.out.print_json(json.dumps(review.arguments, default=str))
    ui.out.print("context:")
    ui.out.print_json(json.dumps(review.context, default=str))


def _decide(ctx: typer.Context, review_id: str, approve: bool, reviewer: str, comment: str) -> None:
    state = _state(ctx)

    async def go(c: Client) -> Any:
        if approve:
            return await c.approve(
                review_id, reviewer=reviewer, comment=comment, tenant=state.tenant
            )
        return await c.reject(review_id, reviewer=reviewer, comment=comment, tenant=state.tenant)

    review = _client(state, go)
    if state.json:
        ui.dump_json(review.to_dict())
    else:
        ui.out.print(
            f"review {review.id}: {ui.status(review.status)} by {review.decided_by}; "
            f"job {review.job_id} step {review.step_key}"
        )


@review_cli.command("approve")
def review_approve(
    ctx: typer.Context,
    review_id: str,
    reviewer: Annotated[str, typer.Option(help="Who approves (recorded).")],
    comment: Annotated[str, typer.Option(help="Recorded in the audit trail.")] = "",
) -> None:
    """Approve: the step becomes ready and a worker runs it."""
    _decide(ctx, review_id, True, reviewer, comment)


@review_cli.command("reject")
def review_reject(
    ctx: typer.Context,
    review_id: str,
    reviewer: Annotated[str, typer.Option(help="Who rejects (recorded).")],
    comment: Annotated[
        str, typer.Option(help="Why; fed to the replanner if the policy replans.")
    ] = "",
) -> None:
    """Reject: the step does not run; the job fails or replans, per the workflow's policy."""
    _decide(ctx, review_id, False, reviewer, comment)


# -- dead letters ---------------------------------------------------------------------------------


@dlq_cli.command("list")
def dlq_list(
    ctx: typer.Context,
    all_: Annotated[bool, typer.Option("--all", help="Include redriven and closed.")] = False,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 50,
) -> None:
    """Dead-lettered and escalated jobs waiting for an operator."""
    state = _state(ctx)
    statuses = () if all_ else ("open",)
    letters = _client(
        state, lambda c: c.dead_letters(tenant=state.tenant, statuses=statuses, limit=limit)
    )
    if state.json:
        ui.dump_json([d.to_dict() for d in letters])
        return
    if not letters:
        ui.out.print("no dead letters")
        return
    ui.out.print(
        ui.table(
            None,
            ["id", "job", "workflow", "step", "reason", "status", "created"],
            [
                (
                    d.id,
                    d.job_id,
                    d.workflow,
                    d.step_key,
                    ui.short(d.reason, 70),
                    ui.status(d.status),
                    ui.ago(d.created),
                )
                for d in letters
            ],
        )
    )


@dlq_cli.command("show")
def dlq_show(ctx: typer.Context, dead_letter_id: str) -> None:
    """One dead letter (by its id or its job's id): the error and its full context."""
    state = _state(ctx)
    letter = _client(state, lambda c: c.dead_letter(dead_letter_id, tenant=state.tenant))
    if state.json:
        ui.dump_json(letter.to_dict())
        return
    ui.out.print(
        f"[bold]{letter.id}[/]  {ui.status(letter.status)}  job {letter.job_id} "
        f"({letter.workflow})" + (f"  step {letter.step_key}" if letter.step_key else "")
    )
    ui.out.print(f"reason: {letter.reason}")
    if letter.error:
        ui.out.print(
            f"error:  {letter.error.get('error_class')}: {letter.error.get('message')}",
            markup=False,
        )
    ui.out.print("context:")
    ui.out.print_json(json.dumps(letter.context, default=str))
    ui.out.print(f"redrive with: stalwart dlq redrive {letter.job_id}")


@dlq_cli.command("redrive")
def dlq_redrive(
    ctx: typer.Context,
    job_id: Annotated[str, typer.Argument(help="The job's id (or the dead letter's id).")],
    actor: Annotated[str, typer.Option(help="Who redrives (recorded).")] = "cli",
    reason: Annotated[str, typer.Option(help="Recorded in the audit trail.")] = "",
) -> None:
    """Resume from the failed step; completed steps never run again."""
    state = _state(ctx)
    job = _client(
        state, lambda c: c.redrive(job_id, tenant=state.tenant, actor=actor, reason=reason)
    )
    if state.json:
        ui.dump_json(job.to_dict())
    else:
        ui.out.print(f"job {job.id}: {ui.status(job.status)}; a worker picks up its failed step")


# -- plans ----------------------------------------------------------------------------------------


@plan_cli.command("validate")
def plan_validate(
    ctx: typer.Context,
    files: Annotated[list[Path], typer.Argument(help="Template YAML files.")],
    workflow: Annotated[
        str | None, typer.Option(help="Check against this workflow's allowed tools.")
    ] = None,
    input: Annotated[
        str | None, typer.Option("--input", "-i", help="Bind this input (JSON or @file).")
    ] = None,
) -> None:
    """Validate templates against your app's tools; every problem listed with its step id."""
    from stalwart.planning.templates import load_template
    from stalwart.planning.validation import template_problems
    from stalwart.planning.workflows import Workflow

    state = _state(ctx)
    data = _read_input(input)

    def check() -> list[dict[str, Any]]:
        app = state.app()
        results = []
        for file in files:
            template = load_template(file)
            flow = app.workflows.get(workflow) if workflow else None
            if workflow and flow is None:
                raise UsageError(f"no workflow named {workflow!r}", field="workflow")
            base = flow or Workflow(name="<template>", input_model=BaseModel, templates=(template,))
            # Input references are checked against the input model even without an input: the
            # given workflow's, or that of the workflows that register this very template.
            digest = template.template_hash()
            owners = [flow] if flow else app.workflows.values()
            models = {
                w.input_model
                for w in owners
                if w is flow or any(t.template_hash() == digest for t in w.templates)
            }
            problems = template_problems(template, models.pop() if len(models) == 1 else None)
            flagged = {(p["step"], "${" + p["reference"] + "}") for p in problems}
            try:
                app.planner().bind(base, template, data)
            except PlanValidationError as exc:
                problems += [
                    p
                    for p in exc.problems
                    if (
                        input is not None
                        or (
                            "the input has no" not in p["problem"]
                            and "was not bound" not in p["problem"]
                        )
                    )
                    and not any(s == p["step"] and r in p["problem"] for s, r in flagged)
                ]
            results.append({"file": str(file), "template": template.name, "problems": problems})
        return results

    async def go() -> list[dict[str, Any]]:
        return check()

    results = _run(go)
    bad = sum(len(r["problems"]) for r in results)
    if state.json:
        ui.dump_json(results)
    else:
        for r in results:
            if r["problems"]:
                ui.out.print(
                    f"[red]✗[/] {r['file']} ({r['template']}): {len(r['problems'])} problem(s)"
                )
                for p in r["problems"]:
                    ui.out.print(f"    {p['step'] or '<plan>'}: {p['problem']}", markup=False)
            else:
                ui.out.print(f"[green]✓[/] {r['file']} ({r['template']})")
    if bad:
        raise typer.Exit(1)


@plan_cli.command("show")
def plan_show(
    ctx: typer.Context,
    job_id: str,
    all_versions: Annotated[bool, typer.Option("--all", help="Every plan version.")] = False,
) -> None:
    """A job's plan: steps, dependencies, tools, approvals; with hashes."""
    state = _state(ctx)
    plans = _client(state, lambda c: c.plans(job_id, tenant=state.tenant))
    chosen = plans if all_versions else plans[-1:]
    if state.json:
        ui.dump_json([dataclasses.asdict(p) for p in chosen])
        return
    for p in chosen:
        ui.out.print(
            f"[bold]plan v{p.version}[/] of {p.job_id}: template {p.template_name} "
            f"({p.template_hash[:12]}), plan hash {p.plan_hash[:12]}"
        )
        ui.out.print(
            ui.table(
                None,
                ["step", "kind/tool", "depends on", "critical", "approval", "timeout", "retries"],
                [
                    (
                        s["id"],
                        s.get("tool") or s["kind"],
                        ", ".join(s["depends_on"]) or "-",
                        "yes" if s["critical"] else "no",
                        ui.short(s["requires_approval"], 40) if s["requires_approval"] else "-",
                        f"{s['timeout_seconds']}s" if s.get("timeout_seconds") else "-",
                        s["retry"]["max_attempts"],
                    )
                    for s in p.plan["steps"]
                ],
            )
        )


# -- API keys -------------------------------------------------------------------------------------


def _with_migrated_store(state: State, fn: Callable[[Store], Awaitable[T]]) -> T:
    """Run `fn` on the store, created and migrated if needed (keys come before `serve`)."""

    async def go() -> T:
        store = open_store(state.settings.database_url, state.settings)
        try:
            await store.migrate()
            return await fn(store)
        finally:
            await store.close()

    return _run(go)


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
    state = _state(ctx)
    # An explicit --tenant, even an empty one (refused below), is never swapped for the default.
    owner = tenant if tenant is not None else state.tenant or state.settings.default_tenant
    actor = f"cli:{os.environ.get('USER', 'unknown')}"
    created = _with_migrated_store(
        state,
        lambda store: Client(store, settings=state.settings).key_create(
            tenant=owner, role=role, name=name, actor=actor
        ),
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
    state = _state(ctx)
    found = _client(state, lambda c: c.keys(tenant=state.tenant, include_revoked=revoked))
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
    state = _state(ctx)
    actor = f"cli:{os.environ.get('USER', 'unknown')}"
    rec = _client(state, lambda c: c.key_revoke(key, tenant=state.tenant, actor=actor))
    if state.json:
        ui.dump_json(rec.to_dict())
        return
    ui.out.print(f"revoked key {rec.id} '{rec.name}' of tenant {rec.tenant_id!r}")


# -- database -------------------------------------------------------------------------------------


@db_cli.command("migrate")
def db_migrate(ctx: typer.Context) -> None:
    """Apply pending migrations (safe to run from several processes at once)."""
    state = _state(ctx)

    async def go() -> list[int]:
        store = open_store(state.settings.database_url, state.settings)
        try:
            return await store.migrate()
        finally:
            await store.close()

    applied = _run(go)
    if state.json:
        ui.dump_json({"applied": applied})
    elif applied:
        ui.out.print(
            f"applied migration(s) {', '.join(map(str, applied))} to "
            f"{redact_url(state.settings.database_url)}"
        )
    else:
        ui.out.print(f"{redact_url(state.settings.database_url)} is up to date")


@db_cli.command("status")
def db_status(ctx: typer.Context) -> None:
    """Applied and pending migrations."""
    state = _state(ctx)

    async def go() -> Any:
        store = open_store(state.settings.database_url, state.settings)
        try:
            return await store.migration_status()
        finally:
            await store.close()

    status = _run(go)
    if state.json:
        ui.dump_json(
            {"applied": status.applied, "pending": status.pending, "current": status.current}
        )
        return
    for version, name, applied in status.applied:
        ui.out.print(f"[green]applied[/]  {version:04d} {name}  {ui.when(applied)}")
    for version, name in status.pending:
        ui.out.print(f"[yellow]pending[/]  {version:04d} {name}")
    if not status.applied and not status.pending:
        ui.out.print("no migrations known")


# `stalwart memory ...` lives in its own module, lent this module's state and store helpers.
memory_commands.install(cli, state=_state, with_store=_with_migrated_store, fail=_fail)


def main() -> None:
    """Entry point of the `stalwart` command."""
    cli()


if __name__ == "__main__":
    main()
