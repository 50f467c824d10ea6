"""Inside one write transaction, on either backend: moving jobs and steps (through the state
machine), making dependents ready, parking jobs, and appending the events of it all in one insert.

These helpers apply rules decided in `stalwart.domain`; they never commit. SQL is written with
`?` placeholders in the dialect both SQLite and PostgreSQL accept; the PostgreSQL connection
translates the placeholders. Rows a transaction reads and then changes are selected with
`tx.lock` appended (`FOR UPDATE` on PostgreSQL, nothing on SQLite, whose BEGIN IMMEDIATE already
serialises writers).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from pydantic import ValidationError

from stalwart.domain.arguments import reference_context, step_arguments
from stalwart.domain.conditions import evaluate
from stalwart.domain.events import Event, note
from stalwart.domain.plans import Plan, PlanStep
from stalwart.domain.progress import job_target
from stalwart.domain.records import Claim, StepError
from stalwart.domain.refs import UnresolvedReferenceError, find_refs, ref_step
from stalwart.domain.states import (
    JOB_PARKED,
    JOB_TERMINAL,
    JOB_TRANSITIONS,
    STEP_TRANSITIONS,
    JobStatus,
    StepStatus,
    job_transition,
    step_transition,
)
from stalwart.errors import CorruptStateError
from stalwart.store.sql.rows import corrupt, corrupt_text, loads
from stalwart.types import dumps, new_id

J = JobStatus
S = StepStatus
LIVE_JOB = (J.EXECUTING.value, J.WAITING_APPROVAL.value)
OPEN_STEP = (
    S.PENDING.value,
    S.READY.value,
    S.RETRY_WAIT.value,
    S.AWAITING_APPROVAL.value,
    S.INTERRUPTED.value,
    S.FAILED.value,
    S.DEAD_LETTERED.value,
)

JOB_HEAD_SQL = (
    "SELECT id, tenant_id, workflow, status, plan_version, replans, max_replans, on_reject, "
    "review_sla_seconds, priority FROM jobs WHERE id = ?"
)


@dataclass(slots=True)
class JobHead:
    """The columns of a job that transitions need."""

    id: str
    tenant_id: str
    workflow: str
    status: str
    plan_version: int
    replans: int
    max_replans: int
    on_reject: str
    review_sla_seconds: float
    priority: int


@dataclass(slots=True)
class StepHead:
    """The columns of a step that transitions need."""

    id: int
    job_id: str
    tenant_id: str
    plan_version: int
    key: str
    status: str
    kind: str
    tool: str | None
    attempt: int
    max_attempts: int
    critical: bool
    idempotent: bool
    dependents: list[str]
    spec: dict[str, Any]


STEP_HEAD_COLUMNS = (
    "id, job_id, tenant_id, plan_version, key, status, kind, tool, attempt, max_attempts, "
    "critical, idempotent, dependents, spec"
)


def step_head(row: tuple[Any, ...], *, bare: bool = False) -> StepHead:
    """A `StepHead` from a row selected with `STEP_HEAD_COLUMNS`. `bare` leaves its JSON
    (dependents, spec) undecoded and empty: enough to move a step whose stored state is corrupt
    to a status that never runs it (cancelled, interrupted)."""
    where = f"step {row[4]!r} of job {row[1]}"
    return StepHead(
        id=row[0],
        job_id=row[1],
        tenant_id=row[2],
        plan_version=row[3],
        key=row[4],
        status=row[5],
        kind=row[6],
        tool=row[7],
        attempt=row[8],
        max_attempts=row[9],
        critical=bool(row[10]),
        idempotent=bool(row[11]),
        dependents=[] if bare else loads(row[12], f"dependents of {where}", list) or [],
        spec={} if bare else loads(row[13], f"spec of {where}", dict) or {},
    )


class Cursor(Protocol):
    """What a statement gives back (sqlite3 and psycopg cursors both fit)."""

    @property
    def rowcount(self) -> int:
        """Rows changed by the statement."""
        ...

    def fetchone(self) -> Any:
        """The next row, or None."""
        ...

    def fetchall(self) -> list[Any]:
        """Every remaining row."""
        ...


class Connection(Protocol):
    """The part of a DB-API connection the transaction helpers use, with `?` placeholders."""

    def execute(self, sql: str, params: Sequence[Any] = ..., /) -> Cursor:
        """Run one statement."""
        ...

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]], /) -> Any:
        """Run one statement for many parameter rows."""
        ...


@dataclass(slots=True)
class Tx:
    """One open write transaction: the connection, its clock (the database's on PostgreSQL), its
    actor, its pending events, and whether its backend locks rows (PostgreSQL does; SQLite's
    write lock already serialises writers)."""

    con: Connection
    now: float
    actor: str
    row_locks: bool = False
    events: list[Event] = field(default_factory=list)
    # Errors that mean "run the transaction again" or "the database went away", not bad SQL.
    retryable: tuple[type[BaseException], ...] = ()

    @property
    def lock(self) -> str:
        """The clause that locks the rows a select reads (to change them next)."""
        return " FOR UPDATE" if self.row_locks else ""

    @property
    def skip_locked(self) -> str:
        """The clause that locks the rows a select reads, skipping rows others hold."""
        return " FOR UPDATE SKIP LOCKED" if self.row_locks else ""

    def skip_locked_of(self, tables: str) -> str:
        """The skip-locked clause limited to `tables` (a join locks only the rows it names)."""
        return f" FOR UPDATE OF {tables} SKIP LOCKED" if self.row_locks else ""

    def flush(self) -> None:
        """Append every pending event in one multi-row insert."""
        if not self.events:
            return
        self.con.executemany(
            "INSERT INTO events (tenant_id, job_id, step_id, step_key, kind, from_status, "
            "to_status, actor, reason, data, at) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            [
                (
                    e.tenant_id,
                    e.job_id,
                    e.step_id,
                    e.step_key,
                    e.kind,
                    e.from_status,
                    e.to_status,
                    e.actor,
                    e.reason,
                    None if e.data is None else dumps(e.data),
                    e.at,
                )
                for e in self.events
            ],
        )
        self.events.clear()

    def job(self, job_id: str) -> JobHead | None:
        """The job's head, or None."""
        row = self.con.execute(JOB_HEAD_SQL + self.lock, (job_id,)).fetchone()
        return JobHead(*row) if row else None

    def step(self, step_id: int) -> StepHead | None:
        """The step's head, or None."""
        row = self.con.execute(
            f"SELECT {STEP_HEAD_COLUMNS} FROM steps WHERE id = ?{self.lock}", (step_id,)
        ).fetchone()
        return step_head(row) if row else None

    def note(self, kind: str, job: JobHead, reason: str = "", **extra: Any) -> None:
        """Record an event that is not a status change."""
        step: StepHead | None = extra.pop("step", None)
        self.events.append(
            note(
                kind,
                job.tenant_id,
                job.id,
                actor=self.actor,
                at=self.now,
                reason=reason,
                step_id=step.id if step else None,
                step_key=step.key if step else None,
                data=extra or None,
            )
        )


# -- moving things through the state machines -----------------------------------------------------


def move_job(
    tx: Tx,
    job: JobHead,
    target: JobStatus,
    reason: str = "",
    *,
    data: dict[str, Any] | None = None,
    sets: str = "",
    params: tuple[Any, ...] = (),
) -> None:
    """Change a job's status via the state machine; `sets` adds fixed column assignments."""
    tx.events.append(
        job_transition(
            job.id,
            job.tenant_id,
            job.status,
            target,
            actor=tx.actor,
            reason=reason,
            data=data,
            at=tx.now,
        )
    )
    finished = ", finished = ?" if target in JOB_TERMINAL else ""
    extra: tuple[Any, ...] = (tx.now,) if finished else ()
    tx.con.execute(
        f"UPDATE jobs SET status = ?, updated = ?{finished}{sets} WHERE id = ?",
        (target.value, tx.now, *extra, *params, job.id),
    )
    job.status = target.value


# Gives back the attempt a claim counted (a drained worker, a 429 that asked us to wait).
REFUND_ATTEMPT = ", attempt = CASE WHEN attempt > 0 THEN attempt - 1 ELSE 0 END"


def note_job_move(tx: Tx, job: JobHead, target: JobStatus, reason: str = "") -> None:
    """A job's status change (checked, with its event) for a row this same transaction inserted
    already holding its final status: the event history is complete, the row written once."""
    tx.events.append(
        job_transition(
            job.id, job.tenant_id, job.status, target, actor=tx.actor, reason=reason, at=tx.now
        )
    )
    job.status = target.value


def move_step(
    tx: Tx,
    step: StepHead,
    target: StepStatus,
    reason: str = "",
    *,
    data: dict[str, Any] | None = None,
    sets: str = "",
    params: tuple[Any, ...] = (),
) -> None:
    """Change a step's status via the state machine; `sets` adds fixed column assignments."""
    tx.events.append(
        step_transition(
            step.job_id,
            step.tenant_id,
            step.id,
            step.key,
            step.status,
            target,
            actor=tx.actor,
            reason=reason,
            data=data,
            at=tx.now,
        )
    )
    tx.con.execute(
        f"UPDATE steps SET status = ?{sets} WHERE id = ?", (target.value, *params, step.id)
    )
    step.status = target.value


def release_dependents(
    tx: Tx, job: JobHead | str, tenant_id: str, plan_version: int, keys: list[str]
) -> list[int]:
    """One dependency of each step in `keys` is done; those with none left become ready.
    Returns the ids of the steps made ready."""
    if not keys:
        return []
    job_id = job if isinstance(job, str) else job.id
    marks = ",".join("?" * len(keys))
    # One statement: the right-hand side sees the old row, so `deps_remaining <= 1` means
    # "this was the last dependency"; only those rows come back.
    rows = [
        (step_id, key)
        for step_id, key, status in tx.con.execute(
            "UPDATE steps SET deps_remaining = deps_remaining - 1, "
            "status = CASE WHEN deps_remaining <= 1 THEN 'ready' ELSE status END, "
            "due = CASE WHEN deps_remaining <= 1 THEN ? ELSE due END "
            f"WHERE job_id = ? AND plan_version = ? AND status = 'pending' AND key IN ({marks}) "
            "RETURNING id, key, status",
            (tx.now, job_id, plan_version, *keys),
        ).fetchall()
        if status == S.READY.value
    ]
    ready = []
    for step_id, key in rows:
        tx.events.append(
            step_transition(
                job_id,
                tenant_id,
                step_id,
                key,
                S.PENDING,
                S.READY,
                actor=tx.actor,
                reason="dependencies done",
                at=tx.now,
            )
        )
        ready.append(step_id)
    return ready


def advance_job(tx: Tx, job: JobHead) -> None:
    """Move a live job to where its steps' statuses say it should be (domain.progress)."""
    if job.status not in LIVE_JOB:
        return
    counts = dict(
        tx.con.execute(
            "SELECT status, count(*) FROM steps WHERE job_id = ? AND plan_version = ? "
            "GROUP BY status",
            (job.id, job.plan_version),
        ).fetchall()
    )
    target = job_target(job.status, counts)
    if target is None:
        return
    if target is not J.EVALUATING:
        move_job(tx, job, target, "steps changed")
        return
    move_job(tx, job, J.EVALUATING, "every step is done")
    rows = tx.con.execute(
        "SELECT key, output FROM steps WHERE job_id = ? AND plan_version = ? "
        "AND status = 'succeeded' AND dependents = '[]'",
        (job.id, job.plan_version),
    ).fetchall()
    result = {key: loads(output, f"output of step {key!r} of job {job.id}") for key, output in rows}
    degraded = counts.get(S.SKIPPED.value, 0) > 0
    move_job(
        tx,
        job,
        J.COMPLETED,
        "completed degraded: some non-critical steps were skipped" if degraded else "",
        sets=", result = ?, degraded = ?",
        params=(dumps(result), int(degraded)),
    )


def close_open_steps(tx: Tx, job: JobHead, target: StepStatus, reason: str) -> None:
    """Move every step of the job that is not running or final to `target`; cancel its
    open reviews."""
    marks = ",".join("?" * len(OPEN_STEP))
    rows = tx.con.execute(
        f"SELECT {STEP_HEAD_COLUMNS} FROM steps WHERE job_id = ? AND status IN ({marks}) "
        f"ORDER BY id{tx.lock}",
        (job.id, *OPEN_STEP),
    ).fetchall()
    for row in rows:
        step = step_head(row, bare=True)  # only its status moves: a corrupt spec cannot block it
        if target in _allowed(step.status):
            move_step(tx, step, target, reason)
    tx.con.execute(
        "UPDATE reviews SET status = 'cancelled', decided = ? "
        "WHERE job_id = ? AND status IN ('pending', 'escalated')",
        (tx.now, job.id),
    )


def _allowed(status: str) -> frozenset[StepStatus]:
    return STEP_TRANSITIONS[StepStatus(status)]


def park_job(
    tx: Tx,
    job: JobHead,
    target: JobStatus,
    reason: str,
    *,
    step: StepHead | None = None,
    error: StepError | dict[str, Any] | None = None,
    escalation: dict[str, Any] | None = None,
) -> None:
    """Dead-letter or escalate a job and open a dead-letter record for operators. `error` is
    the cause (the job's error); `escalation`, when given, is the later failure that parked the
    job instead of letting it recover (a replan that could not happen), kept in the context."""
    if job.status not in JOB_TERMINAL and job.status not in JOB_PARKED:
        err = error.to_dict() if isinstance(error, StepError) else error
        move_job(tx, job, target, reason, sets=", error = ?", params=(dumps(err),))
    context: dict[str, Any] = {
        "step": step.spec if step else None,
        "attempt": step.attempt if step else None,
        "plan_version": job.plan_version,
    }
    if escalation is not None:
        context["escalation"] = escalation
    tx.con.execute(
        "INSERT INTO dead_letters (id, tenant_id, job_id, workflow, step_id, step_key, reason, "
        "error, context, status, created) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
        (
            new_id("dlq"),
            job.tenant_id,
            job.id,
            job.workflow,
            step.id if step else None,
            step.key if step else None,
            f"{target.value}: {reason}",
            dumps(error.to_dict() if isinstance(error, StepError) else error),
            dumps(context),
            "open",
            tx.now,
        ),
    )


def escalate_replanning(
    tx: Tx, job: JobHead, reason: str, feedback: dict[str, Any] | None, symptom: StepError
) -> None:
    """Escalate a job whose (re)planning could not go on. When a failed or rejected step sent
    it to replanning (its replan `feedback`), that step and its error stay the job's cause, with
    `symptom` (why the replan could not happen) beside them; else `symptom` is the cause."""
    step, cause = replan_cause(tx, job, feedback)
    if cause is None:
        park_job(tx, job, J.ESCALATED, reason, step=step, error=symptom)
        return
    why = f"{reason}; cause: {cause.get('message')}"
    park_job(tx, job, J.ESCALATED, why, step=step, error=cause, escalation=symptom.to_dict())


def replan_cause(
    tx: Tx, job: JobHead, feedback: dict[str, Any] | None
) -> tuple[StepHead | None, dict[str, Any] | None]:
    """The step of the current plan that sent the job to replanning, and its error (a
    reviewer's rejection reads as one), from the job's replan feedback."""
    if not feedback or not feedback.get("step"):
        return None, None
    key = str(feedback["step"])
    row = tx.con.execute(
        f"SELECT {STEP_HEAD_COLUMNS} FROM steps WHERE job_id = ? AND plan_version = ? AND key = ?",
        (job.id, job.plan_version, key),
    ).fetchone()
    step = step_head(row) if row else None
    error = feedback.get("error")
    if isinstance(error, dict):
        return step, error
    if feedback.get("rejected_by"):
        comment = feedback.get("comment")
        message = f"step {key} rejected by {feedback['rejected_by']}" + (
            f": {comment}" if comment else ""
        )
        return step, StepError("rejected", message, "rejected").to_dict()
    return step, None


def resolve_dead_letters(tx: Tx, job: JobHead, status: str, by: str) -> None:
    """Close a job's open dead letters (redriven, resolved by an approval, cancelled)."""
    tx.con.execute(
        "UPDATE dead_letters SET status = ?, redriven = ?, redriven_by = ? "
        "WHERE job_id = ? AND status = 'open'",
        (status, tx.now, by, job.id),
    )


def fail_job(tx: Tx, job: JobHead, reason: str, error: dict[str, Any]) -> None:
    """Fail a job for good: running tools are told to stop, open steps are cancelled."""
    if job.status in JOB_TERMINAL:
        return
    move_job(
        tx, job, J.FAILED, reason, sets=", error = ?, cancel_requested = 1", params=(dumps(error),)
    )
    close_open_steps(tx, job, S.CANCELLED, f"job failed: {reason}")


def quarantine_job(
    tx: Tx, job: JobHead, exc: CorruptStateError, *, step: StepHead | None = None
) -> None:
    """A job whose stored state failed to decode: escalate it (through the state machine, with
    a dead letter and the error `CorruptStateError`) when its status allows, and note
    `job_quarantined` naming what failed. Readers that go over many jobs (the episode recorder)
    pass over a job quarantined since its last change. The corrupt rows are left as they are:
    they are the evidence, and a fixed row plus a redrive resumes the job."""
    what = corrupt_text(exc)
    try:
        can_escalate = J.ESCALATED in JOB_TRANSITIONS[JobStatus(job.status)]
    except ValueError:  # the status itself is not one we know
        can_escalate = False
    if can_escalate:
        error = StepError(
            "critical",
            exc.message,
            code="corrupt_state",
            exception_type=type(exc).__name__,
            details={"corrupt": what},
        )
        tx.con.execute(
            "UPDATE jobs SET lease_owner = NULL, lease_expires = NULL WHERE id = ?", (job.id,)
        )
        park_job(tx, job, J.ESCALATED, f"corrupt stored state: {what}", step=step, error=error)
    tx.note("job_quarantined", job, what, step=step, corrupt=what, error=type(exc).__name__)


def exhaust_step(
    tx: Tx, job: JobHead, step: StepHead, reason: str, error: StepError | None
) -> None:
    """A step in `failed` ran out of recovery: dead-letter the job if the step is critical,
    else skip it and let the job go on degraded."""
    if step.critical:
        move_step(tx, step, S.DEAD_LETTERED, reason)
        park_job(tx, job, J.DEAD_LETTERED, f"step {step.key}: {reason}", step=step, error=error)
        return
    move_step(tx, step, S.SKIPPED, f"{reason}; not critical, job continues degraded")
    tx.con.execute("UPDATE jobs SET degraded = 1 WHERE id = ?", (job.id,))
    if job.plan_version == step.plan_version:
        release_dependents(tx, job, job.tenant_id, step.plan_version, step.dependents)
        advance_job(tx, job)


def open_review(
    tx: Tx,
    job: JobHead,
    step: StepHead,
    *,
    kind: str,
    reason: str,
    asked: str,
    options: list[dict[str, Any]],
    context: dict[str, Any],
) -> str:
    """Put an item in the human approval queue with its SLA deadline."""
    review = step.spec.get("review") or {}
    sla = review.get("sla_seconds") or job.review_sla_seconds
    review_id = new_id("rev")
    tx.con.execute(
        "INSERT INTO reviews (id, tenant_id, job_id, step_id, step_key, kind, status, reason, "
        "asked, options, context, sla_deadline, created) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
        (
            review_id,
            job.tenant_id,
            job.id,
            step.id,
            step.key,
            kind,
            "pending",
            reason,
            asked,
            dumps(options),
            dumps(context),
            tx.now + float(sla),
            tx.now,
        ),
    )
    tx.note("review_requested", job, reason, step=step, review_id=review_id, review_kind=kind)
    return review_id


# -- claiming --------------------------------------------------------------------------------------

CANDIDATE_COLUMNS = (
    "s.id, s.job_id, s.tenant_id, s.plan_version, s.key, s.status, s.kind, s.tool, s.attempt, "
    "s.max_attempts, s.critical, s.idempotent, s.dependents, s.spec, s.approved, "
    "s.reconcile_pending, s.needs, s.lease_token, j.status, j.workflow, j.input, "
    "j.tool_schema_hashes, j.deadline, j.max_steps, j.steps_executed, j.cancel_requested, "
    "j.plan_version, j.replans, j.max_replans, j.on_reject, j.review_sla_seconds, j.priority, "
    "j.trace_context, j.created"
)


Admit = Callable[[JobHead, StepHead], tuple[str, ...]]


def claim_candidate(
    tx: Tx,
    row: tuple[Any, ...],
    worker_id: str,
    lease_seconds: float,
    admit: Admit | None = None,
) -> Claim | None:
    """Take one ready (or due retry_wait) step: enforce the job's budget, park it for approval
    if it needs one, pass its limits (`admit`, which may raise to hold it back), else mark it
    running under a new fencing token and return the claim.

    Every stored JSON is decoded before the first write, so corrupt state raises
    `CorruptStateError` with nothing of this claim written."""
    step = step_head(row[:14])
    approved, reconcile_pending, needs_json, token = row[14], row[15], row[16], row[17]
    job = JobHead(
        row[1], row[2], row[19], row[18], row[26], row[27], row[28], row[29], row[30], row[31]
    )
    job_input, hashes_json, deadline, max_steps, executed, cancel = row[20:26]
    inputs = loads(job_input, f"input of job {job.id}", dict) or {}
    needs = loads(needs_json, f"needs of step {step.key!r} of job {job.id}", list) or []
    outputs = _outputs(tx, step, needs)
    hashes = loads(hashes_json, f"tool schema hashes of job {job.id}", dict) or {}
    plan_step(step.spec, step.key, job.id)
    if deadline is not None and tx.now > deadline:
        fail_job(tx, job, "max_wall_seconds exceeded", _budget("the job ran past its wall time"))
        return None
    if max_steps is not None and executed >= max_steps:
        fail_job(tx, job, "max_steps exceeded", _budget(f"the job used its {max_steps} steps"))
        return None
    if step.status == S.RETRY_WAIT.value:
        move_step(tx, step, S.READY, "retry is due")
    why = None if approved else _approval_reason(step, inputs, outputs)
    if why is not None:
        _park_for_approval(tx, job, step, inputs, outputs, why)
        return None
    limit_keys = admit(job, step) if admit is not None else ()
    args = _arguments(step, inputs, outputs)
    lease_expires = tx.now + lease_seconds
    move_step(
        tx,
        step,
        S.RUNNING,
        f"attempt {step.attempt + 1}",
        data={"worker": worker_id, "attempt": step.attempt + 1},
        sets=", attempt = attempt + 1, lease_token = lease_token + 1, lease_owner = ?, "
        "lease_expires = ?, started = ?, args = ?",
        params=(worker_id, lease_expires, tx.now, None if args is None else dumps(args)),
    )
    tx.con.execute("UPDATE jobs SET steps_executed = steps_executed + 1 WHERE id = ?", (job.id,))
    if job.status == J.WAITING_APPROVAL.value:
        move_job(tx, job, J.EXECUTING, "a step is running again")
    review = None
    if step.kind == "human":
        got = tx.con.execute(
            "SELECT id, decision, decided_by, comment FROM reviews WHERE step_id = ? "
            "AND status = 'approved' ORDER BY decided DESC LIMIT 1",
            (step.id,),
        ).fetchone()
        if got:
            review = {
                "review_id": got[0],
                "decision": got[1],
                "reviewer": got[2],
                "comment": got[3],
            }
    return Claim(
        step_id=step.id,
        job_id=job.id,
        tenant_id=job.tenant_id,
        workflow=job.workflow,
        plan_version=step.plan_version,
        key=step.key,
        kind=step.kind,
        tool=step.tool,
        attempt=step.attempt + 1,
        lease_token=token + 1,
        lease_expires=lease_expires,
        spec=step.spec,
        job_input=inputs,
        outputs=outputs,
        tool_schema_hash=hashes.get(step.tool) if step.tool else None,
        tool_schema_hashes=_agent_hashes(step, hashes),
        reconcile_pending=bool(reconcile_pending),
        deadline=deadline,
        cancel_requested=bool(cancel),
        review=review,
        max_replans=job.max_replans,
        limit_keys=limit_keys,
        trace_context=row[32],
        job_created=row[33],
        args=args,
    )


def _agent_hashes(step: StepHead, hashes: dict[str, Any]) -> dict[str, str]:
    """The recorded schema hashes of the tools an agent step may call."""
    if step.kind != "agent":
        return {}
    names = (step.spec.get("agent") or {}).get("tools") or []
    return {str(n): str(hashes[n]) for n in names if n in hashes}


def plan_step(spec: Any, key: str, job_id: str) -> PlanStep:
    """A stored step spec as a `PlanStep`; `CorruptStateError` when it no longer validates.
    Checked at every claim (a few microseconds): a worker reads the spec's fields (timeout,
    retry, checks) as typed, and one that no longer validates must not crash it."""
    try:
        return PlanStep.model_validate(spec)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "spec"
        raise corrupt(
            f"spec of step {key!r} of job {job_id}",
            f"no longer validates ({where}: {first['msg']})",
        ) from exc


def _arguments(step: StepHead, inputs: Any, outputs: dict[str, Any]) -> Any:
    """The arguments this attempt runs with (decision 0037), or None when a reference points
    at nothing: the executor then fails the attempt as `invalid_arguments`, naming it."""
    try:
        return step_arguments(step.spec, inputs, outputs)
    except UnresolvedReferenceError:
        return None


def ran_with(tx: Tx, step: StepHead) -> Any:
    """The arguments the step's latest attempt ran with; its template when none were stored."""
    row = tx.con.execute("SELECT args FROM steps WHERE id = ?", (step.id,)).fetchone()
    if row is None or row[0] is None:
        return step.spec.get("args")
    return loads(row[0], f"arguments of step {step.key!r} of job {step.job_id}")


def _budget(message: str) -> dict[str, Any]:
    return StepError("budget", message, code="budget_exceeded").to_dict()


def _outputs(tx: Tx, step: StepHead, needs: list[str]) -> dict[str, Any]:
    if not needs:
        return {}
    marks = ",".join("?" * len(needs))
    rows = tx.con.execute(
        f"SELECT key, output FROM steps WHERE job_id = ? AND plan_version = ? AND key IN ({marks})",
        (step.job_id, step.plan_version, *needs),
    ).fetchall()
    return {key: loads(out, f"output of step {key!r} of job {step.job_id}") for key, out in rows}


def _approval_reason(step: StepHead, inputs: Any, outputs: dict[str, Any]) -> str | None:
    """Why the step must wait for a reviewer before it runs, or None."""
    rule = step.spec.get("requires_approval")
    if step.kind == "human" or rule is True:
        return ""
    context = reference_context(inputs, outputs)
    if isinstance(rule, dict) and evaluate(rule, context):
        return ""
    reasons = [
        t["reason"] for t in step.spec.get("review_if") or [] if evaluate(t["when"], context)
    ]
    return "; ".join(reasons) if reasons else None


def _park_for_approval(
    tx: Tx, job: JobHead, step: StepHead, inputs: Any, outputs: dict[str, Any], why: str = ""
) -> None:
    review = step.spec.get("review") or {}
    # The reviewer sees (and the step records) what it will run with, not the template.
    resolved = _arguments(step, inputs, outputs)
    preview = resolved if resolved is not None else step.spec.get("args")
    what = step.spec.get("description") or (f"run tool {step.tool}" if step.tool else step.key)
    move_step(
        tx,
        step,
        S.AWAITING_APPROVAL,
        "requires approval",
        sets=", args = ?",
        params=(None if resolved is None else dumps(resolved),),
    )
    open_review(
        tx,
        job,
        step,
        kind="human" if step.kind == "human" else "approval",
        reason=why or review.get("reason") or f"step {step.key} requires approval before it runs",
        asked=review.get("asked") or f"Approve: {what}?",
        options=review.get("options")
        or [
            {"name": "approve", "impact": f"step {step.key} runs with the arguments shown"},
            {"name": "reject", "impact": f"step {step.key} does not run ({job.on_reject})"},
        ],
        context={
            "tool": step.tool,
            "args": preview,
            "workflow": job.workflow,
            "step": step.key,
            "description": step.spec.get("description", ""),
            # The earlier outputs this step uses: what the agent concluded before this step.
            "upstream": outputs,
        },
    )
    advance_job(tx, job)


# -- plans -----------------------------------------------------------------------------------------


def insert_plan(
    tx: Tx,
    job: JobHead,
    plan: Plan,
    *,
    reuse: dict[str, tuple[str, str]] | None = None,
) -> None:
    """Store a plan version and its steps. Steps whose spec is unchanged from a succeeded step of
    an earlier version keep that output instead of running again (`reuse`: key -> (spec hash,
    output JSON)). Steps with nothing to wait for start ready."""
    reuse = reuse or {}
    tx.con.execute(
        "INSERT INTO plans (job_id, version, template_name, template_hash, plan_hash, plan, "
        "created) VALUES (?,?,?,?,?,?,?)",
        (
            job.id,
            plan.version,
            plan.template_name,
            plan.template_hash,
            plan.plan_hash(),
            dumps(plan.model_dump(mode="json")),
            tx.now,
        ),
    )
    dependents = plan.dependents()
    reused = _reused(plan, reuse)
    rows = []
    for s in plan.steps:
        spec = s.model_dump(mode="json")
        needs = [k for k in (ref_step(p) for p in find_refs(s.args)) if k]
        conditions = list(s.success or {})
        if isinstance(s.requires_approval, dict):
            conditions += list(s.requires_approval)
        for trigger in s.review_if:
            conditions += list(trigger.when)
        for check in s.checks:  # a check written as a condition may read other outputs
            if isinstance(check.expect, dict):
                conditions += list(check.expect)
        if s.llm is not None:  # its prompt, and its context: the outputs it depends on
            needs += [k for k in map(ref_step, find_refs([s.llm.prompt, s.llm.system])) if k]
            needs += s.depends_on
        needs += [p.split(".")[1] for p in conditions if p.startswith("steps.") and "." in p[6:]]
        remaining = sum(1 for d in s.depends_on if d not in reused)
        if s.id in reused:
            status, output = S.SUCCEEDED.value, reused[s.id]
        else:
            status, output = (S.READY.value if remaining == 0 else S.PENDING.value), None
        rows.append(
            (
                job.id,
                job.tenant_id,
                plan.version,
                s.id,
                s.kind,
                s.tool,
                status,
                job.priority,
                tx.now,
                s.retry.max_attempts,
                remaining,
                int(s.critical),
                int(s.idempotent),
                dumps(spec),
                dumps(sorted(set(needs))),
                dumps(dependents.get(s.id, [])),
                output,
                tx.now if s.id in reused else None,
            )
        )
    # One multi-row INSERT that also says which steps start ready (one round trip).
    values = ",".join(["(?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"] * len(rows))
    inserted = tx.con.execute(
        "INSERT INTO steps (job_id, tenant_id, plan_version, key, kind, tool, status, priority, "
        "due, max_attempts, deps_remaining, critical, idempotent, spec, needs, dependents, "
        f"output, finished) VALUES {values} RETURNING id, key, status",
        [v for row in rows for v in row],
    ).fetchall()
    tx.note(
        "plan_created",
        job,
        f"plan v{plan.version} from template {plan.template_name}",
        version=plan.version,
        template=plan.template_name,
        template_hash=plan.template_hash,
        plan_hash=plan.plan_hash(),
        steps=len(plan.steps),
        reused=sorted(reused),
    )
    for step_id, key, status in sorted(inserted):
        if status != S.READY.value:
            continue
        tx.events.append(
            step_transition(
                job.id,
                job.tenant_id,
                step_id,
                key,
                S.PENDING,
                S.READY,
                actor=tx.actor,
                reason="no dependencies",
                at=tx.now,
            )
        )


def _reused(plan: Plan, reuse: dict[str, tuple[str, str]]) -> dict[str, str]:
    """Steps whose output carries over: the spec is unchanged and so is everything upstream (a
    step whose dependency runs again must run again too, since its inputs may change)."""
    keep = {s.id for s in plan.steps if s.id in reuse and reuse[s.id][0] == s.spec_hash()}
    deps = {s.id: s.depends_on for s in plan.steps}
    changed = True
    while changed:
        changed = False
        for step_id in list(keep):
            if any(d not in keep for d in deps[step_id]):
                keep.discard(step_id)
                changed = True
    return {step_id: reuse[step_id][1] for step_id in keep}


def reusable_outputs(tx: Tx, job_id: str) -> dict[str, tuple[str, str]]:
    """Succeeded steps of earlier plan versions: key -> (spec hash, output JSON), newest wins."""
    out: dict[str, tuple[str, str]] = {}
    for key, spec, output in tx.con.execute(
        "SELECT key, spec, output FROM steps WHERE job_id = ? AND status = 'succeeded' "
        "ORDER BY plan_version",
        (job_id,),
    ).fetchall():
        step = plan_step(loads(spec, f"spec of step {key!r} of job {job_id}", dict), key, job_id)
        out[key] = (step.spec_hash(), output)
    return out
