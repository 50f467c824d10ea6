"""Step leases taken back in the SQL store: given back by their worker, expired (the reaper), or
held by a dead worker (a restart under its id). The step's limit slots are released and its
model calls in flight charged; the step runs again, is reconciled, or a human decides."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from stalwart.domain.records import StepError
from stalwart.domain.states import JOB_PARKED, StepStatus
from stalwart.errors import CorruptStateError
from stalwart.store.sql import limits as limits_sql
from stalwart.store.sql.base import SqlBase
from stalwart.store.sql.due import LEASE_EXPIRED
from stalwart.store.sql.llm import charge_reserved
from stalwart.store.sql.tx import (
    LIVE_JOB,
    REFUND_ATTEMPT,
    STEP_HEAD_COLUMNS,
    StepHead,
    Tx,
    advance_job,
    exhaust_step,
    move_step,
    open_review,
    quarantine_job,
    ran_with,
    step_head,
)

S = StepStatus


class LeaseStore(SqlBase):
    """The leases part of `SqlStore`."""

    async def step_release(
        self, leases: Sequence[tuple[int, int]], *, worker_id: str, reason: str
    ) -> None:
        """Give back leases without using up an attempt."""

        def run(tx: Tx) -> None:
            for step_id, token in sorted(leases):
                row = tx.con.execute(
                    f"SELECT {STEP_HEAD_COLUMNS} FROM steps WHERE id = ? AND lease_token = ? "
                    f"AND status = 'running'{tx.lock}",
                    (step_id, token),
                ).fetchone()
                if row is not None:
                    self._recover_row(tx, row, reason, refund=True)

        await self._write(worker_id, run)

    async def leases_reap(self, *, actor: str) -> int:
        """Recover running steps whose lease expired."""

        def run(tx: Tx) -> int:
            rows = tx.con.execute(
                f"SELECT {STEP_HEAD_COLUMNS} {LEASE_EXPIRED.format(now='?')} "
                f"ORDER BY id{tx.skip_locked}",
                (tx.now,),
            ).fetchall()
            for row in rows:
                self._recover_row(tx, row, "lease expired", refund=False)
            limits_sql.release_orphans(tx)
            return len(rows)

        if not await self._any(LEASE_EXPIRED):
            return 0
        return await self._write(actor, run)

    async def leases_reclaim(self, owners: Sequence[str], *, actor: str) -> int:
        """Recover at once the running steps leased to `owners`, without waiting for expiry."""
        if not owners:
            return 0
        marks = ",".join("?" * len(owners))

        def run(tx: Tx) -> int:
            rows = tx.con.execute(
                f"SELECT {STEP_HEAD_COLUMNS} FROM steps WHERE status = 'running' "
                f"AND lease_owner IN ({marks}) ORDER BY id{tx.skip_locked}",
                tuple(owners),
            ).fetchall()
            for row in rows:
                self._recover_row(tx, row, "its worker died", refund=False)
            return len(rows)

        return await self._write(actor, run)

    def _recover_row(self, tx: Tx, row: tuple[Any, ...], why: str, *, refund: bool) -> None:
        """`_recover` for a selected step row. A step whose stored state fails to decode is
        interrupted (never run again blindly) and its job quarantined: one bad row never stalls
        the reaper for every other job."""
        try:
            step = step_head(row)
        except CorruptStateError as exc:
            step = step_head(row, bare=True)
            limits_sql.release_abandoned(tx, step.id)
            move_step(
                tx,
                step,
                S.INTERRUPTED,
                f"{why}; its stored state is corrupt",
                sets=", lease_owner = NULL, lease_expires = NULL",
            )
            job = tx.job(step.job_id)
            if job is not None:
                quarantine_job(tx, job, exc, step=step)
            return
        self._recover(tx, step, why, refund=refund)

    def _recover(self, tx: Tx, step: StepHead, why: str, *, refund: bool) -> None:
        """A running step lost its worker. Idempotent tools go back to ready; others are
        interrupted and reconciled, or a human decides. Attempts still run out."""
        job = tx.job(step.job_id)
        assert job is not None
        limits_sql.release_abandoned(tx, step.id)
        # Its model calls in flight will never be settled by their worker (decision 0020).
        charge_reserved(tx, step.job_id, step.key, step.attempt)
        clear = ", lease_owner = NULL, lease_expires = NULL"
        if refund:
            clear += REFUND_ATTEMPT
            step.attempt = max(step.attempt - 1, 0)
        # A parked job's steps stay recoverable: its redrive (or approval) resumes them.
        resumable = job.status in LIVE_JOB or job.status in JOB_PARKED
        if not resumable or job.plan_version != step.plan_version:
            move_step(tx, step, S.CANCELLED, f"{why}; job is {job.status}", sets=clear)
            return
        exhausted = not refund and step.attempt >= step.max_attempts
        # Out of attempts, the lost leases are the cause the job and its dead letter show.
        lost = (
            StepError(
                "transient", f"step {step.key}: {why} on all {step.attempt} attempts", "worker_lost"
            )
            if exhausted
            else None
        )
        if step.idempotent:
            if exhausted:
                move_step(tx, step, S.FAILED, f"{why} on every attempt", sets=clear)
                exhaust_step(tx, job, step, f"{why} on all {step.attempt} attempts", lost)
            else:
                again = (
                    "the agent loop resumes from its transcript"
                    if step.kind == "agent"
                    else "idempotent tool, runs again"
                )
                move_step(
                    tx,
                    step,
                    S.READY,
                    f"{why}; {again}",
                    sets=clear + ", due = ?",
                    params=(tx.now,),
                )
            return
        move_step(tx, step, S.INTERRUPTED, f"{why} while a non-idempotent tool ran", sets=clear)
        if exhausted:
            move_step(tx, step, S.FAILED, f"{why} on every attempt")
            exhaust_step(tx, job, step, f"{why} on all {step.attempt} attempts", lost)
        elif step.spec.get("has_reconcile"):
            move_step(
                tx,
                step,
                S.READY,
                "reconcile before running again",
                sets=", reconcile_pending = 1, due = ?",
                params=(tx.now,),
            )
        else:
            open_review(
                tx,
                job,
                step,
                kind="interrupted",
                reason=f"step {step.key} was interrupted ({why}) while tool {step.tool} ran; "
                "it is not idempotent and has no reconcile function, so its effect may or may "
                "not have happened",
                asked=f"Run {step.tool} again (with the same idempotency key)?",
                options=[
                    {"name": "approve", "impact": "the tool runs again"},
                    {"name": "reject", "impact": "the step fails and is not run again"},
                ],
                context={
                    "tool": step.tool,
                    "args": ran_with(tx, step),
                    "attempt": step.attempt,
                    "workflow": job.workflow,
                    "step": step.key,
                },
            )
            advance_job(tx, job)


__all__ = ["LeaseStore"]
