"""Steps in the SQL store: a job's steps, and what the worker holding a step's lease reports of
it: its completion (with the tool's effects, behind the lease fence), its failure, its
heartbeat."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

from stalwart.domain.events import note
from stalwart.domain.failures import Decision, Outcome
from stalwart.domain.limits import tenant_key, tool_key
from stalwart.domain.records import Claim, StepError, StepRecord
from stalwart.domain.states import JOB_TERMINAL, JobStatus, StepStatus, step_transition
from stalwart.errors import CorruptStateError, EffectFailedError
from stalwart.store.base import Completion, Effect, Heartbeat
from stalwart.store.sql import limits as limits_sql
from stalwart.store.sql.base import SqlBase
from stalwart.store.sql.claims import waiting_step
from stalwart.store.sql.rows import STEP_COLUMNS, step_from_row
from stalwart.store.sql.tx import (
    LIVE_JOB,
    REFUND_ATTEMPT,
    JobHead,
    StepHead,
    Tx,
    advance_job,
    claim_candidate,
    exhaust_step,
    fail_job,
    move_job,
    move_step,
    park_job,
    quarantine_job,
    release_dependents,
    step_head,
)
from stalwart.types import dumps

J = JobStatus
S = StepStatus


class StepStore(SqlBase):
    """The steps part of `SqlStore`."""

    async def step_list(
        self, job_id: str, *, tenant_id: str | None = None, all_versions: bool = False
    ) -> list[StepRecord]:
        """A job's steps, in plan order."""
        job = await self.job_get(job_id, tenant_id=tenant_id)
        if all_versions:
            rows = await self._read(
                f"SELECT {STEP_COLUMNS} FROM steps WHERE job_id = ? ORDER BY plan_version, id",
                (job_id,),
            )
        else:
            rows = await self._read(
                f"SELECT {STEP_COLUMNS} FROM steps WHERE job_id = ? AND plan_version = ? "
                "ORDER BY id",
                (job_id, job.plan_version),
            )
        return [step_from_row(r) for r in rows]

    async def step_complete(
        self,
        claim: Claim,
        output: Any,
        *,
        worker_id: str,
        claim_next: bool = False,
        lease_seconds: float = 30.0,
        effects: Sequence[Effect] = (),
        warnings: Sequence[str] = (),
    ) -> Completion:
        """Record success (fenced by the lease token), apply the tool's `effects` (its writes
        to the user's own tables) in the same transaction, make dependents ready, maybe claim
        one. A lost lease applies nothing. Each of `warnings` (soft evaluation failures)
        becomes an `evaluation_warning` event."""
        payload = dumps(output)

        def run(tx: Tx) -> Completion:
            row = tx.con.execute(
                "UPDATE steps SET status = 'succeeded', output = ?, finished = ?, "
                "lease_owner = NULL, lease_expires = NULL, reconcile_pending = 0 "
                "WHERE id = ? AND lease_token = ? AND status = 'running' RETURNING dependents",
                (payload, tx.now, claim.step_id, claim.lease_token),
            ).fetchone()
            if row is None:
                return Completion(recorded=False)
            apply_effects(tx, claim, effects)
            job = tx.job(claim.job_id)
            assert job is not None
            if claim.limit_keys:
                limits_sql.release(tx, claim.step_id)
                if claim.tool and tool_key(claim.tool) in claim.limit_keys:
                    limits_sql.record_outcome(tx, job, claim.tool, claim.step_id)
            tx.events.append(
                step_transition(
                    claim.job_id,
                    claim.tenant_id,
                    claim.step_id,
                    claim.key,
                    S.RUNNING,
                    S.SUCCEEDED,
                    actor=tx.actor,
                    at=tx.now,
                    data={"attempt": claim.attempt},
                )
            )
            for warning in warnings:
                tx.events.append(
                    note(
                        "evaluation_warning",
                        claim.tenant_id,
                        claim.job_id,
                        actor=tx.actor,
                        at=tx.now,
                        reason=warning,
                        step_id=claim.step_id,
                        step_key=claim.key,
                    )
                )
            if job.status in JOB_TERMINAL or job.plan_version != claim.plan_version:
                return Completion(recorded=True, job_status=job.status)
            dependents = json.loads(row[0])
            ready = release_dependents(tx, job, job.tenant_id, claim.plan_version, dependents)
            if job.status not in LIVE_JOB:
                # Parked: the released steps wait, and run when the job is redriven or approved.
                return Completion(recorded=True, job_status=job.status)
            if not ready or job.status != J.EXECUTING.value:
                advance_job(tx, job)
            next_claim = None
            if claim_next and ready and job.status in LIVE_JOB:
                candidate = waiting_step(tx, ready[0])
                # A limited step goes through the claim path that enforces its limits.
                keys = [tenant_key(job.tenant_id)]
                if candidate is not None and candidate[7]:
                    keys.append(tool_key(candidate[7]))
                if candidate is not None and not limits_sql.limits_any(tx, keys):
                    try:
                        next_claim = claim_candidate(tx, candidate, worker_id, lease_seconds)
                    except CorruptStateError as exc:  # this completion stands; the job parks
                        quarantine_job(tx, job, exc, step=step_head(candidate[:14], bare=True))
            return Completion(recorded=True, next_claim=next_claim, job_status=job.status)

        sent = time.monotonic()  # the next claim's lease starts after this (decision 0032)
        completion = await self._write(worker_id, run)
        if completion.next_claim is not None:
            completion.next_claim.lease_sent_at = sent
        return completion

    async def step_fail(
        self, claim: Claim, error: StepError, decision: Decision, *, worker_id: str
    ) -> bool:
        """Record a failed attempt (fenced by the lease token) and apply the decision."""
        err = dumps(error.to_dict())

        def run(tx: Tx) -> bool:
            fenced = tx.con.execute(
                "UPDATE steps SET error = ?, lease_owner = NULL, lease_expires = NULL "
                "WHERE id = ? AND lease_token = ? AND status = 'running' RETURNING id",
                (err, claim.step_id, claim.lease_token),
            ).fetchone()
            if fenced is None:
                return False
            step = tx.step(claim.step_id)
            job = tx.job(claim.job_id)
            assert step is not None and job is not None
            if claim.limit_keys:
                limits_sql.release(tx, claim.step_id)
            if claim.tool and (tool_key(claim.tool) in claim.limit_keys or error.asks_to_wait):
                limits_sql.record_outcome(tx, job, claim.tool, claim.step_id, error=error)
            data = {"error": error.to_dict(), "attempt": claim.attempt}
            live = job.status in LIVE_JOB and job.plan_version == claim.plan_version
            outcome = decision.outcome
            if job.status in JOB_TERMINAL or outcome is Outcome.CANCEL:
                move_step(tx, step, S.CANCELLED, f"job is {job.status}", data=data)
            elif outcome is Outcome.RETRY:
                move_step(
                    tx,
                    step,
                    S.RETRY_WAIT,
                    decision.reason,
                    data={**data, "delay_seconds": round(decision.delay_seconds, 3)},
                    sets=", due = ?" + (REFUND_ATTEMPT if decision.refund_attempt else ""),
                    params=(tx.now + decision.delay_seconds,),
                )
            else:
                move_step(tx, step, S.FAILED, decision.reason, data=data)
                if live:
                    self._after_failure(tx, job, step, error, decision)
            return True

        return await self._write(worker_id, run)

    def _after_failure(
        self, tx: Tx, job: JobHead, step: StepHead, error: StepError, decision: Decision
    ) -> None:
        outcome = decision.outcome
        if outcome in (Outcome.SKIP, Outcome.DEAD_LETTER):
            exhaust_step(tx, job, step, decision.reason, error)
        elif outcome is Outcome.ESCALATE:
            # The reason names the error too: `dlq list` shows only the reason.
            why = f"step {step.key}: {decision.reason}; {error.message}"
            park_job(tx, job, J.ESCALATED, why, step=step, error=error)
        elif outcome is Outcome.REPLAN:
            feedback = {"step": step.key, "error": error.to_dict(), "reason": decision.reason}
            move_job(
                tx,
                job,
                J.REPLANNING,
                decision.reason,
                sets=", replan_feedback = ?, lease_expires = NULL",
                params=(dumps(feedback),),
            )
        elif outcome is Outcome.FAIL_JOB:
            fail_job(tx, job, decision.reason, error.to_dict())

    async def step_heartbeat(
        self, worker_id: str, leases: Sequence[tuple[int, int]], *, lease_seconds: float
    ) -> Heartbeat:
        """Extend leases; report the lost ones and the steps whose job was cancelled."""
        if not leases:
            return Heartbeat()

        def run(tx: Tx) -> Heartbeat:
            beat = Heartbeat()
            ordered = sorted(leases)
            pairs = ",".join("(?,?)" for _ in ordered)
            kept = {
                r[0]
                for r in tx.con.execute(
                    "UPDATE steps SET lease_expires = ? WHERE status = 'running' "
                    f"AND (id, lease_token) IN (VALUES {pairs}) RETURNING id",
                    (tx.now + lease_seconds, *(v for lease in ordered for v in lease)),
                ).fetchall()
            }
            beat.lost = {step_id for step_id, _ in ordered if step_id not in kept}
            tx.con.execute("UPDATE workers SET heartbeat = ? WHERE id = ?", (tx.now, worker_id))
            marks = ",".join("?" * len(leases))
            beat.cancelled = {
                r[0]
                for r in tx.con.execute(
                    f"SELECT s.id FROM steps s JOIN jobs j ON j.id = s.job_id "
                    f"WHERE s.id IN ({marks}) AND j.cancel_requested = 1",
                    tuple(step_id for step_id, _ in leases),
                ).fetchall()
            }
            return beat

        return await self._write(worker_id, run)


def apply_effects(tx: Tx, claim: Claim, effects: Sequence[Effect]) -> None:
    """Run a tool's registered writes inside its completion (after the fence passed)."""
    for number, (sql, params) in enumerate(effects, 1):
        try:
            tx.con.execute(sql, params)
        except tx.retryable:
            raise  # a lost connection or a lost race is the database's trouble, not the tool's
        except Exception as exc:
            raise EffectFailedError(
                f"step {claim.key}: on_commit effect {number} failed: {exc}; nothing of the "
                "step was recorded",
                step=claim.key,
                effect=number,
            ) from exc


__all__ = ["StepStore"]
