"""A job's trace rebuilt from what the database already holds: the events, the steps, the plans
and the ledger of model calls. No collector needed: `stalwart jobs trace ID` and the web UI's job
page show this tree. Pure functions, no I/O.

The tree has the shape of the live trace (OpenTelemetry GenAI conventions):

    invoke_workflow {workflow}        kind "job": the job, from submit to its final status
    ├── plan {workflow}               kind "plan": one per planning (first plan, each replan)
    │   └── chat {model}              kind "llm": the planner's model calls
    ├── step {key}                    kind "step": one per attempt (`attempt` numbers it)
    │   ├── execute_tool {tool}       kind "tool": the tool's run (tool steps)
    │   ├── chat {model}              kind "llm": the attempt's model calls (llm steps)
    │   └── budget_warning {scope}    kind "marker": an instant (budget and evaluation warnings)
    ├── approval {key}                kind "approval": from the review's request to its decision
    └── job_redriven                  kind "marker": other instants (redrive, breakers, pauses)

Attempts are paired by the step's id: a `step_started` event (its `data.attempt` numbers the
attempt) opens one, and the next event of the same step that leaves `running` closes it
(succeeded, retry scheduled, failed, lease lost or released, interrupted, cancelled). A ledger
row belongs to the attempt with its step key and attempt number whose time window holds the
call (a step key can repeat across plan versions); calls without a step belong to the planning
window they fall in. Every ledger row appears exactly once, so the tree's token and cost sums
equal the ledger's.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from stalwart.domain.budgets import LlmCallRecord, usd
from stalwart.domain.records import EventRecord, JobRecord, StepRecord
from stalwart.domain.states import JOB_PARKED, JOB_TERMINAL
from stalwart.observability.tracing import trace_id_of
from stalwart.types import to_datetime

if TYPE_CHECKING:
    from stalwart.store.base import PlanRecord

JOB = "job"
PLAN = "plan"
STEP = "step"
LLM = "llm"
TOOL = "tool"
APPROVAL = "approval"
MARKER = "marker"

OK, ERROR, UNSET = "ok", "error", "unset"

# How an attempt ended, by the status its step moved to from `running`.
_ATTEMPT_END = {
    "succeeded": ("succeeded", OK),
    "retry_wait": ("retry", ERROR),
    "failed": ("failed", ERROR),
    "interrupted": ("interrupted", ERROR),
    "cancelled": ("cancelled", ERROR),
}
_MARKERS = ("budget_warning", "evaluation_warning", "job_redriven", "limit_paused", "breaker_")
# Times come from one clock (the database's on PostgreSQL) but a window's edges and the calls in
# it are written by different transactions: allow this much slack when matching.
_SLACK = 0.05


@dataclass(slots=True)
class TraceNode:
    """One span of the trace (or an instant: a marker, whose end is its start)."""

    name: str
    kind: str
    start: float
    end: float | None = None
    status: str = UNSET  # ok | error | unset: OpenTelemetry's status codes
    outcome: str = ""  # what happened, in a word: succeeded, retry, approved, cached...
    attributes: dict[str, Any] = field(default_factory=dict)
    children: list[TraceNode] = field(default_factory=list)

    @property
    def duration(self) -> float | None:
        """Seconds from start to end; None while it is still open."""
        return None if self.end is None else max(0.0, self.end - self.start)

    def extent(self, now: float) -> float:
        """Seconds from start to end, or to `now` while it is still open."""
        return max(0.0, (self.end if self.end is not None else now) - self.start)

    def walk(self) -> Iterator[TraceNode]:
        """This node and every node under it, depth first, in order."""
        yield self
        for child in self.children:
            yield from child.walk()

    def to_dict(self, origin: float | None = None) -> dict[str, Any]:
        """JSON-ready form: ISO times, `offset_ms` from `origin` (the root's start by default),
        `duration_ms` (None while open), and the children."""
        base = self.start if origin is None else origin
        end = to_datetime(self.end)
        return {
            "name": self.name,
            "kind": self.kind,
            "status": self.status,
            "outcome": self.outcome,
            "start": _iso(self.start),
            "end": end.isoformat() if end else None,
            "offset_ms": round((self.start - base) * 1000, 1),
            "duration_ms": None if self.duration is None else round(self.duration * 1000, 1),
            "attributes": self.attributes,
            "children": [c.to_dict(base) for c in self.children],
        }


def _iso(epoch: float) -> str:
    moment = to_datetime(epoch)
    assert moment is not None
    return moment.isoformat()


def build_trace(
    job: JobRecord,
    steps: Sequence[StepRecord],
    events: Sequence[EventRecord],
    calls: Sequence[LlmCallRecord],
    plans: Sequence[PlanRecord],
) -> TraceNode:
    """The job's span tree (see the module's docstring). `steps` should hold every plan
    version's steps; `events` every event of the job, in order."""
    return _Builder(job, steps, plans).build(events, calls)


class _Builder:
    def __init__(
        self, job: JobRecord, steps: Sequence[StepRecord], plans: Sequence[PlanRecord]
    ) -> None:
        self.job = job
        self.steps = {s.id: s for s in steps}
        self.plans = {p.version: p for p in plans}
        self.root = TraceNode(
            f"invoke_workflow {job.workflow}",
            JOB,
            job.created,
            attributes={
                "job_id": job.id,
                "tenant": job.tenant_id,
                "workflow": job.workflow,
                "status": job.status,
                "plan_version": job.plan_version,
                "replans": job.replans,
            },
        )
        trace_id = trace_id_of(job.trace_context)
        if trace_id:
            self.root.attributes["trace_id"] = trace_id
        if job.degraded:
            self.root.attributes["degraded"] = True
        self.plan_nodes: list[TraceNode] = []
        self.open_plan: TraceNode | None = None
        self.attempt_nodes: list[TraceNode] = []
        self.open_attempts: dict[int, TraceNode] = {}
        self.last_attempt: dict[int, TraceNode] = {}
        self.approvals: dict[str, TraceNode] = {}
        self.open_approvals: dict[str, TraceNode] = {}
        self.parked_at: float | None = None

    # -- the events, in order ---------------------------------------------------------------------

    def build(self, events: Sequence[EventRecord], calls: Sequence[LlmCallRecord]) -> TraceNode:
        for event in events:
            self._event(event)
        self._close_root()
        for call in calls:
            self._place_call(call)
        _sort(self.root)
        return self.root

    def _event(self, e: EventRecord) -> None:
        kind = e.kind
        if kind in ("job_planning_started", "job_replanning_started"):
            self._open_plan(e)
        elif kind == "plan_created":
            self._plan_created(e)
        elif kind == "step_started":
            self._start_attempt(e)
        elif kind == "review_requested":
            self._open_approval(e)
        elif kind in ("review_approved", "review_rejected"):
            self._decide_approval(e)
        elif kind == "review_escalated":
            self._escalate_approval(e)
        elif kind.startswith(_MARKERS):
            self._marker(e)
        if e.step_id is not None and e.from_status is not None:
            if e.from_status == "running":
                self._end_attempt(e)
            elif e.from_status in ("awaiting_approval", "interrupted"):
                self._step_left_review(e)
        if kind.startswith("job_") and e.to_status is not None:
            self._job_moved(e)

    def _open_plan(self, e: EventRecord) -> None:
        if self.open_plan is not None:
            self._close(self.open_plan, e.at, "superseded", UNSET)
        replanning = e.kind == "job_replanning_started"
        node = TraceNode(
            f"plan {self.job.workflow}",
            PLAN,
            e.at,
            attributes={"replan": replanning} | ({"reason": e.reason} if replanning else {}),
        )
        self.plan_nodes.append(node)
        self.root.children.append(node)
        self.open_plan = node

    def _plan_created(self, e: EventRecord) -> None:
        node = self.open_plan
        if node is None:  # a plan with no planning event before it: an instant
            node = TraceNode(f"plan {self.job.workflow}", PLAN, e.at)
            self.plan_nodes.append(node)
            self.root.children.append(node)
        data = e.data or {}
        version = data.get("version")
        node.attributes.update(
            {
                "version": version,
                "template": data.get("template"),
                "plan_hash": data.get("plan_hash"),
                "steps": data.get("steps"),
            }
        )
        if data.get("reused"):
            node.attributes["reused"] = data["reused"]
        record = self.plans.get(version) if isinstance(version, int) else None
        if record is not None:
            node.attributes["template_hash"] = record.template_hash
        self._close(node, e.at, "planned", OK)
        self.open_plan = None

    def _job_moved(self, e: EventRecord) -> None:
        target = e.to_status
        if self.open_plan is not None and target not in ("planning", "replanning", "executing"):
            # Planning ended without a plan: escalated, failed, cancelled.
            self._close(self.open_plan, e.at, str(target), ERROR)
            self.open_plan.attributes["reason"] = e.reason
            self.open_plan = None
        if target in JOB_PARKED:
            self.parked_at = e.at
        elif target not in JOB_TERMINAL:
            self.parked_at = None

    def _start_attempt(self, e: EventRecord) -> None:
        assert e.step_id is not None
        previous = self.open_attempts.pop(e.step_id, None)
        if previous is not None:  # a start with no end recorded: close it where the next began
            self._close(previous, e.at, "abandoned", ERROR)
        data = e.data or {}
        step = self.steps.get(e.step_id)
        earlier = self.last_attempt.get(e.step_id)
        attempt = data.get("attempt")
        if not isinstance(attempt, int):
            attempt = (earlier.attributes["attempt"] + 1) if earlier else 1
        key = e.step_key or (step.key if step else str(e.step_id))
        attrs: dict[str, Any] = {"step": key, "step_id": e.step_id, "attempt": attempt}
        if step is not None:
            attrs.update(plan_version=step.plan_version, step_kind=step.kind)
            if step.tool:
                attrs["tool"] = step.tool
            attrs["max_attempts"] = step.max_attempts
        if data.get("worker"):
            attrs["worker"] = data["worker"]
        node = TraceNode(f"step {key}", STEP, e.at, attributes=attrs)
        if step is not None and step.kind == "tool" and step.tool:
            node.children.append(
                TraceNode(f"execute_tool {step.tool}", TOOL, e.at, attributes={"tool": step.tool})
            )
        self.root.children.append(node)
        self.attempt_nodes.append(node)
        self.open_attempts[e.step_id] = node
        self.last_attempt[e.step_id] = node

    def _end_attempt(self, e: EventRecord) -> None:
        assert e.step_id is not None
        node = self.open_attempts.pop(e.step_id, None)
        if node is None:
            return
        target = e.to_status or ""
        if target == "ready":
            lost = "lease expired" in e.reason or "died" in e.reason
            outcome, status = ("lease_lost", ERROR) if lost else ("released", UNSET)
        else:
            outcome, status = _ATTEMPT_END.get(target, (target, ERROR))
        data = e.data or {}
        error = data.get("error")
        if isinstance(error, dict):
            node.attributes["error_class"] = error.get("error_class")
            node.attributes["error"] = error.get("message")
            if error.get("code"):
                node.attributes["error_code"] = error["code"]
        if "delay_seconds" in data:
            node.attributes["retry_in_s"] = data["delay_seconds"]
        if e.reason and status != OK:
            node.attributes["reason"] = e.reason
        self._close(node, e.at, outcome, status)
        for child in node.children:
            if child.kind == TOOL:
                self._close(child, e.at, outcome, status)
                if "error_class" in node.attributes:
                    child.attributes["error_class"] = node.attributes["error_class"]

    def _open_approval(self, e: EventRecord) -> None:
        data = e.data or {}
        review_id = str(data.get("review_id") or f"event-{e.id}")
        key = e.step_key or ""
        node = TraceNode(
            f"approval {key}".rstrip(),
            APPROVAL,
            e.at,
            attributes={
                "review_id": review_id,
                "review_kind": data.get("review_kind"),
                "step": key,
                "reason": e.reason,
            },
        )
        self.root.children.append(node)
        self.approvals[review_id] = node
        self.open_approvals[review_id] = node

    def _decide_approval(self, e: EventRecord) -> None:
        data = e.data or {}
        node = self.open_approvals.pop(str(data.get("review_id")), None)
        if node is None:
            return
        approved = e.kind == "review_approved"
        node.attributes["reviewer"] = data.get("reviewer") or e.actor
        if e.reason:
            node.attributes["comment"] = e.reason
        self._close(node, e.at, "approved" if approved else "rejected", OK if approved else ERROR)

    def _escalate_approval(self, e: EventRecord) -> None:
        node = self.approvals.get(str((e.data or {}).get("review_id")))
        if node is None:
            self._marker(e)
            return
        node.attributes["escalated"] = True
        node.children.append(_instant("review_escalated", e, {"reason": e.reason}))

    def _step_left_review(self, e: EventRecord) -> None:
        """A step left its review without a decision (superseded by a replan, cancelled)."""
        if e.to_status not in ("skipped", "cancelled"):
            return
        for review_id, node in list(self.open_approvals.items()):
            if node.attributes.get("step") == e.step_key:
                self._close(node, e.at, str(e.to_status), UNSET)
                del self.open_approvals[review_id]

    def _marker(self, e: EventRecord) -> None:
        data = dict(e.data or {})
        name = e.kind
        if e.kind == "budget_warning" and data.get("scope"):
            name = f"budget_warning {data['scope']}"
        attrs: dict[str, Any] = {**data}
        if e.step_key:
            attrs["step"] = e.step_key
        if e.reason:
            attrs["reason"] = e.reason
        marker = _instant(name, e, attrs)
        if e.kind == "budget_warning":
            marker.status = ERROR
        self._parent_at(e).children.append(marker)

    def _parent_at(self, e: EventRecord) -> TraceNode:
        """Where an instant belongs: the step attempt it happened in, else the root."""
        if e.step_id is not None:
            node = self.open_attempts.get(e.step_id) or self.last_attempt.get(e.step_id)
            if node is not None and node.start - _SLACK <= e.at <= _end(node) + _SLACK:
                return node
        if e.step_key:
            for node in reversed(self.attempt_nodes):
                if node.attributes["step"] == e.step_key and _holds(node, e.at):
                    return node
        elif self.open_plan is not None:
            return self.open_plan
        return self.root

    def _close_root(self) -> None:
        job, root = self.job, self.root
        root.outcome = job.status
        if job.status in JOB_TERMINAL:
            root.end = job.finished if job.finished is not None else job.updated
            root.status = OK if job.status == "completed" else ERROR
        elif job.status in JOB_PARKED:
            root.end = self.parked_at if self.parked_at is not None else job.updated
            root.status = ERROR
        if job.error:
            root.attributes["error"] = job.error.get("message")
            if job.error.get("error_class"):
                root.attributes["error_class"] = job.error["error_class"]
        if root.end is None:
            return
        for node in self.open_attempts.values():
            self._close(node, root.end, "abandoned", ERROR)
            for child in node.children:
                self._close(child, root.end, "abandoned", ERROR)
        self.open_attempts.clear()
        for node in self.open_approvals.values():
            self._close(node, root.end, "unanswered", UNSET)
        self.open_approvals.clear()
        if self.open_plan is not None:
            self._close(self.open_plan, root.end, job.status, ERROR)
            self.open_plan = None

    @staticmethod
    def _close(node: TraceNode, at: float, outcome: str, status: str) -> None:
        node.end = max(at, node.start)
        node.outcome = outcome
        node.status = status

    # -- the ledger ------------------------------------------------------------------------------

    def _place_call(self, call: LlmCallRecord) -> None:
        node = _chat(call)
        self._call_parent(call).children.append(node)

    def _call_parent(self, call: LlmCallRecord) -> TraceNode:
        at = call.created
        if call.step_key:
            same = [
                n
                for n in self.attempt_nodes
                if n.attributes["step"] == call.step_key and n.attributes["attempt"] == call.attempt
            ]
            for node in same:
                if _holds(node, at):
                    return node
            started = [n for n in same if n.start <= at + _SLACK]
            if started:
                return started[-1]
            for node in self.attempt_nodes:  # an attempt number the ledger counts differently
                if node.attributes["step"] == call.step_key and _holds(node, at):
                    return node
            return same[0] if same else self.root
        for node in self.plan_nodes:
            if _holds(node, at):
                return node
        if call.purpose == "planning":
            started = [n for n in self.plan_nodes if n.start <= at + _SLACK]
            if started:
                return started[-1]
        return self.root


def _end(node: TraceNode) -> float:
    return node.end if node.end is not None else float("inf")


def _holds(node: TraceNode, at: float) -> bool:
    return node.start - _SLACK <= at <= _end(node) + _SLACK


def _instant(name: str, e: EventRecord, attrs: dict[str, Any]) -> TraceNode:
    return TraceNode(name, MARKER, e.at, e.at, UNSET, e.kind, attrs)


def _chat(call: LlmCallRecord) -> TraceNode:
    if call.outcome in ("ok", "cached"):
        status = OK
    elif call.outcome == "reserved":
        status = UNSET  # in flight
    else:
        status = ERROR
    end = None
    if call.latency_ms is not None:
        end = call.created + call.latency_ms / 1000
    elif call.outcome != "reserved":
        end = call.created
    attrs: dict[str, Any] = {
        "provider": call.provider,
        "model": call.model,
        "tier": call.tier,
        "purpose": call.purpose,
        "seq": call.seq,
        "input_tokens": call.input_tokens,
        "output_tokens": call.output_tokens,
        "cached_tokens": call.cached_tokens,
        "cost_usd": call.cost_usd,
        "cost_nanos": call.cost_nanos,
        "priced": call.priced,
        "cache_hit": call.cache_hit,
        "latency_ms": call.latency_ms,
    }
    if call.step_key:
        attrs["step"] = call.step_key
        attrs["attempt"] = call.attempt
    if call.error_class:
        attrs["error_class"] = call.error_class
    if call.error:
        attrs["error"] = call.error
    return TraceNode(f"chat {call.model}", LLM, call.created, end, status, call.outcome, attrs)


def _sort(node: TraceNode) -> None:
    node.children.sort(key=lambda c: c.start)  # stable: same-time siblings keep their order
    for child in node.children:
        _sort(child)


# -- reading the tree ------------------------------------------------------------------------------


def trace_totals(root: TraceNode) -> dict[str, Any]:
    """Figures of the whole trace: steps that ran, their attempts, plans, approvals, model
    calls, tokens and cost (the ledger's sums), and the job's duration (None while open)."""
    nodes = list(root.walk())
    attempts = [n for n in nodes if n.kind == STEP]
    chats = [n for n in nodes if n.kind == LLM]
    return {
        "steps": len({n.attributes["step_id"] for n in attempts}),
        "attempts": len(attempts),
        "failed_attempts": sum(1 for n in attempts if n.status == ERROR),
        "plans": sum(1 for n in nodes if n.kind == PLAN),
        "approvals": sum(1 for n in nodes if n.kind == APPROVAL),
        "model_calls": len(chats),
        "cache_hits": sum(1 for n in chats if n.attributes.get("cache_hit")),
        "input_tokens": sum(int(n.attributes["input_tokens"]) for n in chats),
        "output_tokens": sum(int(n.attributes["output_tokens"]) for n in chats),
        "cached_tokens": sum(int(n.attributes["cached_tokens"]) for n in chats),
        "cost_usd": usd(sum(int(n.attributes["cost_nanos"]) for n in chats)),
        "duration_s": root.duration,
    }


def flatten(root: TraceNode) -> list[tuple[int, TraceNode]]:
    """(depth, node) for every node, depth first, in order: a tree as rows."""
    rows: list[tuple[int, TraceNode]] = []

    def visit(node: TraceNode, depth: int) -> None:
        rows.append((depth, node))
        for child in node.children:
            visit(child, depth + 1)

    visit(root, 0)
    return rows


def format_duration(seconds: float | None, *, decimals: int = 2, missing: str = "-") -> str:
    """`412 ms`, `1.20 s` (`decimals` below a minute), `2 min 5 s`, `1 h 3 min`; `missing` for
    None."""
    if seconds is None:
        return missing
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.{decimals}f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min {int(seconds % 60)} s"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60)} min"
