"""Prometheus metrics, derived from the database at scrape time.

Every state change is an event row and every model call a ledger row, written by whichever
process did the work. `MetricsExporter` reads them, not in-process counters:

- **counters and histograms** by tailing the `events` table and the `llm_calls` ledger by id,
  from the start of the log, accumulating in memory (each process keeps its own position). Ids
  that were skipped (a PostgreSQL transaction that took its id earlier but committed later) and
  calls still in flight are looked at again on the next scrapes, so nothing is lost or counted
  twice;
- **gauges** (queue depth, approvals and their SLA, dead letters, breakers...) by reading the
  current state, through the indexes of the live states.

So the numbers are global, the same from any process that serves them, correct with any number
of workers, and the hot path pays nothing for them: no write, no extra round trip per step. Serve
them from ONE endpoint per deployment (the server's `/metrics`, or one worker's
`--metrics-port`): the samples carry no per-process label. See
docs/concepts/observability.md and docs/decisions/0029-metrics-from-the-event-log.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from prometheus_client import (
    GC_COLLECTOR,
    CollectorRegistry,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    start_http_server,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from stalwart.domain.budgets import NANOS_PER_USD
from stalwart.domain.observability import (
    OUTCOME_EVENTS,
    FeedEvent,
    LedgerEntry,
    MetricsSnapshot,
)
from stalwart.errors import StoreError
from stalwart.store.base import Store

log = logging.getLogger("stalwart.metrics")

R = TypeVar("R", FeedEvent, LedgerEntry)
Labels = tuple[str, ...]

# -- what is exported -----------------------------------------------------------------------------

STEP_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
JOB_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 86400)
COST_BUCKETS = (0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 50)
LLM_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120)
RATIO_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 1.0)

# A step error whose code starts so is an agent loop that stopped for a person (agent_max_turns...).
AGENT_CODE_PREFIX = "agent_"

# name (exposed with `_total`): help, labels
COUNTERS: dict[str, tuple[str, Labels]] = {
    "stalwart_jobs_submitted": ("Jobs submitted.", ("workflow", "tenant")),
    "stalwart_job_outcomes": (
        "Jobs that reached an outcome: completed, failed, rejected, cancelled (final), or "
        "dead_lettered, escalated (parked for a human; a redriven job counts again at its "
        "next outcome).",
        ("workflow", "tenant", "outcome"),
    ),
    "stalwart_job_replans": ("Replans started after a failure or a rejection.", ("workflow",)),
    "stalwart_replan_loops": (
        "Jobs escalated instead of replanning again: out of replans (cause max_replans) or the "
        "planner produced a plan already tried (cause repeated_plan).",
        ("workflow", "cause"),
    ),
    "stalwart_jobs_redriven": ("Parked jobs redriven by an operator.", ("workflow",)),
    "stalwart_step_attempts": (
        "Step attempts that ended: succeeded, error (the tool failed), lost (lease expired or "
        "worker died), released (a draining worker gave it back), cancelled.",
        ("workflow", "tool", "outcome"),
    ),
    "stalwart_step_errors": (
        "Failed step attempts by error class (divide by stalwart_step_attempts_total for the "
        "tool error rate).",
        ("workflow", "tool", "error_class"),
    ),
    "stalwart_step_retries": (
        "Retries scheduled after a failed attempt.",
        ("workflow", "tool", "error_class"),
    ),
    "stalwart_lease_expiries": (
        "Running steps recovered from a worker that stopped answering: its lease expired "
        "(cause lease_expired) or it was found dead at a restart (cause worker_died).",
        ("workflow", "tool", "cause"),
    ),
    "stalwart_rate_limit_delays": (
        "Steps delayed because the service answered 429 with Retry-After (no attempt used).",
        ("tool",),
    ),
    "stalwart_rate_limit_delay_seconds": (
        "Seconds of delay asked for by 429 answers.",
        ("tool",),
    ),
    "stalwart_limit_pauses": ("Times a limit key was paused after a 429.", ("key",)),
    "stalwart_breaker_transitions": (
        "Circuit breaker moves, by the state entered.",
        ("key", "state"),
    ),
    "stalwart_approvals_requested": (
        "Steps that asked a human (kind approval, human or interrupted).",
        ("workflow", "kind"),
    ),
    "stalwart_approvals_decided": ("Reviews decided.", ("workflow", "decision")),
    "stalwart_approvals_escalated": ("Reviews escalated past their SLA.", ("workflow",)),
    "stalwart_budget_warnings": (
        "Budgets that crossed their warning ratio (each warns once).",
        ("tenant", "scope"),
    ),
    "stalwart_evaluation_warnings": (
        "Soft evaluation failures (output accepted with a warning).",
        ("workflow",),
    ),
    "stalwart_agent_turns": ("Model turns of agent steps (recorded).", ("workflow", "tenant")),
    "stalwart_agent_tool_calls": (
        "Tool calls of agent steps that ended, by status: succeeded, failed, invalid (the "
        "arguments failed the tool's schema), refused, retry_wait (a transient failure, tried "
        "again: each counts).",
        ("workflow", "tool", "outcome"),
    ),
    "stalwart_agent_escalations": (
        "Agent steps that failed because their loop stopped for a person, by reason: "
        "max_turns, max_tool_calls, repeated_call, tool_refused, tool_errors (the step's error "
        "code without its agent_ prefix).",
        ("workflow", "reason"),
    ),
    "stalwart_llm_calls": ("Model calls, by how they ended.", ("provider", "model", "outcome")),
    "stalwart_llm_tokens": (
        "Tokens of model calls (type input, output, cached).",
        ("provider", "model", "type"),
    ),
    "stalwart_llm_cost_usd": (
        "Model spend in USD, per tenant and model.",
        ("tenant", "provider", "model"),
    ),
}

# name: help, labels, buckets
HISTOGRAMS: dict[str, tuple[str, Labels, tuple[float, ...]]] = {
    "stalwart_job_duration_seconds": (
        "Seconds from submission to the job's outcome.",
        ("workflow", "outcome"),
        JOB_BUCKETS,
    ),
    "stalwart_job_cost_usd": (
        "Model spend of a job (USD), observed at its outcome.",
        ("workflow", "outcome"),
        COST_BUCKETS,
    ),
    "stalwart_step_duration_seconds": (
        "Seconds of one step attempt, from its claim to its end.",
        ("workflow", "tool", "outcome"),
        STEP_BUCKETS,
    ),
    "stalwart_llm_call_duration_seconds": (
        "Seconds a model call took.",
        ("provider", "model"),
        LLM_BUCKETS,
    ),
    "stalwart_llm_context_utilization_ratio": (
        "Share of the context window a model call's context used.",
        ("provider", "model"),
        RATIO_BUCKETS,
    ),
}

GAUGES: dict[str, tuple[str, Labels]] = {
    "stalwart_queue_depth": (
        "Work waiting: steps ready or waiting to retry (queue ready, retry_wait) of running "
        "jobs, and jobs waiting for a planner (queue planning, replanning).",
        ("queue", "workflow", "priority"),
    ),
    "stalwart_steps_running": ("Steps running now.", ("workflow", "tool")),
    "stalwart_steps_delayed_by_limits": (
        "Steps due now that a limit (cap, rate, pause, open breaker) holds back.",
        ("key",),
    ),
    "stalwart_approvals_waiting": (
        "Reviews waiting for a human.",
        ("tenant", "workflow", "kind", "status"),
    ),
    "stalwart_approvals_past_sla": (
        "Reviews waiting past their SLA deadline.",
        ("tenant", "workflow"),
    ),
    "stalwart_approval_oldest_age_seconds": (
        "Age of the oldest review waiting.",
        ("tenant", "workflow"),
    ),
    "stalwart_approval_sla_headroom_seconds": (
        "Seconds left before the earliest SLA deadline of the reviews waiting (negative: past).",
        ("tenant", "workflow"),
    ),
    "stalwart_dead_letters_open": ("Open dead letters.", ("tenant", "workflow")),
    "stalwart_breaker_state": (
        "1 for the state each circuit breaker is in (closed, open, half_open).",
        ("key", "state"),
    ),
    "stalwart_limit_held_back": ("1 while a limit key lets no step start.", ("key",)),
    "stalwart_limit_slots_in_use": ("Concurrency slots of a key held by running steps.", ("key",)),
    "stalwart_limit_paused_seconds": ("Seconds left of a key's pause after a 429.", ("key",)),
    "stalwart_workers_live": ("Workers with a recent heartbeat.", ()),
    "stalwart_alert_incidents_open": ("Open alert incidents.", ("rule",)),
    "stalwart_exporter_caught_up": (
        "1 once this exporter has read the whole event log (until then counters are left out).",
        (),
    ),
}

# Of one process only (a worker's own endpoint, or the server's in-process workers).
WORKER_GAUGES: dict[str, tuple[str, Labels]] = {
    "stalwart_worker_steps_running": ("Steps this worker runs now.", ("worker",)),
    "stalwart_worker_concurrency": ("Steps this worker may run at once.", ("worker",)),
}
WORKER_COUNTERS: dict[str, tuple[str, Labels]] = {
    "stalwart_worker_steps": ("Steps this worker process ran.", ("worker",)),
}


def metric_names() -> set[str]:
    """Every sample name the exporter can emit (counters with `_total`, histograms with
    `_bucket`, `_sum`, `_count`)."""
    names = {f"{n}_total" for n in (*COUNTERS, *WORKER_COUNTERS)}
    names |= set(GAUGES) | set(WORKER_GAUGES)
    for name in HISTOGRAMS:
        names |= {name, f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    return names


# -- accumulating ---------------------------------------------------------------------------------


@dataclass(slots=True)
class _Histogram:
    buckets: tuple[float, ...]
    series: dict[Labels, list[float]] = field(default_factory=dict)  # counts..., sum

    def observe(self, labels: Labels, value: float) -> None:
        row = self.series.get(labels)
        if row is None:
            row = self.series[labels] = [0.0] * (len(self.buckets) + 2)
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                row[i] += 1
                break
        else:
            row[len(self.buckets)] += 1  # +Inf
        row[-1] += value

    def family(self, name: str, doc: str, label_names: Labels) -> HistogramMetricFamily:
        fam = HistogramMetricFamily(name, doc, labels=list(label_names))
        for labels, row in sorted(self.series.items()):
            cumulative, out = 0.0, []
            for bound, count in zip(self.buckets, row, strict=False):
                cumulative += count
                out.append((_bound(bound), cumulative))
            cumulative += row[len(self.buckets)]
            out.append(("+Inf", cumulative))
            fam.add_metric(list(labels), out, row[-1])
        return fam


def _bound(value: float) -> str:
    return repr(float(value))


@dataclass(slots=True)
class _Tail:
    """Where one table's tail is: the last id read, and ids to look at again (skipped ids that
    may still commit; ledger rows still in flight), each with when to give up on it."""

    last: int = 0
    again: dict[int, float] = field(default_factory=dict)


# A transaction that takes longer than this between taking an event id and committing is missed
# (counted by nobody); a model call in flight longer than RESERVED_SECONDS too.
GAP_SECONDS = 300.0
RESERVED_SECONDS = 3600.0
MAX_AGAIN = 10_000  # ids remembered for a second look
IDS_PER_READ = 1000
MAX_STARTED = 200_000  # attempts in flight remembered for their duration


class WorkerLike(Protocol):
    """What the exporter shows of an in-process worker."""

    @property
    def worker_id(self) -> str:
        """Its id."""
        ...

    @property
    def busy(self) -> int:
        """Steps it runs now."""
        ...

    @property
    def concurrency(self) -> int:
        """Steps it may run at once."""
        ...

    @property
    def steps_run(self) -> int:
        """Steps it ran."""
        ...


class MetricsExporter:
    """Reads the database into Prometheus metrics: `await refresh()`, then `collect()`.

    One per process (its position in the log lives here). `refresh` is safe to call from
    several tasks at once (they take turns); `collect` only reads memory."""

    def __init__(
        self,
        store: Store,
        *,
        batch: int = 5000,
        catch_up_seconds: float = 5.0,
        live_seconds: float = 30.0,
    ) -> None:
        self.store = store
        self.batch = batch
        self.catch_up_seconds = catch_up_seconds
        self.live_seconds = live_seconds
        self.caught_up = False
        self.counters: dict[str, dict[Labels, float]] = {n: {} for n in COUNTERS}
        self.histograms = {n: _Histogram(spec[2]) for n, spec in HISTOGRAMS.items()}
        self.snapshot: MetricsSnapshot | None = None
        self._events = _Tail()
        self._ledger = _Tail()
        self._started: dict[int, float] = {}
        self._outcomes: list[tuple[str, str, str]] = []  # (job, workflow, outcome) to price
        self._lock: asyncio.Lock | None = None

    # -- reading ----------------------------------------------------------------------------------

    async def refresh(self) -> None:
        """Read what happened since the last refresh, and the current state. A first refresh
        that cannot read the whole log within `catch_up_seconds` goes on at the next one."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            deadline = time.monotonic() + self.catch_up_seconds
            events_done = await self._tail(
                self._events, self.store.event_feed, self._apply_event, deadline
            )
            await self._price_outcomes()
            ledger_done = await self._tail(
                self._ledger, self.store.llm_call_feed, self._apply_call, deadline
            )
            self.caught_up = self.caught_up or (events_done and ledger_done)
            self.snapshot = await self.store.metrics_snapshot(live_seconds=self.live_seconds)

    async def _tail(
        self,
        tail: _Tail,
        fetch: Callable[..., Awaitable[list[R]]],
        apply: Callable[[R], bool],
        deadline: float,
    ) -> bool:
        """Apply rows after `tail.last`, and the rows to look at again; True when caught up."""
        now = time.monotonic()
        if tail.again:
            for row_id in [i for i, until in tail.again.items() if until < now]:
                del tail.again[row_id]
            wanted = sorted(tail.again)
            for start in range(0, len(wanted), IDS_PER_READ):
                for row in await fetch(ids=wanted[start : start + IDS_PER_READ]):
                    if apply(row):
                        del tail.again[row.id]
        recent = time.time() - GAP_SECONDS
        while True:
            rows = await fetch(tail.last, limit=self.batch)
            for row in rows:
                if row.id > tail.last + 1 and _at(row) >= recent:
                    # Ids skipped in a recent stretch of the log: a transaction that took them
                    # may not have committed yet (PostgreSQL); look again at the next refresh.
                    for skipped in range(tail.last + 1, min(row.id, tail.last + 1 + MAX_AGAIN)):
                        self._again(tail, skipped, now + GAP_SECONDS)
                if not apply(row):
                    self._again(tail, row.id, now + RESERVED_SECONDS)
                tail.last = row.id
            if len(rows) < self.batch:
                return True
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0)  # let the worker's steps run between batches

    @staticmethod
    def _again(tail: _Tail, row_id: int, until: float) -> None:
        if row_id not in tail.again and len(tail.again) < MAX_AGAIN:
            tail.again[row_id] = until

    async def _price_outcomes(self) -> None:
        if not self._outcomes:
            return
        pending = self._outcomes
        costs = await self.store.job_costs([job for job, _, _ in pending])
        self._outcomes = []  # only once read: a failed read prices them at the next refresh
        hist = self.histograms["stalwart_job_cost_usd"]
        for job, workflow, outcome in pending:
            hist.observe((workflow, outcome), costs.get(job, 0) / NANOS_PER_USD)

    # -- applying one row -------------------------------------------------------------------------

    def _inc(self, name: str, labels: Labels, by: float = 1.0) -> None:
        series = self.counters[name]
        series[labels] = series.get(labels, 0.0) + by

    def _apply_event(self, e: FeedEvent) -> bool:
        wf = e.workflow or ""
        kind = e.kind
        data = e.data or {}
        if kind == "step_started" and e.step_id is not None:
            if len(self._started) >= MAX_STARTED:
                self._started.pop(next(iter(self._started)))
            self._started[e.step_id] = e.at
            return True
        if e.step_id is not None and e.from_status == "running":
            self._attempt_ended(e, wf)
        if kind in OUTCOME_EVENTS:
            outcome = OUTCOME_EVENTS[kind]
            self._inc("stalwart_job_outcomes", (wf, e.tenant_id, outcome))
            if e.job_created is not None:
                self.histograms["stalwart_job_duration_seconds"].observe(
                    (wf, outcome), max(0.0, e.at - e.job_created)
                )
            self._outcomes.append((e.job_id, wf, outcome))
            if kind == "job_escalated":
                if "no replans left" in e.reason:
                    self._inc("stalwart_replan_loops", (wf, "max_replans"))
                elif "already tried" in e.reason:
                    self._inc("stalwart_replan_loops", (wf, "repeated_plan"))
        elif kind == "step_retry_scheduled":
            found = data.get("error")
            error: dict[str, Any] = found if isinstance(found, dict) else {}
            tool = _tool(e)
            self._inc("stalwart_step_retries", (wf, tool, str(error.get("error_class") or "")))
            if error.get("code") == "http_429" and error.get("retry_after"):
                self._inc("stalwart_rate_limit_delays", (tool,))
                self._inc(
                    "stalwart_rate_limit_delay_seconds",
                    (tool,),
                    float(data.get("delay_seconds") or error.get("retry_after") or 0.0),
                )
        elif kind == "job_submitted":
            self._inc("stalwart_jobs_submitted", (wf, e.tenant_id))
        elif kind == "job_replanning_started":
            self._inc("stalwart_job_replans", (wf,))
        elif kind == "job_redriven":
            self._inc("stalwart_jobs_redriven", (wf,))
        elif kind == "review_requested":
            self._inc("stalwart_approvals_requested", (wf, str(data.get("review_kind") or "")))
        elif kind in ("review_approved", "review_rejected"):
            self._inc("stalwart_approvals_decided", (wf, kind.removeprefix("review_")))
        elif kind == "review_escalated":
            self._inc("stalwart_approvals_escalated", (wf,))
        elif kind == "limit_paused":
            self._inc("stalwart_limit_pauses", (str(data.get("key") or ""),))
        elif kind.startswith("breaker_"):
            state = kind.removeprefix("breaker_")
            self._inc("stalwart_breaker_transitions", (str(data.get("key") or ""), state))
        elif kind == "budget_warning":
            self._inc("stalwart_budget_warnings", (e.tenant_id, str(data.get("scope") or "")))
        elif kind == "evaluation_warning":
            self._inc("stalwart_evaluation_warnings", (wf,))
        elif kind == "agent_turn":
            self._inc("stalwart_agent_turns", (wf, e.tenant_id))
        elif kind == "agent_tool_call":
            tool, outcome = str(data.get("tool") or ""), str(data.get("outcome") or "")
            self._inc("stalwart_agent_tool_calls", (wf, tool, outcome))
        elif kind == "step_failed":
            found = data.get("error")
            code = str(found.get("code") or "") if isinstance(found, dict) else ""
            if code.startswith(AGENT_CODE_PREFIX):
                reason = code.removeprefix(AGENT_CODE_PREFIX)
                self._inc("stalwart_agent_escalations", (wf, reason))
        return True

    def _attempt_ended(self, e: FeedEvent, wf: str) -> None:
        """An event that takes a step out of `running`: how its attempt ended, and how long."""
        assert e.step_id is not None
        tool = _tool(e)
        started = self._started.pop(e.step_id, None)
        error = (e.data or {}).get("error")
        if e.to_status == "succeeded":
            outcome = "succeeded"
        elif e.to_status == "cancelled":
            outcome = "cancelled"
        elif isinstance(error, dict):
            outcome = "error"
            self._inc("stalwart_step_errors", (wf, tool, str(error.get("error_class") or "")))
        elif e.reason.startswith(("lease expired", "its worker died")):
            outcome = "lost"
            cause = "lease_expired" if e.reason.startswith("lease") else "worker_died"
            self._inc("stalwart_lease_expiries", (wf, tool, cause))
        elif e.to_status in ("ready", "interrupted"):
            outcome = "released"
        else:
            outcome = "other"
        self._inc("stalwart_step_attempts", (wf, tool, outcome))
        if started is not None:
            self.histograms["stalwart_step_duration_seconds"].observe(
                (wf, tool, outcome), max(0.0, e.at - started)
            )

    def _apply_call(self, c: LedgerEntry) -> bool:
        if c.outcome == "reserved":
            return False  # in flight: its figures come when it settles
        model = (c.provider, c.model)
        self._inc("stalwart_llm_calls", (*model, c.outcome))
        for kind, tokens in (
            ("input", c.input_tokens),
            ("output", c.output_tokens),
            ("cached", c.cached_tokens),
        ):
            if tokens:
                self._inc("stalwart_llm_tokens", (*model, kind), tokens)
        self._inc("stalwart_llm_cost_usd", (c.tenant_id, *model), c.cost_nanos / NANOS_PER_USD)
        if c.latency_ms is not None:
            self.histograms["stalwart_llm_call_duration_seconds"].observe(
                model, c.latency_ms / 1000
            )
        if c.context_tokens and c.context_limit:
            self.histograms["stalwart_llm_context_utilization_ratio"].observe(
                model, c.context_tokens / c.context_limit
            )
        return True

    # -- exposing ---------------------------------------------------------------------------------

    def collect(self) -> Iterator[Metric]:
        """The metric families, from memory (call `refresh` first)."""
        yield _gauge("stalwart_exporter_caught_up", [((), 1.0 if self.caught_up else 0.0)])
        if self.caught_up:
            # Counters are left out until the whole log is read: a low first value would look
            # to Prometheus like a reset followed by the whole history at once.
            for name, (doc, labels) in COUNTERS.items():
                fam = CounterMetricFamily(name, doc, labels=list(labels))
                for values, total in sorted(self.counters[name].items()):
                    fam.add_metric(list(values), total)
                yield fam
            for name, (doc, labels, _) in HISTOGRAMS.items():
                yield self.histograms[name].family(name, doc, labels)
        if self.snapshot is not None:
            yield from _state_families(self.snapshot)


def _at(row: FeedEvent | LedgerEntry) -> float:
    return row.at if isinstance(row, FeedEvent) else row.created


def _tool(e: FeedEvent) -> str:
    """The tool label: the tool's name, or `<llm>` / `<human>` for steps without a tool."""
    if e.tool:
        return e.tool
    return f"<{e.step_kind}>" if e.step_kind else ""


def _gauge(name: str, samples: Iterable[tuple[Labels, float]]) -> GaugeMetricFamily:
    doc, labels = GAUGES.get(name) or WORKER_GAUGES[name]
    fam = GaugeMetricFamily(name, doc, labels=list(labels))
    for values, value in samples:
        fam.add_metric(list(values), value)
    return fam


def _sum(rows: Iterable[tuple[Labels, float]]) -> list[tuple[Labels, float]]:
    out: dict[Labels, float] = {}
    for labels, value in rows:
        out[labels] = out.get(labels, 0.0) + value
    return sorted(out.items())


def _state_families(s: MetricsSnapshot) -> Iterator[GaugeMetricFamily]:
    yield _gauge(
        "stalwart_queue_depth",
        _sum(((q.queue, q.workflow, str(q.priority)), q.count) for q in s.queue),
    )
    yield _gauge(
        "stalwart_steps_running", _sum(((r.workflow, r.tool or ""), r.count) for r in s.running)
    )
    held = {g.key for g in s.limits if g.held_back}
    delayed: list[tuple[Labels, float]] = [((key,), 0.0) for key in sorted(held)]
    for q in s.queue:
        if q.due and q.queue in ("ready", "retry_wait"):
            for limit_key in (f"tool:{q.tool}" if q.tool else None, f"tenant:{q.tenant_id}"):
                if limit_key is not None and limit_key in held:
                    delayed.append(((limit_key,), q.due))
    yield _gauge("stalwart_steps_delayed_by_limits", _sum(delayed))
    yield _gauge(
        "stalwart_approvals_waiting",
        _sum(((a.tenant_id, a.workflow, a.kind, a.status), a.count) for a in s.approvals),
    )
    yield _gauge(
        "stalwart_approvals_past_sla",
        _sum(((a.tenant_id, a.workflow), a.past_sla) for a in s.approvals),
    )
    oldest: dict[Labels, float] = {}
    earliest: dict[Labels, float] = {}
    for a in s.approvals:
        key = (a.tenant_id, a.workflow)
        oldest[key] = min(oldest.get(key, a.oldest_created), a.oldest_created)
        earliest[key] = min(earliest.get(key, a.earliest_deadline), a.earliest_deadline)
    yield _gauge(
        "stalwart_approval_oldest_age_seconds",
        sorted((k, max(0.0, s.now - v)) for k, v in oldest.items()),
    )
    yield _gauge(
        "stalwart_approval_sla_headroom_seconds",
        sorted((k, v - s.now) for k, v in earliest.items()),
    )
    yield _gauge(
        "stalwart_dead_letters_open",
        _sum(((d.tenant_id, d.workflow), d.count) for d in s.dead_letters),
    )
    yield _gauge(
        "stalwart_breaker_state",
        [
            ((g.key, state), 1.0 if g.breaker_state == state else 0.0)
            for g in s.limits
            if g.breaker
            for state in ("closed", "open", "half_open")
        ],
    )
    yield _gauge("stalwart_limit_held_back", [((g.key,), float(g.held_back)) for g in s.limits])
    yield _gauge(
        "stalwart_limit_slots_in_use",
        [((g.key,), float(g.in_use)) for g in s.limits if g.concurrency is not None],
    )
    yield _gauge("stalwart_limit_paused_seconds", [((g.key,), g.paused_seconds) for g in s.limits])
    yield _gauge("stalwart_workers_live", [((), float(s.workers_live))])
    yield _gauge(
        "stalwart_alert_incidents_open", sorted(((r,), float(n)) for r, n in s.alerts_open.items())
    )


# -- registries and endpoints ---------------------------------------------------------------------


class _StoreCollector(Collector):
    """The exporter as a prometheus_client collector. With a `loop`, each collection first
    runs `refresh()` on that loop (from the HTTP server's thread); without, the caller has
    refreshed already (an async route)."""

    def __init__(
        self,
        exporter: MetricsExporter,
        loop: asyncio.AbstractEventLoop | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.exporter = exporter
        self.loop = loop
        self.timeout = timeout

    def collect(self) -> Iterable[Metric]:
        if self.loop is not None:
            try:
                if self.loop.is_closed():
                    raise RuntimeError("the worker's event loop is closed")
                future = asyncio.run_coroutine_threadsafe(self.exporter.refresh(), self.loop)
                try:
                    future.result(timeout=self.timeout)
                finally:
                    future.cancel()
            except (StoreError, TimeoutError) as exc:
                # An outage (or a database too slow for the scrape): one line, no traceback.
                log.warning(
                    "metrics: could not read the database (%s); serving the last figures",
                    exc or "timed out",
                    extra={"action": "metrics_refresh_failed"},
                )
            except Exception:
                log.exception(
                    "metrics: could not read the database; serving the last figures",
                    extra={"action": "metrics_refresh_failed"},
                )
        return list(self.exporter.collect())


class _WorkerCollector(Collector):
    """This process's workers: steps running, concurrency, steps run."""

    def __init__(self, workers: Callable[[], Sequence[WorkerLike]]) -> None:
        self.workers = workers

    def collect(self) -> Iterable[Metric]:
        workers = list(self.workers())
        yield _gauge("stalwart_worker_steps_running", [((w.worker_id,), w.busy) for w in workers])
        yield _gauge(
            "stalwart_worker_concurrency", [((w.worker_id,), w.concurrency) for w in workers]
        )
        doc, labels = WORKER_COUNTERS["stalwart_worker_steps"]
        fam = CounterMetricFamily("stalwart_worker_steps", doc, labels=list(labels))
        for w in workers:
            fam.add_metric([w.worker_id], w.steps_run)
        yield fam


def metrics_registry(
    exporter: MetricsExporter,
    *,
    workers: Callable[[], Sequence[WorkerLike]] | None = None,
    loop: asyncio.AbstractEventLoop | None = None,
    process: bool = True,
) -> CollectorRegistry:
    """A registry of the exporter's metrics, this process's `workers`, and (`process`) the
    standard process, platform and GC collectors of prometheus_client."""
    registry = CollectorRegistry()
    registry.register(_StoreCollector(exporter, loop))
    if workers is not None:
        registry.register(_WorkerCollector(workers))
    if process:
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        if GC_COLLECTOR is not None:
            GCCollector(registry=registry)
    return registry


@dataclass
class MetricsServer:
    """`/metrics` of one worker process, on a thread of its own (prometheus_client's server)."""

    host: str
    port: int
    _server: Any
    _thread: threading.Thread

    @property
    def url(self) -> str:
        """Where it answers."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        """Stop answering."""
        with contextlib.suppress(Exception):
            self._server.shutdown()
            self._server.server_close()
        self._thread.join(timeout=5)


def serve_metrics(
    store: Store,
    *,
    port: int,
    host: str = "127.0.0.1",
    workers: Callable[[], Sequence[WorkerLike]] | None = None,
    live_seconds: float = 30.0,
) -> MetricsServer:
    """Serve `store`'s metrics (and `workers`') on `host:port` from a thread. Call it from the
    event loop the store is used on: each scrape reads the database on that loop. A worker is
    live when its heartbeat is younger than `live_seconds` (the lease time)."""
    exporter = MetricsExporter(store, live_seconds=live_seconds)
    registry = metrics_registry(exporter, workers=workers, loop=asyncio.get_running_loop())
    server, thread = start_http_server(port, addr=host, registry=registry)
    return MetricsServer(host, int(server.server_port), server, thread)
