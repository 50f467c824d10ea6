"""The runtime's own cost per agent turn with one tool call, next to a bare commit.

An agent step's loop (src/stalwart/engine/agent_steps.py) makes, per model turn that asks for
one tool call, two write transactions besides the model's own latency (decision 0039):

1. `llm_settle(..., turn=TurnWrite(..., start=call))`: the turn's ledger row and budgets
   settled, the turn recorded and its first call started (`running`), fenced by the step's
   lease token;
2. `agent_call_finish(..., reserve=next)`: the call's result written with the tool's
   `on_commit` effects, fenced, and the next turn's worst case reserved on its budget rows with
   its ledger row opened.

The first turn of an attempt reserves on its own (`llm_reserve`): reported apart, amortized
over the attempt's turns like the transcript read.
Each attempt also reads its transcript back once, at its start (two SELECTs); that read is
reported apart, and amortized over the turns of an attempt.

Measured two ways, on SQLite (WAL; `synchronous=FULL`, the production default, is the one
judged, `NORMAL` is shown beside it to separate the fsyncs from the rest) and on PostgreSQL (a
private server with default durability, tests/pgserver.py):

(a) bookkeeping: the two store calls alone, in the order the loop makes them, on steps claimed
    for the purpose (jobs of one `agent` step each, `--turns` turns per step);
(b) the real loop: the same jobs run end to end by an in-process `Worker` (one slot) on
    `ScriptedModel` (no latency) calling a no-op tool. Per-turn wall time is the median gap
    between consecutive turn records of a step (each is stamped in its settle transaction, so
    a gap is exactly one turn with its call); the marginal cost of a turn is also derived from
    two runs, `--turns` and 1 tool turn per job.

Beside them, a bare commit on the same database with the store's connection settings (the same
SQLite file opened by the store's own `connect` with the same `synchronous`; on PostgreSQL a
psycopg connection with autocommit off: BEGIN, a ~100-byte INSERT, an UPDATE, COMMIT), and the
same two statements committed through the store's own transaction (`_write`: on PostgreSQL the
hop to the store's thread pool and `BEGIN; SELECT now()` included). Rounds alternate the bare
commits with (a) so drift in the disk's speed hits both; ratios are medians of per-round ratios.
A profiling pass then counts each transaction's statements (round trips on PostgreSQL) and the
time spent in them. The target: at most 3x a bare commit per turn with one tool call.

Run from the repository root (the PostgreSQL part imports tests.pgserver):

    PYTHONPATH=. .venv/bin/python bench/agent_turn.py [--backend sqlite|postgres|both]
        [--jobs 10] [--turns 8] [--rounds 5] [--loop-jobs 10] [--loop-turns 16]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import sqlite3
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

try:
    from bench._harness import (
        PAYLOAD,
        backends,
        bare_commit_us,
        load_average,
        percentile,
        pg_describe,
        postgres_server,
        run_main,
        verdict,
    )
except ModuleNotFoundError as exc:  # `python bench/...` without the repository root on the path
    raise SystemExit(f"{exc}: run from the repository root with PYTHONPATH=.") from None
from pydantic import BaseModel

from stalwart import App, Settings, ToolContext
from stalwart.domain.agents import AgentCall, AgentTurn, CallStatus, TurnCheckpoint, TurnWrite
from stalwart.domain.budgets import CallResult, CallScope, NewCall
from stalwart.domain.records import Claim
from stalwart.llm import CallTools
from stalwart.llm.scripted import ScriptedModel
from stalwart.llm.types import ModelRequest
from stalwart.store import Store
from stalwart.store.sql.base import SqlBase
from stalwart.store.sql.tx import Tx

TARGET_RATIO = 3.0
ACTOR = "bench-agent"
MODEL_REF = "scripted:agent"
PHASES = ("settle + turn + call start", "call finish + next reserve")
"""The four transactions of a turn with one tool call, in the loop's order."""
LABEL = 58


class Nth(BaseModel):
    """The no-op tool's argument: which call this is (distinct calls, so `max_repeats` never
    stops the loop)."""

    n: int


class Empty(BaseModel):
    """The no-op tool's result."""


# -- the app ---------------------------------------------------------------------------------------


def answers(turns: int) -> Callable[[ModelRequest], Any]:
    """The scripted model: `turns` turns that each call `noop` once, then a text answer."""

    def answer(request: ModelRequest) -> Any:
        done = sum(1 for m in request.messages if m.role == "tool")
        return CallTools(("noop", {"n": done + 1})) if done < turns else "done"

    return answer


def build_app(url: str, synchronous: str, turns: int) -> App:
    """An app whose workflow `agent` is one agent step of `turns` tool turns and an answer, on
    a scripted model with no latency and a no-op tool."""
    settings = Settings(
        database_url=url,
        sqlite_synchronous=synchronous,
        poll_interval_seconds=0.001,
        lease_seconds=600,
    )
    app = App(settings)
    app.model(MODEL_REF, ScriptedModel("agent").on_step("agent", answers(turns)))
    app.route("small", [MODEL_REF])

    @app.tool(timeout=5, idempotent=True)
    async def noop(args: Nth, ctx: ToolContext) -> Empty:
        """Do nothing."""
        return Empty()

    step = {
        "id": "agent",
        "kind": "agent",
        "prompt": "Call noop until you are told to stop.",
        "tools": ["noop"],
        "tier": "small",
        "max_turns": turns + 1,
        "max_tool_calls": max(32, turns),
    }
    app.workflow("agent", input=Empty, templates=[{"name": "agent", "steps": [step]}])
    return app


def sql_store(store: Store) -> SqlBase:
    """The store as the SQL store it is (its `_write` is used for the baseline and counting)."""
    assert isinstance(store, SqlBase), type(store)
    return store


# -- timing ----------------------------------------------------------------------------------------


@dataclass
class Phases:
    """Seconds per transaction of each phase of a turn, and per whole turn."""

    seconds: dict[str, list[float]] = field(default_factory=lambda: {p: [] for p in PHASES})
    turns: list[float] = field(default_factory=list)
    read_empty: list[float] = field(default_factory=list)
    read_full: list[float] = field(default_factory=list)
    first_reserve: list[float] = field(default_factory=list)

    def us(self, phase: str) -> float:
        return statistics.median(self.seconds[phase]) * 1e6


async def timed(series: list[float], call: Awaitable[Any]) -> Any:
    start = time.perf_counter()
    result = await call
    series.append(time.perf_counter() - start)
    return result


async def claims_for(app: App, store: Store, jobs: int) -> list[Claim]:
    """`jobs` jobs of the workflow submitted, and their agent steps claimed (a long lease)."""
    client = app.client(store)
    for _ in range(jobs):
        await client.submit("agent", {})
    claims: list[Claim] = []
    while len(claims) < jobs:
        batch = await store.step_claim(ACTOR, limit=jobs - len(claims), lease_seconds=600)
        if not batch:
            raise RuntimeError(f"claimed {len(claims)} of {jobs} agent steps")
        claims += batch
    return claims


def next_reservation(scope: CallScope, number: int) -> NewCall:
    """The ledger row of turn `number`, as the loop reserves it."""
    context = 60 + 120 * number  # the request grows by a turn and a tool result each turn
    return NewCall(
        scope=scope,
        seq=1,
        provider="scripted",
        model="agent",
        tier="small",
        reserved_nanos=0,
        reserved_tokens=context + 1024,
        expires_in=130.0,
        context_tokens=context,
        context_limit=128_000,
    )


async def one_turn(
    store: Store, scope: CallScope, claim: Claim, number: int, call_id: int, last: bool, out: Phases
) -> int | None:
    """Turn `number` of the step `claim` holds (its ledger row `call_id` reserved already), with
    one tool call: the store calls the loop makes, in its order, each timed into `out`. Returns
    the next turn's ledger row, reserved with the call's end (None after the `last` turn)."""
    arguments = f'{{"n": {number}}}'
    context = 60 + 120 * number
    started = time.perf_counter()
    checkpoint = TurnCheckpoint(claim.step_id, claim.lease_token, number, claim.attempt)
    turn = AgentTurn(
        turn=number,
        attempt=claim.attempt,
        text="",
        tool_calls=[{"id": f"call_{number}", "name": "noop", "arguments": arguments}],
        finish_reason="tool_calls",
        provider="scripted",
        model="agent",
        input_tokens=context,
        output_tokens=8,
        llm_call_id=call_id,
    )
    call = AgentCall(number, 0, f"call_{number}", "noop", arguments, "new")
    result = CallResult("ok", input_tokens=context, output_tokens=8, latency_ms=0.1)
    await timed(
        out.seconds[PHASES[0]],
        store.llm_settle(call_id, result, actor=ACTOR, turn=TurnWrite(checkpoint, turn, call)),
    )
    assert call.status == CallStatus.RUNNING.value, "the call did not start with its turn"
    call.status, call.result = CallStatus.SUCCEEDED.value, {}
    done = await timed(
        out.seconds[PHASES[1]],
        store.agent_call_finish(
            claim,
            call,
            actor=ACTOR,
            limited=False,
            reserve=None if last else next_reservation(scope, number + 1),
        ),
    )
    assert done, "the lease was lost"
    out.turns.append(time.perf_counter() - started)
    reserved: int | None = done.reserved
    return reserved


async def bookkeeping(app: App, store: Store, claims: Sequence[Claim], turns: int) -> Phases:
    """(a): the loop's store calls for `turns` turns of one tool call on each claimed step, in
    the order the loop makes them, with the transcript read at the start of each attempt and
    again after the turns (what a resumed attempt reads)."""
    executor = app.executor(store)
    assert executor.llm is not None
    out = Phases()
    for claim in claims:
        scope = executor.llm.scope(claim, "reasoning")
        await timed(out.read_empty, store.agent_transcript(claim.step_id, key=claim.key))
        call_id: int | None = await timed(
            out.first_reserve, store.llm_reserve(next_reservation(scope, 1), actor=ACTOR)
        )
        for number in range(1, turns + 1):
            assert call_id is not None
            call_id = await one_turn(store, scope, claim, number, call_id, number == turns, out)
        transcript = await timed(
            out.read_full, store.agent_transcript(claim.step_id, key=claim.key)
        )
        assert len(transcript.turns) == turns and len(transcript.calls) == turns
    return out


async def store_commit_us(store: Store, iterations: int) -> float:
    """Microseconds for the bare commit's two statements committed through the store's own
    write transaction: what a transaction of the store costs before its statements."""
    base = sql_store(store)

    def create(tx: Tx) -> None:
        tx.con.execute("CREATE TABLE IF NOT EXISTS bare_store (id BIGINT PRIMARY KEY, n INT)")

    await base._write(ACTOR, create)
    counter = [0]

    def commit(tx: Tx) -> None:
        counter[0] += 1
        tx.con.execute("INSERT INTO bare_store (id, n) VALUES (?, ?)", (counter[0], len(PAYLOAD)))
        tx.con.execute("UPDATE bare_store SET n = n + 1 WHERE id = ?", (counter[0],))

    for _ in range(min(50, iterations)):
        await base._write(ACTOR, commit)
    start = time.perf_counter()
    for _ in range(iterations):
        await base._write(ACTOR, commit)
    return (time.perf_counter() - start) / iterations * 1e6


# -- statements per transaction --------------------------------------------------------------------


class CountingConnection:
    """A transaction's connection that records each statement it runs and the time it took."""

    def __init__(self, con: Any, log: list[tuple[str, float]]) -> None:
        self.con = con
        self.log = log

    def execute(self, sql: str, params: Sequence[Any] = (), /) -> Any:
        start = time.perf_counter()
        try:
            return self.con.execute(sql, params)
        finally:
            self.log.append((sql, time.perf_counter() - start))

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]], /) -> Any:
        start = time.perf_counter()
        try:
            return self.con.executemany(sql, rows)
        finally:
            self.log.append((sql, time.perf_counter() - start))


@dataclass
class Profile:
    """One transaction of a turn: its statements and times."""

    phase: str
    statements: list[tuple[str, float]]
    seconds: float


def verb(sql: str) -> str:
    """A statement's kind and table, for the profile (`SELECT steps`, `UPDATE budgets`)."""
    words = sql.replace("(", " ").split()
    head = words[0].upper()
    table = ""
    for marker in ("FROM", "INTO", "UPDATE"):
        upper = [w.upper() for w in words]
        if marker in upper[: 1 if marker == "UPDATE" else len(upper)]:
            table = words[upper.index(marker) + 1]
            break
    if head == "SELECT" and table == "":
        table = "(expression)"
    return f"{head} {table}".strip()


async def profile_turn(app: App, store: Store, claim: Claim, number: int) -> list[Profile]:
    """Turn `number` on `claim` once more, with every transaction's statements recorded."""
    base = sql_store(store)
    original = base._write
    profiles: list[Profile] = []

    async def counting(actor: str, fn: Callable[[Tx], Any]) -> Any:
        log: list[tuple[str, float]] = []

        def wrapped(tx: Tx) -> Any:
            tx.con = CountingConnection(tx.con, log)
            return fn(tx)

        start = time.perf_counter()
        result = await original(actor, wrapped)
        profiles.append(Profile(PHASES[len(profiles)], log, time.perf_counter() - start))
        return result

    executor = app.executor(store)
    assert executor.llm is not None
    scope = executor.llm.scope(claim, "reasoning")
    call_id = await store.llm_reserve(next_reservation(scope, number), actor=ACTOR)
    setattr(base, "_write", counting)  # noqa: B010 -- on the instance, for this pass only
    try:
        await one_turn(store, scope, claim, number, call_id, False, Phases())
    finally:
        delattr(base, "_write")
    return profiles


# -- the real loop ---------------------------------------------------------------------------------


@dataclass
class LoopRun:
    """Jobs of one agent step run end to end by an in-process worker."""

    jobs: int
    turns: int
    seconds: float
    gaps: list[list[float]]
    """Per job, the seconds from each turn's record to the next one's."""

    def flat(self) -> list[float]:
        return [g for job in self.gaps for g in job]

    def at(self, index: int) -> float:
        """The median gap after turn `index + 1` over the jobs, in µs."""
        return statistics.median(job[index] for job in self.gaps) * 1e6

    @property
    def per_job_ms(self) -> float:
        return self.seconds / self.jobs * 1000


async def loop_run(url: str, synchronous: str, jobs: int, turns: int) -> LoopRun:
    """`jobs` jobs of `turns` tool turns each (and an answer), submitted first, then run by one
    worker slot; wall time from the worker's start to the last step done, and the gaps between
    consecutive turn records of each step."""
    app = build_app(url, synchronous, turns)
    store = app.store()
    try:
        await store.migrate()
        client = app.client(store)
        ids = [(await client.submit("agent", {})).job.id for _ in range(jobs)]
        worker = app.worker(store=store, concurrency=1, worker_id=f"{ACTOR}-{turns}")
        start = time.perf_counter()
        task = asyncio.create_task(worker.run())
        while worker.steps_run < jobs:
            if task.done():
                task.result()
                raise RuntimeError("the worker stopped before the jobs were done")
            await asyncio.sleep(0.0005)
        elapsed = time.perf_counter() - start
        worker.stop()
        await task
        gaps: list[list[float]] = []
        for job_id in ids:
            job = await client.get(job_id)
            assert job.status == "completed", (job_id, job.status)
            [transcript] = await store.agent_transcripts(job_id)
            created = [t.created for t in transcript.turns]
            assert len(created) == turns + 1, len(created)
            # Each tool turn's record to the next record: one turn and its call.
            gaps.append([b - a for a, b in itertools.pairwise(created)])
        return LoopRun(jobs, turns, elapsed, gaps)
    finally:
        await store.close()


# -- one backend -----------------------------------------------------------------------------------


@dataclass
class Config:
    """What one backend's run measures."""

    jobs: int
    turns: int
    rounds: int
    loop_jobs: int
    loop_turns: int
    bare_iterations: int


@dataclass
class Measured:
    """One database configuration's figures (one backend, one `synchronous`)."""

    name: str
    bare: list[float] = field(default_factory=list)
    store_tx: list[float] = field(default_factory=list)
    phases: list[Phases] = field(default_factory=list)
    profile: list[Profile] = field(default_factory=list)
    loop_hi: LoopRun | None = None
    loop_lo: LoopRun | None = None

    def turn_us(self, i: int) -> float:
        return statistics.median(self.phases[i].turns) * 1e6


async def direct_round(
    url: str, synchronous: str, cfg: Config, first: bool
) -> tuple[float, Phases, list[Profile]]:
    """A fresh database at `url`: the store baseline, then (a); and on the first round, the
    statement profile of one more turn."""
    app = build_app(url, synchronous, cfg.turns)
    store = app.store()
    try:
        await store.migrate()
        store_tx = await store_commit_us(store, max(100, cfg.bare_iterations // 2))
        claims = await claims_for(app, store, cfg.jobs + 1)
        # One warm-up step (statements prepared, pages cached), not counted.
        await bookkeeping(app, store, claims[:1], min(cfg.turns, 3))
        phases = await bookkeeping(app, store, claims[1:], cfg.turns)
        profile = await profile_turn(app, store, claims[0], 4) if first else []
        return store_tx, phases, profile
    finally:
        await store.close()


def measure(
    name: str, new_url: Callable[[str], str], synchronous: str, cfg: Config, loop: bool
) -> Measured:
    """Rounds of (bare commit, (a)) on fresh databases, then (b) when `loop`."""
    m = Measured(name)
    for i in range(cfg.rounds):
        url = new_url(f"direct{i}")
        store_tx, phases, profile = asyncio.run(direct_round(url, synchronous, cfg, i == 0))
        # The bare commit on the same database, with the store's connection settings.
        m.bare.append(bare_commit_us(url, cfg.bare_iterations, synchronous))
        m.store_tx.append(store_tx)
        m.phases.append(phases)
        m.profile += profile
    if loop:
        m.loop_hi = asyncio.run(
            loop_run(new_url("loop_hi"), synchronous, cfg.loop_jobs, cfg.loop_turns)
        )
        m.loop_lo = asyncio.run(loop_run(new_url("loop_lo"), synchronous, cfg.loop_jobs, 1))
    return m


def _spread(values: Sequence[float]) -> str:
    return f"{min(values):.0f} to {max(values):.0f}"


def report(header: str, m: Measured, cfg: Config, judged: bool) -> list[str]:
    bare = statistics.median(m.bare)
    store_tx = statistics.median(m.store_tx)
    turns = [m.turn_us(i) for i in range(len(m.phases))]
    turn = statistics.median(turns)
    ratio = statistics.median(m.turn_us(i) / b for i, b in enumerate(m.bare))
    lines = [
        f"{header}; {os.cpu_count()} cores, load average {load_average()}; (a) {cfg.jobs} steps x "
        f"{cfg.turns} turns of one tool call per round, median of {cfg.rounds} rounds",
        f"  {'bare commit (INSERT ~100 B + UPDATE), same database:':<{LABEL}}{bare:8.1f} µs   "
        f"(rounds: {_spread(m.bare)})",
        f"  {'the same two statements in a store transaction:':<{LABEL}}{store_tx:8.1f} µs   "
        f"({store_tx / bare:.1f}x)",
        f"  {'(a) bookkeeping per turn (2 transactions):':<{LABEL}}{turn:8.1f} µs   "
        f"({ratio:.1f}x a bare commit; rounds {_spread(turns)})",
    ]
    for phase in PHASES:
        us = statistics.median(p.us(phase) for p in m.phases)
        lines.append(f"  {'    ' + phase + ':':<{LABEL}}{us:8.1f} µs   ({us / bare:.1f}x)")
    first = statistics.median(statistics.median(p.first_reserve) for p in m.phases) * 1e6
    lines.append(
        f"  {'first turn of an attempt, its own reservation:':<{LABEL}}{first:8.1f} µs   "
        f"(amortized over {cfg.turns} turns: {first / cfg.turns:.1f} µs a turn)"
    )
    empty = statistics.median(statistics.median(p.read_empty) for p in m.phases) * 1e6
    full = statistics.median(statistics.median(p.read_full) for p in m.phases) * 1e6
    lines.append(
        f"  {'transcript read at the start of an attempt:':<{LABEL}}{empty:8.1f} µs empty, "
        f"{full:.1f} µs after {cfg.turns} turns; amortized over {cfg.turns} turns: "
        f"{empty / cfg.turns:.1f} to {full / cfg.turns:.1f} µs a turn"
    )
    verdicts = [f"(a) {ratio:.1f}x"]
    ok = ratio <= TARGET_RATIO
    if m.loop_hi is not None and m.loop_lo is not None:
        hi, lo = m.loop_hi, m.loop_lo
        gap = statistics.median(hi.flat()) * 1e6
        p95 = percentile(hi.flat(), 95) * 1e6
        marginal = (hi.per_job_ms - lo.per_job_ms) / (hi.turns - lo.turns) * 1000
        lines += [
            f"  (b) the real loop, one worker slot, ScriptedModel (no latency), a no-op tool, "
            f"{hi.jobs} jobs of one agent step:",
            f"  {'    per turn, gap between turn records (median):':<{LABEL}}{gap:8.1f} µs   "
            f"({gap / bare:.1f}x a bare commit; p95 {p95:.0f} µs)",
            f"  {'    the same, turn 1 -> 2 and turn ' + str(hi.turns) + ' -> answer:':<{LABEL}}"
            f"{hi.at(0):8.1f} µs and {hi.at(hi.turns - 1):.1f} µs (the request grows a turn)",
            f"  {f'    per turn, marginal ({hi.turns} vs {lo.turns} tool turns a job):':<{LABEL}}"
            f"{marginal:8.1f} µs   ({marginal / bare:.1f}x; a cross-check, noisy under load)",
            f"  {f'    per job, {hi.turns} / {lo.turns} tool turns + answer:':<{LABEL}}"
            f"{hi.per_job_ms:8.2f} / {lo.per_job_ms:.2f} ms",
        ]
        verdicts.append(f"(b) {gap / bare:.1f}x")
        ok = ok and gap / bare <= TARGET_RATIO
    lines.append(
        f"  target: at most {TARGET_RATIO:g}x a bare commit per turn with one tool call"
        + (
            f": {verdict(ok)} ({', '.join(verdicts)})"
            if judged
            else f" ({', '.join(verdicts)}; not judged)"
        )
    )
    lines += profile_lines(m.profile)
    return lines


def profile_lines(profiles: Sequence[Profile]) -> list[str]:
    if not profiles:
        return []
    lines = ["  statements per transaction of one turn (profiling pass; BEGIN and COMMIT apart):"]
    total = 0
    for p in profiles:
        kinds = Counter(verb(sql) for sql, _ in p.statements)
        in_sql = sum(s for _, s in p.statements) * 1e6
        total += len(p.statements)
        detail = ", ".join(f"{k}" + (f" x{n}" if n > 1 else "") for k, n in kinds.items())
        lines.append(
            f"    {p.phase + ':':<15}{len(p.statements):3d} statements, {in_sql:6.0f} µs of "
            f"{p.seconds * 1e6:6.0f} µs in them: {detail}"
        )
    lines.append(f"    {'turn:':<15}{total:3d} statements in {len(profiles)} transactions")
    return lines


def sqlite_urls(directory: Path) -> Callable[[str], str]:
    """A fresh SQLite database URL per name, in `directory`."""
    return lambda name: f"sqlite:///{directory / name}.db"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--jobs", type=int, default=10, help="steps per round of (a)")
    parser.add_argument("--turns", type=int, default=8, help="tool turns per step in (a)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--loop-jobs", type=int, default=10, help="jobs per run of (b)")
    parser.add_argument("--loop-turns", type=int, default=16, help="tool turns per job in (b)")
    parser.add_argument("--bare", type=int, default=500, help="bare commits per round")
    parser.add_argument("--no-loop", action="store_true", help="skip (b)")
    args = parser.parse_args()
    cfg = Config(args.jobs, args.turns, args.rounds, args.loop_jobs, args.loop_turns, args.bare)
    summary: list[str] = []
    for backend in backends(args.backend):
        if backend == "sqlite":
            for sync in ("FULL", "NORMAL"):
                with tempfile.TemporaryDirectory() as tmp:
                    directory = Path(tmp)
                    m = measure(
                        f"sqlite {sync}",
                        sqlite_urls(directory),
                        sync,
                        cfg,
                        not args.no_loop,
                    )
                summary += report(
                    f"sqlite {sqlite3.sqlite_version}, WAL, synchronous={sync}",
                    m,
                    cfg,
                    sync == "FULL",
                )
                summary.append("")
        else:
            with postgres_server() as server:
                m = measure("postgres", server.create_database, "FULL", cfg, not args.no_loop)
                summary += report(pg_describe(server.url()), m, cfg, True)
            summary.append("")
    print("\n".join(summary).rstrip())


if __name__ == "__main__":
    run_main(main)
