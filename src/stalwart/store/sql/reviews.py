"""Reviews in the SQL store: listing and reading them, a human's decision (approve or reject,
once), and escalating those past their deadline."""

from __future__ import annotations

from collections.abc import Sequence

from stalwart.domain.agents import AGENT_REVIEW_KINDS
from stalwart.domain.records import ReviewRecord, StepError
from stalwart.domain.states import JOB_TERMINAL, JobStatus, StepStatus
from stalwart.errors import NotFoundError, ReviewAlreadyDecidedError
from stalwart.store.sql.agents import decide_call
from stalwart.store.sql.base import SqlBase, scope_filter
from stalwart.store.sql.due import REVIEW_OVERDUE
from stalwart.store.sql.rows import REVIEW_COLUMNS, review_from_row
from stalwart.store.sql.tx import (
    LIVE_JOB,
    JobHead,
    StepHead,
    Tx,
    advance_job,
    close_open_steps,
    exhaust_step,
    move_job,
    move_step,
    park_job,
    resolve_dead_letters,
)
from stalwart.types import dumps

J = JobStatus
S = StepStatus


class ReviewStore(SqlBase):
    """The reviews part of `SqlStore`."""

    async def review_list(
        self, *, tenant_id: str | None = None, statuses: Sequence[str] = (), limit: int = 50
    ) -> list[ReviewRecord]:
        """Reviews, oldest first."""
        where, params = scope_filter(tenant_id, statuses)
        rows = await self._read(
            f"SELECT {REVIEW_COLUMNS} FROM reviews WHERE {' AND '.join(where)} "
            "ORDER BY created, id LIMIT ?",
            (*params, limit),
        )
        return [review_from_row(r) for r in rows]

    async def review_get(self, review_id: str, *, tenant_id: str | None = None) -> ReviewRecord:
        """One review."""
        rows = await self._read(f"SELECT {REVIEW_COLUMNS} FROM reviews WHERE id = ?", (review_id,))
        if not rows or (tenant_id is not None and rows[0][1] != tenant_id):
            raise NotFoundError(f"no review {review_id!r}", entity="review", id=review_id)
        return review_from_row(rows[0])

    async def review_decide(
        self,
        review_id: str,
        *,
        approve: bool,
        reviewer: str,
        comment: str = "",
        tenant_id: str | None = None,
    ) -> ReviewRecord:
        """Approve or reject a pending (or escalated) review, and move its step and job."""
        decision = "approved" if approve else "rejected"

        def run(tx: Tx) -> None:
            review = await_review(tx, review_id, tenant_id)
            if review.status not in ("pending", "escalated"):
                raise ReviewAlreadyDecidedError(
                    f"review {review_id} is already {review.status}"
                    + (f" by {review.decided_by}" if review.decided_by else ""),
                    id=review_id,
                    status=review.status,
                )
            job = tx.job(review.job_id)
            step = tx.step(review.step_id) if review.step_id is not None else None
            assert job is not None
            tx.con.execute(
                "UPDATE reviews SET status = ?, decision = ?, decided = ?, decided_by = ?, "
                "comment = ? WHERE id = ?",
                (decision, decision, tx.now, reviewer, comment, review_id),
            )
            tx.note(
                f"review_{decision}",
                job,
                comment,
                step=step,
                review_id=review_id,
                reviewer=reviewer,
                review_kind=review.kind,
            )
            if step is None:
                return
            if review.kind in AGENT_REVIEW_KINDS:
                decide_call(tx, review_id, approve, reviewer, comment)
                agent = step.spec.get("agent") or {}
                if not approve and agent.get("on_tool_reject", "tell_model") == "tell_model":
                    # The loop goes on: the model reads the reviewer's comment as the result.
                    self._resume(tx, job, step, reviewer)
                    return
            if approve:
                self._approve(tx, job, step, reviewer)
            else:
                self._reject(tx, job, step, reviewer, comment)

        await self._write(reviewer, run)
        return await self.review_get(review_id)

    def _approve(self, tx: Tx, job: JobHead, step: StepHead, reviewer: str) -> None:
        if job.status == J.ESCALATED.value and not _has_failed_steps(tx, job):
            # Escalated only because this review passed its SLA: the decision resolves it. A
            # job escalated by a failed step stays parked until an operator redrives it.
            move_job(tx, job, J.EXECUTING, f"approved by {reviewer}", sets=", error = NULL")
            resolve_dead_letters(tx, job, "resolved", reviewer)
        if step.status in (S.AWAITING_APPROVAL.value, S.INTERRUPTED.value):
            move_step(
                tx,
                step,
                S.READY,
                f"approved by {reviewer}",
                sets=", approved = 1, reconcile_pending = 0, due = ?",
                params=(tx.now,),
            )
        advance_job(tx, job)

    def _resume(self, tx: Tx, job: JobHead, step: StepHead, reviewer: str) -> None:
        """A rejected agent call whose loop goes on: the step is ready again."""
        if job.status == J.ESCALATED.value and not _has_failed_steps(tx, job):
            move_job(tx, job, J.EXECUTING, f"decided by {reviewer}", sets=", error = NULL")
            resolve_dead_letters(tx, job, "resolved", reviewer)
        if step.status == S.AWAITING_APPROVAL.value:
            move_step(
                tx,
                step,
                S.READY,
                f"call rejected by {reviewer}; the model is told",
                sets=", due = ?",
                params=(tx.now,),
            )
        advance_job(tx, job)

    def _reject(self, tx: Tx, job: JobHead, step: StepHead, reviewer: str, comment: str) -> None:
        why = f"rejected by {reviewer}" + (f": {comment}" if comment else "")
        if step.status == S.INTERRUPTED.value:
            move_step(tx, step, S.FAILED, why)
            if job.status == J.ESCALATED.value:
                move_job(tx, job, J.EXECUTING, why, sets=", error = NULL")
            rejected = StepError("rejected", f"step {step.key}: {why}", "rejected")
            exhaust_step(tx, job, step, why, rejected)
            return
        if step.status != S.AWAITING_APPROVAL.value:
            return
        move_step(tx, step, S.REJECTED, why)
        if job.status in JOB_TERMINAL:
            return
        if job.on_reject == "replan" and job.replans < job.max_replans:
            feedback = {"step": step.key, "rejected_by": reviewer, "comment": comment}
            if job.status == J.ESCALATED.value:
                resolve_dead_letters(tx, job, "resolved", reviewer)
            move_job(
                tx,
                job,
                J.REPLANNING,
                why,
                sets=", replan_feedback = ?, lease_expires = NULL, error = NULL",
                params=(dumps(feedback),),
            )
            return
        move_job(
            tx,
            job,
            J.REJECTED,
            why,
            sets=", error = ?",
            params=(dumps({"error_class": "rejected", "message": why}),),
        )
        close_open_steps(tx, job, S.CANCELLED, "job rejected")
        resolve_dead_letters(tx, job, "closed", reviewer)

    async def reviews_escalate_overdue(self, *, actor: str) -> list[ReviewRecord]:
        """Escalate pending reviews past their SLA deadline."""

        def run(tx: Tx) -> list[str]:
            ids = [
                r[0]
                for r in tx.con.execute(
                    f"SELECT id {REVIEW_OVERDUE.format(now='?')} ORDER BY id{tx.skip_locked}",
                    (tx.now,),
                ).fetchall()
            ]
            for review_id in ids:
                review = await_review(tx, review_id, None)
                tx.con.execute(
                    "UPDATE reviews SET status = 'escalated', escalated = ? WHERE id = ?",
                    (tx.now, review_id),
                )
                job = tx.job(review.job_id)
                step = tx.step(review.step_id) if review.step_id is not None else None
                assert job is not None
                tx.note(
                    "review_escalated", job, "approval SLA passed", step=step, review_id=review_id
                )
                if job.status in LIVE_JOB:
                    why = f"review {review_id} passed its SLA"
                    overdue = StepError(
                        "review_overdue",
                        f"step {review.step_key}: {why} with no decision",
                        "review_overdue",
                        details={"review_id": review_id, "sla_deadline": review.sla_deadline},
                    )
                    park_job(tx, job, J.ESCALATED, why, step=step, error=overdue)
            return ids

        if not await self._any(REVIEW_OVERDUE):
            return []
        ids = await self._write(actor, run)
        return [await self.review_get(i) for i in ids]


def _has_failed_steps(tx: Tx, job: JobHead) -> bool:
    row = tx.con.execute(
        "SELECT 1 FROM steps WHERE job_id = ? AND plan_version = ? "
        "AND status IN ('failed', 'dead_lettered') LIMIT 1",
        (job.id, job.plan_version),
    ).fetchone()
    return row is not None


def await_review(tx: Tx, review_id: str, tenant_id: str | None) -> ReviewRecord:
    """Read one review inside a transaction."""
    row = tx.con.execute(
        f"SELECT {REVIEW_COLUMNS} FROM reviews WHERE id = ?{tx.lock}", (review_id,)
    ).fetchone()
    if row is None or (tenant_id is not None and row[1] != tenant_id):
        raise NotFoundError(f"no review {review_id!r}", entity="review", id=review_id)
    return review_from_row(row)


__all__ = ["ReviewStore", "await_review"]
