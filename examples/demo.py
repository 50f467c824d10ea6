"""`stalwart demo`: the example workflows, offline, against a flaky local service.

The first run starts from an empty database, submits a few onboarding and invoice jobs, and runs
two workers (in this process) until nothing is left to do without a person. On the way the
service fails about one call in five, answers some too slowly, and one vendor is in an outage:

* random failures and timeouts are retried with backoff, and never repeat a side effect (every
  creating call carries the step's idempotency key);
* the enterprise onboarding ticket and the payment over 1000 EUR wait for a reviewer;
* the invoice of the vendor in outage runs out of attempts and is dead-lettered;
* a support agent (an `agent` step on a scripted model) looks up an order that was charged
  twice, checks the refund policy and refunds the duplicate once the support lead approves the
  call; the summary prints its transcript, turn by turn.

It ends by printing the commands to approve, redrive and `stalwart demo --resume`, which keeps
the database, restarts the service without the outage, and runs the workers again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import shlex
import socket
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from rich import box
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

from examples.app import SERVICE_URL_ENV, build_app
from examples.service import FlakyService
from stalwart import App, Client, Settings
from stalwart.api.server import config, free_port, running
from stalwart.domain.budgets import ledger_totals
from stalwart.domain.records import EventRecord, JobRecord, StepRecord
from stalwart.engine.episodes import EpisodeRecorder
from stalwart.store import open_store

DEFAULT_DATABASE_URL = "sqlite:///.demo/stalwart.db"

# u-1009 is on the enterprise plan, so its ticket waits for a reviewer; the others go through.
ONBOARDING_USERS = ("u-1001", "u-1004", "u-1009")
# The service names each invoice's vendor: INV-1005-75.50 is the only one from acme, the vendor
# in outage; INV-1003-4200.00 is over 1000 EUR, so its payment waits for a reviewer.
INVOICES = ("INV-1001-250.00", "INV-1002-89.90", "INV-1003-4200.00", "INV-1005-75.50")
OUTAGE = "vendor:acme"
# History: an earlier invoice from initech (INV-1003's vendor) that finance rejected. Its episode
# is what INV-1003's review packet recalls as a similar past case.
HISTORY_INVOICE = "INV-0996-3900.00"
HISTORY_REVIEWER = "finance@demo"
HISTORY_COMMENT = "duplicate of an invoice paid in October: ask initech for a credit note"
# Support: the service charged this order twice; the agent refunds the duplicate, and the
# support lead approves the refund call as soon as the agent asks.
SUPPORT_ORDER = "ORD-2033-59.90"
SUPPORT_MESSAGE = "Hi, my card was charged twice for this order. Can you refund one of them?"
SUPPORT_REVIEWER = "support-lead@demo"
SUPPORT_COMMENT = "the card statement shows the same charge twice"

FAILURE_RATE = 0.2  # one call in five answers 503
TIMEOUT_RATE = 0.05  # one in twenty answers after 1.5 s, past the tools' 1 s timeout
SLOW_SECONDS = 1.5
SEED = 7

RUN_LIMIT_SECONDS = 60.0
DEFAULT_PORT = 8000
WORKERS = 2
CONCURRENCY = 4

# Where a job stays until a person acts, or for good.
SETTLED = frozenset(
    {
        "completed",
        "failed",
        "rejected",
        "cancelled",
        "dead_lettered",
        "escalated",
        "waiting_approval",
    }
)
ACTIVE_STEPS = frozenset({"ready", "running", "retry_wait"})
STATUS_STYLE = {
    "completed": "green",
    "waiting_approval": "yellow",
    "dead_lettered": "red",
    "escalated": "red",
    "failed": "red",
    "rejected": "red",
    "cancelled": "dim",
}
QUIET_LOGGERS = ("stalwart", "httpx", "httpcore")


def run(
    *,
    database_url: str = DEFAULT_DATABASE_URL,
    resume: bool = False,
    serve: bool = True,
    port: int = DEFAULT_PORT,
) -> int:
    """Run the demo (or, with `resume`, the workers again on the kept database); 0 when the
    jobs settled within the time limit. With `serve`, then start the server on the demo
    database and print a reviewer's and an operator's key, until Ctrl-C; under `CI=true` the
    server starts, answers /readyz and stops, so the demo ends by itself."""
    console = Console()
    if not console.is_terminal:  # a pipe or a CI log: nothing to wrap for, keep lines whole
        console = Console(width=120)
    try:
        db = _db_path(database_url)
    except ValueError as exc:
        console.print(f"[red]error:[/] {exc}")
        return 2
    effects = effects_path_for(database_url)
    if not resume and db.exists():
        _refuse_newer(database_url)
    if not resume:
        for path in (db, Path(f"{db}-wal"), Path(f"{db}-shm"), effects):
            path.unlink(missing_ok=True)
    elif not db.exists():
        console.print(f"[red]No demo database at {db}[/]: run the demo without --resume first.")
        return 1
    db.parent.mkdir(parents=True, exist_ok=True)

    service = FlakyService(seed=SEED, slow_seconds=SLOW_SECONDS)
    previous_url = os.environ.get(SERVICE_URL_ENV)
    os.environ[SERVICE_URL_ENV] = service.start()
    try:
        # A real API remembers what it did across our restarts: replay the effect log into the
        # fresh service (calm, before any chaos) so resumed steps see the same idempotency keys.
        _restore_effects(service, effects)
        service.effects_path = effects
        service.configure(
            failure_rate=FAILURE_RATE,
            timeout_rate=TIMEOUT_RATE,
            outages=[] if resume else [OUTAGE],
        )
        with _quiet_logging():
            code = asyncio.run(_main(console, service, database_url, resume))
        if serve:
            # The service keeps running: an approved payment still has to call it.
            _serve(console, database_url, port)
        return code
    finally:
        service.stop()
        if previous_url is None:
            os.environ.pop(SERVICE_URL_ENV, None)
        else:
            os.environ[SERVICE_URL_ENV] = previous_url


def _refuse_newer(database_url: str) -> None:
    """Opening a store refuses a database a newer Stalwart migrated (`SchemaTooNewError`): the
    demo starts afresh, but never by deleting a database it cannot read."""
    asyncio.run(open_store(database_url).close())


def effects_path_for(database_url: str) -> Path:
    """The side-effect log of the demo's service, next to the demo database."""
    db = _db_path(database_url)
    return db.with_name(f"{db.stem}.effects.jsonl")


def _restore_effects(service: FlakyService, effects: Path) -> None:
    """Send every logged effect again, with its idempotency key: the service re-creates it under
    the same id (ids are sequential per kind), so later retries replay instead of acting."""
    if not effects.exists():
        return
    paths = {
        "payment": "/payments",
        "ticket": "/tickets",
        "notification": "/notifications",
        "refund": "/refunds",
    }
    with httpx.Client(base_url=service.url, timeout=10.0) as http:
        for line in effects.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            effect = json.loads(line)
            response = http.post(
                paths[effect["kind"]],
                json=effect["body"],
                headers={"Idempotency-Key": effect["idempotency_key"]},
            )
            response.raise_for_status()


# -- the server -----------------------------------------------------------------------------------


def _serve(console: Console, database_url: str, port: int) -> None:
    """Serve the API and UI on the demo database (with a worker), after making keys."""
    settings = Settings(database_url=database_url, poll_interval_seconds=0.2, drain_seconds=5.0)
    keys = asyncio.run(_demo_keys(settings))
    port = port if _port_free(port) else free_port()
    cfg = config(build_app(settings), port=port, workers=1, log_level="warning", access_log=False)
    url = f"http://127.0.0.1:{port}/ui/"
    console.rule("[bold]Server")
    console.print(
        f"Web UI        {url}\n"
        f"API           http://127.0.0.1:{port}/v1 (OpenAPI at /docs)\n"
        f"Reviewer key  {keys['reviewer']}\n"
        f"Operator key  {keys['operator']}\n\n"
        "Sign in with the reviewer key to approve the waiting payment, or with the operator key "
        "to redrive the dead letter. The keys are shown once; `stalwart keys list` lists them."
    )
    if os.environ.get("CI") == "true":
        with running(cfg) as server:
            ready = httpx.get(f"{server.url}/readyz", timeout=10.0)
        console.print(f"CI=true: the server answered /readyz with {ready.status_code} and stopped.")
        return
    console.print("Serving until Ctrl-C.")
    # uvicorn drains on the first Ctrl-C, then re-raises it: that is the normal end.
    with contextlib.suppress(KeyboardInterrupt):
        uvicorn.Server(cfg).run()


async def _demo_keys(settings: Settings) -> dict[str, str]:
    store = open_store(settings.database_url, settings)
    try:
        client = Client(store, settings=settings)
        return {
            role: (await client.key_create(tenant="default", role=role, actor="demo")).token
            for role in ("reviewer", "operator")
        }
    finally:
        await store.close()


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


# -- the run --------------------------------------------------------------------------------------


async def _main(console: Console, service: FlakyService, database_url: str, resume: bool) -> int:
    settings = Settings(database_url=database_url, poll_interval_seconds=0.1, drain_seconds=5.0)
    app = build_app(settings)
    store = app.store()
    try:
        await store.migrate()
        client = app.client()
        _header(console, service, database_url, resume)
        if resume:
            jobs = await client.list(limit=100)
            if not jobs:
                console.print("No demo jobs in this database: run the demo without --resume.")
                return 1
            job_ids = [j.id for j in reversed(jobs)]
        else:
            job_ids = await _submit(console, client)
        settled = await _run_workers(console, app, client, job_ids)
        await _summary(console, client, job_ids, database_url)
        _side_effects(console, service)
        if not settled:
            console.print(
                f"[red]Gave up after {RUN_LIMIT_SECONDS:g} s with work still pending.[/] "
                "Run the demo with --resume to continue."
            )
            return 1
        return 0
    finally:
        await store.close()


def _header(console: Console, service: FlakyService, database_url: str, resume: bool) -> None:
    console.rule("[bold]Stalwart demo" + (" (resume)" if resume else ""))
    outage = "none" if resume else f"{OUTAGE} answers 503 on every call"
    console.print(
        f"Database      {database_url}\n"
        f"Flaky service {service.url}: {FAILURE_RATE:.0%} of calls fail, "
        f"{TIMEOUT_RATE:.0%} answer after {SLOW_SECONDS:g} s (tools time out at 1 s)\n"
        f"Outage        {outage}\n"
        f"Workers       {WORKERS} in this process, {CONCURRENCY} steps each\n"
    )


async def _submit(console: Console, client: Client) -> list[str]:
    history = await client.submit("invoice", {"invoice_id": HISTORY_INVOICE}, actor="demo")
    ids = [history.job.id]
    for user in ONBOARDING_USERS:
        ids.append((await client.submit("onboarding", {"user_id": user}, actor="demo")).job.id)
    for invoice in INVOICES:
        ids.append((await client.submit("invoice", {"invoice_id": invoice}, actor="demo")).job.id)
    support = {"order_id": SUPPORT_ORDER, "message": SUPPORT_MESSAGE}
    ids.append((await client.submit("support", support, actor="demo")).job.id)
    console.print(
        f"Submitted {len(ONBOARDING_USERS)} onboarding and {len(INVOICES)} invoice jobs, "
        f"{HISTORY_INVOICE}, an earlier initech invoice {HISTORY_REVIEWER} will reject, and a "
        f"support request about {SUPPORT_ORDER}, whose refund {SUPPORT_REVIEWER} will approve. "
        "Working...\n"
    )
    return ids


async def _run_workers(console: Console, app: App, client: Client, job_ids: list[str]) -> bool:
    """Run the workers until every job has settled (or the time limit); True if settled."""
    # One store (one connection) per worker, as separate worker processes would have.
    stores = [open_store(app.settings.database_url, app.settings) for _ in range(WORKERS)]
    workers = [
        app.worker(store=s, concurrency=CONCURRENCY, worker_id=f"demo-worker-{n}")
        for n, s in enumerate(stores, 1)
    ]
    # Narrate only what happens from now on (a resumed run has history).
    seen = {}
    for job_id in job_ids:
        events = await client.events(job_id)
        seen[job_id] = events[-1].id if events else 0
    tasks = [asyncio.create_task(w.run(), name=w.worker_id) for w in workers]
    try:
        return await _watch(console, client, job_ids, seen, tasks)
    finally:
        for worker in workers:
            worker.stop()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        for store in stores:
            await store.close()
        for result in results:
            if isinstance(result, BaseException):
                raise result


async def _watch(
    console: Console,
    client: Client,
    job_ids: list[str],
    last_event: dict[str, int],
    tasks: Sequence[asyncio.Task[None]],
) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + RUN_LIMIT_SECONDS
    live = Live(console=console, transient=True, auto_refresh=False)
    with live:
        while True:
            views = [await _view(client, job_id) for job_id in job_ids]
            for view in views:
                for event in await client.events(view.job.id, after_id=last_event[view.job.id]):
                    last_event[view.job.id] = event.id
                    line = _narrate(event, view)
                    if line is not None:
                        live.console.print(line)
            # A job these reviewers just decided is on the move again, whatever `views` say.
            decided = await _history_reviewer(client, views) + await _support_lead(client, views)
            live.update(_progress_table(views), refresh=True)
            if not decided and all(v.settled for v in views):
                return True
            if any(t.done() for t in tasks):
                return False  # a worker stopped: _run_workers raises its error
            if loop.time() > deadline:
                return False
            await asyncio.sleep(0.1)


async def _history_reviewer(client: Client, views: Sequence[JobView]) -> int:
    """Finance rejects the earlier initech invoice as soon as it asks: the history the review
    of INV-1003 later recalls. Returns how many reviews it decided."""
    history = {v.job.id for v in views if v.job.input.get("invoice_id") == HISTORY_INVOICE}
    decided = 0
    for review in await client.reviews():
        if review.job_id in history:
            await client.reject(review.id, reviewer=HISTORY_REVIEWER, comment=HISTORY_COMMENT)
            decided += 1
    return decided


async def _support_lead(client: Client, views: Sequence[JobView]) -> int:
    """The support lead approves the support agent's refund call as soon as it asks, so the
    agent's loop goes on and the support job completes within the run. Returns how many
    reviews it decided."""
    support = {v.job.id for v in views if v.job.workflow == "support"}
    decided = 0
    for review in await client.reviews():
        if review.job_id in support and review.kind == "agent_call":
            await client.approve(review.id, reviewer=SUPPORT_REVIEWER, comment=SUPPORT_COMMENT)
            decided += 1
    return decided


# -- what a job looks like ------------------------------------------------------------------------


@dataclass(slots=True)
class JobView:
    job: JobRecord
    steps: list[StepRecord]

    @property
    def label(self) -> str:
        job_input = self.job.input
        key = job_input.get("user_id") or job_input.get("invoice_id") or job_input.get("order_id")
        key = key or ""
        return f"{self.job.workflow} {key}"

    @property
    def settled(self) -> bool:
        return self.job.status in SETTLED and not any(s.status in ACTIVE_STEPS for s in self.steps)

    @property
    def current(self) -> StepRecord | None:
        """The step the job is at: the first one not done, else the last one."""
        for step in self.steps:
            if step.status not in ("succeeded", "skipped", "pending"):
                return step
        for step in self.steps:
            if step.status == "pending":
                return step
        return self.steps[-1] if self.steps else None


async def _view(client: Client, job_id: str) -> JobView:
    job = await client.get(job_id)
    steps = sorted(await client.steps(job_id), key=lambda s: s.id)
    return JobView(job, steps)


def _status(status: str) -> Text:
    return Text(status, style=STATUS_STYLE.get(status, "cyan"))


def _progress_table(views: list[JobView]) -> Table:
    table = Table(title="jobs", title_justify="left", box=box.SIMPLE_HEAD)
    table.add_column("job", min_width=26)
    table.add_column("status", min_width=16)
    table.add_column("step", min_width=30)
    table.add_column("attempt", justify="right")
    for view in views:
        step = view.current
        table.add_row(
            view.label,
            _status(view.job.status),
            f"{step.key} ({step.status})" if step else "",
            f"{step.attempt}/{step.max_attempts}" if step else "",
        )
    return table


def _narrate(event: EventRecord, view: JobView) -> Text | None:
    """One calm line for the events a person cares about while it runs; None for the rest."""
    data = event.data or {}
    who = f"{view.label} · {event.step_key}" if event.step_key else view.label
    if event.kind == "step_retry_scheduled":
        error = data.get("error") or {}
        step = next((s for s in view.steps if s.key == event.step_key), None)
        of = f"/{step.max_attempts}" if step else ""
        delay = data.get("delay_seconds")
        wait = f" · again in {delay:.2f} s" if isinstance(delay, (int, float)) else ""
        return _line(
            "retry",
            "yellow",
            f"{who} · attempt {data.get('attempt', '?')}{of}: ",
            (_short(error.get("message", "")), "dim"),
            wait,
        )
    if event.kind == "step_succeeded":
        step = next((s for s in view.steps if s.id == event.step_id), None)
        if step is not None and isinstance(step.output, dict) and step.output.get("replayed"):
            return _line(
                "replay",
                "cyan",
                f"{who} · a timed-out attempt had gone through; same idempotency key, "
                "so the service answered with it instead of acting twice",
            )
        return None
    if event.kind == "review_requested":
        return _line("review", "yellow", f"{who} · waits for a reviewer ({data.get('review_id')})")
    if event.kind == "review_approved":
        said = f": {event.reason}" if event.reason else ""
        return _line("approved", "green", f"{who} · by {data.get('reviewer')}{said}")
    if event.kind == "agent_tool_call":
        call = f"{who} · turn {data.get('turn')} · {data.get('tool')}"
        if data.get("outcome") == "retry_wait":
            why = event.reason.partition(": ")[2].removeprefix("retry_wait").strip(" ()")
            return _line(
                "retry", "yellow", f"{call} · attempt {data.get('attempts')}: ", (why, "dim")
            )
        return _line("agent", "cyan", f"{call}: {data.get('outcome')}")
    if event.kind == "step_skipped":
        return _line("skipped", "yellow", f"{who} · {_short(event.reason)}")
    if event.kind == "job_completed":
        note = " (degraded: a non-critical step was skipped)" if event.reason else ""
        return _line("done", "green", f"{view.label}{note}")
    if event.kind in ("job_dead_lettered", "job_escalated", "job_failed", "job_rejected"):
        label = {"job_dead_lettered": "dead"}.get(event.kind, event.kind.removeprefix("job_"))
        return _line(label, "red", f"{view.label} · {_short(event.reason)}")
    return None


def _line(label: str, style: str, *parts: str | tuple[str, str]) -> Text:
    return Text.assemble((f"  {label:<9} ", style), *parts)


_HTTP_ERROR = re.compile(r"^(?:Client|Server) error '(?P<status>[^']+)' for url '(?P<url>[^']*)'")
_TIMED_OUT = re.compile(r"timed out after (?P<seconds>\d+(?:\.\d+)?)s")


def _short(message: str) -> str:
    """An error message on one short line: the first line, without the service's address."""
    line = message.splitlines()[0] if message else ""
    url = os.environ.get(SERVICE_URL_ENV)
    if url:
        line = line.replace(url, "")
    line = _HTTP_ERROR.sub(r"\g<status>", line)
    return _TIMED_OUT.sub(lambda m: f"timed out after {float(m['seconds']):.1f} s", line)


# -- the summary ----------------------------------------------------------------------------------


async def _summary(console: Console, client: Client, job_ids: list[str], database_url: str) -> None:
    views = [await _view(client, job_id) for job_id in job_ids]
    console.print()
    table = Table(title="Jobs", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("job id", no_wrap=True)
    table.add_column("job", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("outcome")
    for view in views:
        table.add_row(view.job.id, view.label, _status(view.job.status), _outcome(view))
    console.print(table)
    counts = Counter(v.job.status for v in views)
    console.print(", ".join(f"{n} {status}" for status, n in sorted(counts.items())))
    calls = [c for job_id in job_ids for c in await client.llm_calls(job_id)]
    if calls:
        models = sorted({f"{c.provider}:{c.model}" for c in calls})
        totals = ledger_totals(calls)
        console.print(
            f"LLM calls: {totals['calls']} ({totals['cache_hits']} from the cache) on "
            f"{', '.join(models)}, ${totals['cost_usd']:.4f} in all; "
            "`stalwart jobs show ID` lists them per job."
        )
    console.print()
    await _agent_transcripts(console, client, views)

    reviews = await client.reviews()
    dead = await client.dead_letters()
    labels = {v.job.id: v.label for v in views}
    if reviews:
        console.print("[bold]Waiting for a reviewer[/]")
        for review in reviews:
            console.print(
                f"  {review.id}  {labels.get(review.job_id, review.job_id)}, step "
                f"{review.step_key}\n      {review.asked}\n      why: {review.reason}"
            )
            for line in await _similar_cases(client, review.job_id, labels):
                console.print(f"      {line}")
        console.print()
    if dead:
        console.print("[bold]Dead letters[/]")
        for letter in dead:
            error = _short((letter.error or {}).get("message", ""))
            console.print(
                f"  {letter.id}  {labels.get(letter.job_id, letter.job_id)}, step "
                f"{letter.step_key}\n      {letter.reason}\n      last error: {error}"
            )
        console.print()

    cli = _cli_prefix(database_url)
    if reviews or dead:
        console.print("[bold]Next[/]: you are the reviewer and the operator.")
        if reviews:
            console.print("  Approve the waiting steps:")
        for review in reviews:
            _command(
                console,
                f"{cli} review approve {review.id} --reviewer you@example.com "
                '--comment "looks right"',
            )
        if dead:
            console.print("  Redrive the dead-lettered job (the outage is over when you resume):")
        for letter in dead:
            _command(console, f"{cli} dlq redrive {letter.job_id}")
        console.print("  Then run the workers again:")
        _command(console, _resume_command(database_url))
    elif all(v.job.status == "completed" for v in views):
        console.print("[green]Every job completed.[/]")
    console.print("  Look around:")
    _command(console, f"{cli} jobs list")
    _command(console, f"{cli} jobs show {views[-1].job.id}")
    console.print()


async def _agent_transcripts(console: Console, client: Client, views: Sequence[JobView]) -> None:
    """Each agent step's loop, compactly: per turn its tokens and cost, and each call with its
    arguments, the reviewer's decision if it needed one, and its status and result."""
    for view in views:
        if not any(s.kind == "agent" for s in view.steps):
            continue
        for transcript in await client.transcripts(view.job.id):
            if transcript.turns:
                for part in transcript_lines(view.label, transcript.to_dict()):
                    console.print(part, highlight=False)
                console.print()


def transcript_lines(label: str, transcript: dict[str, Any]) -> list[RenderableType]:
    """An agent transcript (`Transcript.to_dict()`) as a heading, a table of its turns (one row a
    turn: its tokens, its cost, and its calls, each with the reviewer's decision if it needed
    one and its result) and its answer."""
    turns = transcript["turns"]
    models = sorted({f"{t['provider']}:{t['model']}" for t in turns})
    heading = Text.assemble(
        ("Agent transcript", "bold"),
        f" of {label}, step {transcript['step']} on {', '.join(models)}: "
        f"{_count(len(turns), 'turn')}, {transcript['tokens']:,} tokens, "
        f"${transcript['cost_usd']:.4f}",
    )
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("turn", justify="right", no_wrap=True)
    table.add_column("tokens in/out", justify="right", no_wrap=True)
    table.add_column("cost", justify="right", no_wrap=True)
    table.add_column("calls, decisions and results")
    answer: RenderableType | None = None
    for turn in turns:
        lines: list[RenderableType] = []
        for call in turn["calls"]:
            lines.append(Text(f"{call['tool']}({_brief_args(call['arguments'])})"))
            decision = call.get("decision") or {}
            if decision:
                said = f": {decision['comment']}" if decision.get("comment") else ""
                style = "green" if decision.get("decision") == "approved" else "red"
                lines.append(
                    _indent(
                        Text(
                            f"{decision.get('decision')} by {decision.get('reviewer')}{said}", style
                        )
                    )
                )
            lines.append(_indent(_call_result(call)))
        if not turn["tool_calls"]:
            lines.append(Text("the answer, below"))
            answer = _indent(Text.assemble(("answer: ", "bold"), _brief(_json(turn["text"]))))
        table.add_row(
            str(turn["turn"]),
            f"{turn['input_tokens']}/{turn['output_tokens']}",
            f"${turn['cost_usd']:.4f}",
            Group(*lines),
        )
    parts: list[RenderableType] = [heading, table]
    return parts if answer is None else [*parts, answer]


def _indent(text: Text) -> Padding:
    return Padding(text, (0, 0, 0, 2))


def _call_result(call: dict[str, Any]) -> Text:
    status = str(call["status"])
    style = {"succeeded": "green", "approved": "green"}.get(status, "yellow")
    tries = f" after {call['attempts']} attempts" if call.get("attempts", 0) > 1 else ""
    if status == "succeeded":
        said = _brief(call["result"], echoed=call["arguments"])
    else:
        said = _short(str((call.get("error") or {}).get("message", "")))
    return Text.assemble("→ ", (status, style), tries, f": {said}" if said else "")


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def _brief_args(arguments: Any) -> str:
    if not isinstance(arguments, dict):
        return str(arguments)
    return ", ".join(f"{k}={json.dumps(v)}" for k, v in arguments.items())


def _brief(value: Any, echoed: Any = None) -> str:
    """A value on one line: a dict as `key=value` (without the fields that only repeat the
    call's arguments, `echoed`), a list inside it by its length."""
    if not isinstance(value, dict):
        return json.dumps(value) if not isinstance(value, str) else value
    same = echoed if isinstance(echoed, dict) else {}
    parts = []
    for key, item in value.items():
        if key in same and same[key] == item:
            continue
        if isinstance(item, list):
            parts.append(f"{key}=[{_count(len(item), 'item')}]")
        elif isinstance(item, dict):
            parts.append(f"{key}={{…}}")
        else:
            parts.append(f"{key}={json.dumps(item)}")
    return ", ".join(parts)


async def _similar_cases(client: Client, job_id: str, labels: dict[str, str]) -> list[str]:
    """The review packet's similar past cases (episodic memory), as lines."""
    assert client.app is not None
    # Episodes are recorded by the workers within a poll; make sure the last ones are in.
    await EpisodeRecorder(client.store, client.app.embedder(client.store)).run_once()
    found = await client.memory.similar_to_job(client.settings.default_tenant, job_id)
    lines = []
    for hit in found.hits:
        past = await client.store.episode_get(client.settings.default_tenant, hit.meta["job"])
        if past is None:
            continue
        said = "; ".join(
            f"{d['decision']} by {d['reviewer']}: {d['comment']}"
            for d in past.details.get("decisions", [])
            if d.get("comment")
        )
        label = labels.get(past.job_id) or past.job_id
        lines.append(
            f"similar past case: {label} ({past.job_id}), {past.outcome}"
            + (f", {said}" if said else "")
            + (
                f" (similarity {hit.relevance:.2f})"
                if found.method == "vector"
                else f" (word match {hit.relevance:.2f}, no embedder installed)"
            )
        )
    return lines


def _command(console: Console, command: str) -> None:
    console.print(f"    {command}", soft_wrap=True, highlight=False, markup=False)


def _outcome(view: JobView) -> str:
    job = view.job
    if job.status == "completed":
        made = []
        for done in view.steps:
            output = done.output if isinstance(done.output, dict) else {}
            for field in ("ticket_id", "notification_id", "payment_id", "refund_id"):
                if output.get(field):
                    made.append(f"{field.removesuffix('_id')} {output[field]}")
        skipped = [s.key for s in view.steps if s.status == "skipped"]
        if skipped:
            made.append(f"degraded: {', '.join(skipped)} skipped")
        return ", ".join(made) or "done"
    step = view.current
    if step is None:
        return ""
    if job.status == "waiting_approval":
        return f"step {step.key} waits for a reviewer"
    if job.status in ("dead_lettered", "escalated", "failed"):
        message = _short((step.error or {}).get("message", ""))
        return f"{step.key}: {step.attempt} attempt(s), {message}"
    return f"at step {step.key} ({step.status})"


def _side_effects(console: Console, service: FlakyService) -> None:
    # The log file, not the service's memory: it holds every effect of every run, as written.
    log = service.effects_path
    lines = log.read_text(encoding="utf-8").splitlines() if log and log.exists() else []
    records = [json.loads(line) for line in lines if line.strip()]
    kinds = Counter(r["kind"] for r in records)
    keys = Counter(r["idempotency_key"] for r in records)
    duplicated = sorted(key for key, n in keys.items() if n > 1)
    console.print(
        f"[bold]Side effects in the service[/] (every run, logged in {service.effects_path})"
    )
    console.print(
        "  "
        + ", ".join(_count(kinds[k], k) for k in ("payment", "ticket", "notification", "refund"))
    )
    if duplicated:
        console.print(f"  [red]duplicated: {', '.join(duplicated)}[/]")
    else:
        console.print(
            f"  [green]no duplicates[/]: {_count(len(records), 'effect')}, "
            f"{_count(len(keys), 'distinct idempotency key')}"
        )
    if service.replays:
        console.print(
            f"  {service.replays} repeated call(s) this run were answered from the service's "
            "idempotency store instead of acting twice"
        )
    console.print()


# -- helpers --------------------------------------------------------------------------------------


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _db_path(database_url: str) -> Path:
    prefix = "sqlite:///"
    if not database_url.startswith(prefix) or len(database_url) == len(prefix):
        raise ValueError(
            f"the demo needs a SQLite database_url (sqlite:///path), not {database_url}"
        )
    return Path(database_url.removeprefix(prefix))


def _stalwart_command() -> str:
    local = Path(".venv/bin/stalwart")
    return str(local) if local.exists() else "stalwart"


def _cli_prefix(database_url: str) -> str:
    return f"{_stalwart_command()} --database-url {shlex.quote(database_url)}"


def _resume_command(database_url: str) -> str:
    if database_url == DEFAULT_DATABASE_URL:
        return f"{_stalwart_command()} demo --resume"
    return f"{_cli_prefix(database_url)} demo --resume"


@contextlib.contextmanager
def _quiet_logging() -> Iterator[None]:
    """Library logging below WARNING would drown the story; restore the levels afterwards."""
    loggers = [logging.getLogger(name) for name in QUIET_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        if logger.getEffectiveLevel() < logging.WARNING:
            logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
