"""A job's plans in the SQL store: its plan versions, and replanning: claiming a job that waits
for a new plan, then applying that plan (unchanged succeeded steps keep their outputs) or
escalating the job to a human."""

from __future__ import annotations

from typing import Any

from stalwart.domain.plans import Plan
from stalwart.domain.records import JobRecord, StepError
from stalwart.domain.states import JobStatus, StepStatus
from stalwart.errors import CorruptStateError
from stalwart.store.base import PlanRecord, ReplanClaim
from stalwart.store.sql.base import SqlBase
from stalwart.store.sql.due import REPLAN_WAITING
from stalwart.store.sql.rows import loads
from stalwart.store.sql.tx import (
    STEP_HEAD_COLUMNS,
    JobHead,
    Tx,
    advance_job,
    escalate_replanning,
    insert_plan,
    move_job,
    move_step,
    reusable_outputs,
    step_head,
)
from stalwart.types import dumps

J = JobStatus
S = StepStatus


class PlanStore(SqlBase):
    """The plans part of `SqlStore`."""

    async def plan_list(self, job_id: str, *, tenant_id: str | None = None) -> list[PlanRecord]:
        """Every plan version of a job, oldest first."""
        await self.job_get(job_id, tenant_id=tenant_id)
        rows = await self._read(
            "SELECT job_id, version, template_name, template_hash, plan_hash, plan, created "
            "FROM plans WHERE job_id = ? ORDER BY version",
            (job_id,),
        )
        return [
            PlanRecord(
                r[0], r[1], r[2], r[3], r[4], loads(r[5], f"plan v{r[1]} of job {r[0]}", dict), r[6]
            )
            for r in rows
        ]

    async def job_claim_replanning(
        self, worker_id: str, *, lease_seconds: float, limit: int = 1
    ) -> list[ReplanClaim]:
        """Claim jobs waiting in `replanning` for a new plan, once no step of their current plan
        is still running: a step in flight finishes (and its output can be reused) before the
        next plan could run it a second time, under another idempotency key."""

        def run(tx: Tx) -> list[tuple[str, int, Any]]:
            rows = tx.con.execute(
                "UPDATE jobs SET lease_owner = ?, lease_expires = ?, lease_token = lease_token + 1 "
                f"WHERE id IN (SELECT id {REPLAN_WAITING.format(now='?')} "
                f"ORDER BY id LIMIT ?{tx.skip_locked}) RETURNING id, lease_token, replan_feedback",
                (worker_id, tx.now + lease_seconds, tx.now, limit),
            ).fetchall()
            return [(r[0], r[1], r[2]) for r in rows]

        if not await self._any(REPLAN_WAITING):
            return []
        claims = []
        for job_id, token, feedback in await self._write(worker_id, run):
            try:
                job = await self.job_get(job_id)
                asked = loads(feedback, f"replan feedback of job {job_id}", dict)
            except CorruptStateError as exc:
                # This job alone is quarantined; the others of the batch are planned.
                await self.job_quarantine(job_id, exc, actor=worker_id)
                continue
            hashes = {
                r[0]
                for r in await self._read("SELECT plan_hash FROM plans WHERE job_id = ?", (job_id,))
            }
            claims.append(ReplanClaim(job, token, frozenset(hashes), asked))
        return claims

    def _replan_job(self, tx: Tx, claim: ReplanClaim) -> JobHead | None:
        job = tx.job(claim.job.id)
        row = tx.con.execute(
            "SELECT lease_token FROM jobs WHERE id = ?", (claim.job.id,)
        ).fetchone()
        waiting = (J.REPLANNING.value, J.PLANNING.value)
        if job is None or job.status not in waiting or row[0] != claim.lease_token:
            return None
        return job

    async def job_replan(self, claim: ReplanClaim, plan: Plan, *, actor: str) -> JobRecord:
        """Apply a new plan version; unchanged succeeded steps keep their outputs."""

        def run(tx: Tx) -> None:
            job = self._replan_job(tx, claim)
            if job is None:
                return
            reuse = reusable_outputs(tx, job.id)
            old = tx.con.execute(
                f"SELECT {STEP_HEAD_COLUMNS} FROM steps WHERE job_id = ? AND plan_version = ? "
                "AND status IN ('pending', 'ready', 'retry_wait', 'awaiting_approval', "
                f"'interrupted', 'failed') ORDER BY id{tx.lock}",
                (job.id, job.plan_version),
            ).fetchall()
            for r in old:
                move_step(tx, step_head(r), S.SKIPPED, f"superseded by plan v{plan.version}")
            tx.con.execute(
                "UPDATE reviews SET status = 'cancelled', decided = ? WHERE job_id = ? "
                "AND status IN ('pending', 'escalated')",
                (tx.now, job.id),
            )
            hashes = dict(claim.job.tool_schema_hashes)
            hashes.update(plan.notes.get("tool_schema_hashes", {}))
            tx.con.execute(
                "UPDATE jobs SET plan_version = ?, template_name = ?, template_hash = ?, "
                "replans = replans + CASE WHEN status = 'replanning' THEN 1 ELSE 0 END, "
                "replan_feedback = NULL, lease_owner = NULL, "
                "lease_expires = NULL, tool_schema_hashes = ? WHERE id = ?",
                (plan.version, plan.template_name, plan.template_hash, dumps(hashes), job.id),
            )
            job.plan_version = plan.version
            insert_plan(tx, job, plan, reuse=reuse)
            move_job(tx, job, J.EXECUTING, f"plan v{plan.version} validated")
            advance_job(tx, job)

        await self._write(actor, run)
        return await self.job_get(claim.job.id)

    async def job_escalate(
        self, claim: ReplanClaim, *, actor: str, reason: str, error: StepError | None = None
    ) -> JobRecord:
        """Park a claimed replanning job for a human; the failure that sent it to replanning
        stays its cause (see `escalate_replanning`)."""
        symptom = error or StepError("critical", reason, "escalated")

        def run(tx: Tx) -> None:
            job = self._replan_job(tx, claim)
            if job is None:
                return
            tx.con.execute(
                "UPDATE jobs SET lease_owner = NULL, lease_expires = NULL WHERE id = ?", (job.id,)
            )
            escalate_replanning(tx, job, reason, claim.feedback, symptom)

        await self._write(actor, run)
        return await self.job_get(claim.job.id)


__all__ = ["PlanStore"]
