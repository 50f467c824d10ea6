"""Jobs in the SQL store: submitting one (idempotent, within the queue cap), reading and listing
them, cancelling and redriving one, quarantining one whose stored state is corrupt, and
expiring those past their deadline."""

from __future__ import annotations

from collections.abc import Sequence

from stalwart.domain.plans import Plan
from stalwart.domain.records import JobRecord, StepError
from stalwart.domain.states import JOB_PARKED, JOB_QUEUED, JobStatus, StepStatus
from stalwart.errors import CorruptStateError, NotFoundError, NotRedrivableError, QueueFull
from stalwart.store.base import NewJob
from stalwart.store.sql.base import SqlBase, scope_filter
from stalwart.store.sql.due import JOB_EXPIRED
from stalwart.store.sql.rows import JOB_COLUMNS, job_from_row, listed_job_from_row
from stalwart.store.sql.tx import (
    STEP_HEAD_COLUMNS,
    JobHead,
    Tx,
    advance_job,
    close_open_steps,
    fail_job,
    insert_plan,
    move_job,
    move_step,
    note_job_move,
    quarantine_job,
    resolve_dead_letters,
    step_head,
)
from stalwart.types import dumps

J = JobStatus
S = StepStatus
ACTIVE_JOB_STATUSES = tuple(sorted(s.value for s in JOB_QUEUED))


class JobStore(SqlBase):
    """The jobs part of `SqlStore`."""

    async def job_create(
        self, job: NewJob, plan: Plan | None, *, actor: str
    ) -> tuple[JobRecord, bool]:
        """Insert a job and its first plan, or return the duplicate's existing job. Without a
        plan the job waits in `planning` for a worker to plan it (a workflow planned by a
        model)."""

        def run(tx: Tx) -> tuple[str, bool]:
            if job.idempotency_key is not None:
                # Claim the key first: a live key answers the duplicate with its job (before any
                # queue-full check); a concurrent submitter of the same key waits on this row.
                took = tx.con.execute(
                    "INSERT INTO idempotency_keys (tenant_id, key, job_id, expires) "
                    "VALUES (?,?,?,?) ON CONFLICT (tenant_id, key) DO UPDATE SET "
                    "job_id = excluded.job_id, expires = excluded.expires "
                    "WHERE idempotency_keys.expires <= ? RETURNING job_id",
                    (
                        job.tenant_id,
                        job.idempotency_key,
                        job.id,
                        tx.now + job.dedup_window_seconds,
                        tx.now,
                    ),
                ).fetchone()
                if took is None:
                    row = tx.con.execute(
                        "SELECT job_id FROM idempotency_keys WHERE tenant_id = ? AND key = ?",
                        (job.tenant_id, job.idempotency_key),
                    ).fetchone()
                    return str(row[0]), False
            marks = ",".join("?" * len(ACTIVE_JOB_STATUSES))
            depth = tx.con.execute(
                f"SELECT count(*) FROM jobs WHERE tenant_id = ? AND status IN ({marks})",
                (job.tenant_id, *ACTIVE_JOB_STATUSES),
            ).fetchone()[0]
            if depth >= job.max_queue_depth:
                raise QueueFull(
                    f"tenant {job.tenant_id!r} has {depth} unfinished jobs, the cap is "
                    f"{job.max_queue_depth}; retry after {job.queue_full_retry_after:g}s",
                    retry_after=job.queue_full_retry_after,
                    tenant_id=job.tenant_id,
                    depth=depth,
                )
            deadline = tx.now + job.max_wall_seconds if job.max_wall_seconds else None
            tx.con.execute(
                "INSERT INTO jobs (id, tenant_id, workflow, status, priority, idempotency_key, "
                "input, plan_version, template_name, template_hash, tool_schema_hashes, "
                "max_replans, on_reject, review_sla_seconds, max_steps, created, updated, "
                "deadline, trace_context) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    job.id,
                    job.tenant_id,
                    job.workflow,
                    # its path there is recorded below, in order
                    (J.EXECUTING if plan else J.PLANNING).value,
                    job.priority,
                    job.idempotency_key,
                    dumps(job.input),
                    plan.version if plan else 0,
                    plan.template_name if plan else None,
                    plan.template_hash if plan else None,
                    dumps(job.tool_schema_hashes),
                    job.max_replans,
                    job.on_reject,
                    job.review_sla_seconds,
                    job.max_steps,
                    tx.now,
                    tx.now,
                    deadline,
                    job.trace_context,
                ),
            )
            head = JobHead(
                job.id,
                job.tenant_id,
                job.workflow,
                J.INTAKE.value,
                plan.version if plan else 0,
                0,
                job.max_replans,
                job.on_reject,
                job.review_sla_seconds,
                job.priority,
            )
            tx.note(
                "job_submitted", head, priority=job.priority, idempotency_key=job.idempotency_key
            )
            note_job_move(tx, head, J.VALIDATING, "input accepted")
            note_job_move(tx, head, J.PLANNING, "input valid")
            if plan is not None:
                insert_plan(tx, head, plan)
                note_job_move(tx, head, J.EXECUTING, "plan validated")
            return job.id, True

        job_id, created = await self._write(actor, run)
        return await self.job_get(job_id), created

    async def job_get(self, job_id: str, *, tenant_id: str | None = None) -> JobRecord:
        """One job; `NotFoundError` if it does not exist for this tenant."""
        rows = await self._read(f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,))
        if not rows or (tenant_id is not None and rows[0][1] != tenant_id):
            raise NotFoundError(f"no job {job_id!r}", entity="job", id=job_id)
        return job_from_row(rows[0])

    async def job_list(
        self,
        *,
        tenant_id: str | None = None,
        statuses: Sequence[str] = (),
        workflow: str | None = None,
        limit: int = 50,
        before: str | None = None,
    ) -> list[JobRecord]:
        """Jobs, newest first; `before` is a job id cursor."""
        where, params = scope_filter(tenant_id, statuses)
        if workflow:
            where.append("workflow = ?")
            params.append(workflow)
        if before:
            # The cursor is found within the tenant too: another tenant's job id pages like an
            # unknown one (nothing after it), so the answer cannot tell that it exists.
            cursor_scope = " AND tenant_id = ?" if tenant_id is not None else ""
            where.append(
                f"(created, id) < (SELECT created, id FROM jobs WHERE id = ?{cursor_scope})"
            )
            params.append(before)
            if tenant_id is not None:
                params.append(tenant_id)
        rows = await self._read(
            f"SELECT {JOB_COLUMNS} FROM jobs WHERE {' AND '.join(where)} "
            "ORDER BY created DESC, id DESC LIMIT ?",
            (*params, limit),
        )
        # Row by row: a job whose state fails to decode is listed marked, never fails the page.
        return [listed_job_from_row(r) for r in rows]

    def _job_for(self, tx: Tx, job_id: str, tenant_id: str | None) -> JobHead:
        job = tx.job(job_id)
        if job is None or (tenant_id is not None and job.tenant_id != tenant_id):
            raise NotFoundError(f"no job {job_id!r}", entity="job", id=job_id)
        return job

    async def job_cancel(
        self, job_id: str, *, tenant_id: str | None = None, actor: str, reason: str = ""
    ) -> JobRecord:
        """Cancel a job: open steps stop; running tools see the flag at their next heartbeat."""

        def run(tx: Tx) -> None:
            job = self._job_for(tx, job_id, tenant_id)
            move_job(tx, job, J.CANCELLED, reason or "cancelled", sets=", cancel_requested = 1")
            close_open_steps(tx, job, S.CANCELLED, "job cancelled")
            resolve_dead_letters(tx, job, "cancelled", actor)

        await self._write(actor, run)
        return await self.job_get(job_id)

    async def job_redrive(
        self, job_id: str, *, tenant_id: str | None = None, actor: str, reason: str = ""
    ) -> JobRecord:
        """Resume a dead-lettered or escalated job from its failed steps."""

        def run(tx: Tx) -> None:
            job = self._job_for(tx, job_id, tenant_id)
            if job.status not in JOB_PARKED:
                raise NotRedrivableError(
                    f"job {job_id} is {job.status}; only dead_lettered or escalated jobs can be "
                    "redriven",
                    id=job_id,
                    status=job.status,
                )
            rows = tx.con.execute(
                f"SELECT {STEP_HEAD_COLUMNS} FROM steps WHERE job_id = ? AND plan_version = ? "
                f"AND status IN ('failed', 'dead_lettered', 'interrupted') ORDER BY id{tx.lock}",
                (job.id, job.plan_version),
            ).fetchall()
            move_job(tx, job, J.EXECUTING, reason or "redriven", sets=", error = NULL")
            for row in rows:
                step = step_head(row)
                move_step(
                    tx,
                    step,
                    S.READY,
                    "redriven",
                    sets=", attempt = 0, due = ?, lease_owner = NULL, lease_expires = NULL, "
                    "reconcile_pending = ?",
                    params=(
                        tx.now,
                        int(
                            bool(step.spec.get("has_reconcile"))
                            and step.status == S.INTERRUPTED.value
                        ),
                    ),
                )
            tx.con.execute(
                "UPDATE reviews SET status = 'cancelled', decided = ? WHERE job_id = ? "
                "AND kind = 'interrupted' AND status IN ('pending', 'escalated')",
                (tx.now, job.id),
            )
            resolve_dead_letters(tx, job, "redriven", actor)
            tx.note("job_redriven", job, reason, steps=[step_head(r).key for r in rows])
            advance_job(tx, job)

        await self._write(actor, run)
        return await self.job_get(job_id)

    async def job_quarantine(self, job_id: str, error: CorruptStateError, *, actor: str) -> None:
        """Quarantine a job whose stored state failed to decode (`error` says what): escalated
        with a dead letter when its status allows, else only noted (`job_quarantined`); either
        way readers of many jobs pass over it until it changes again. A job that is gone is
        left alone."""

        def run(tx: Tx) -> None:
            job = tx.job(job_id)
            if job is not None:
                quarantine_job(tx, job, error)

        await self._write(actor, run)

    async def jobs_expire(self, *, actor: str) -> list[str]:
        """Fail live jobs past their wall-time deadline."""

        def run(tx: Tx) -> list[str]:
            marks = ",".join("?" * len(ACTIVE_JOB_STATUSES))
            ids = [
                r[0]
                for r in tx.con.execute(
                    f"SELECT id {JOB_EXPIRED.format(now='?')} AND status IN ({marks}) "
                    f"ORDER BY id{tx.skip_locked}",
                    (tx.now, *ACTIVE_JOB_STATUSES),
                ).fetchall()
            ]
            for job_id in ids:
                job = tx.job(job_id)
                assert job is not None
                fail_job(
                    tx,
                    job,
                    "max_wall_seconds exceeded",
                    StepError(
                        "budget", "the job ran past its wall time", code="budget_exceeded"
                    ).to_dict(),
                )
            return ids

        if not await self._any(JOB_EXPIRED):
            return []
        return await self._write(actor, run)


__all__ = ["JobStore"]
