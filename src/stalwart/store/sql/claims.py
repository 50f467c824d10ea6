"""Claiming steps in the SQL store: due steps by priority, then due time, each within its limits
(taken in the same transaction, decision 0016); a step of a corrupt job quarantines that job
alone."""

from __future__ import annotations

import time
from typing import Any

from stalwart.domain.records import Claim
from stalwart.errors import CorruptStateError
from stalwart.store.base import Claims
from stalwart.store.sql import limits as limits_sql
from stalwart.store.sql.base import SqlBase
from stalwart.store.sql.due import STEP_WAITING
from stalwart.store.sql.tx import (
    CANDIDATE_COLUMNS,
    JobHead,
    StepHead,
    Tx,
    claim_candidate,
    quarantine_job,
    step_head,
)


class ClaimStore(SqlBase):
    """The claims part of `SqlStore`."""

    async def step_claim(self, worker_id: str, *, limit: int, lease_seconds: float) -> Claims:
        """Claim up to `limit` due steps by priority, then due time; say when a step left
        behind may be taken, so the worker sleeps until then and not until its next poll."""

        def run(tx: Tx) -> Claims:
            limits = limits_sql.load(tx)
            claims: list[Claim] = []
            # A second pass when keys turned out full mid-batch (slots taken by others since
            # the load): their candidates used up the batch, others may be waiting behind.
            for _ in range(2):
                found_full = len(limits.full)
                claims += self._claim_batch(
                    tx, worker_id, limit - len(claims), lease_seconds, limits
                )
                if len(claims) >= limit or len(limits.full) == found_full:
                    break
            # A full batch: the worker has no slot free and is woken when one frees.
            next_due = None if len(claims) >= limit else _next_due(tx, limits)
            return Claims(claims, now=tx.now, next_due=next_due)

        now, first_due = await self._due_steps()
        if first_due is None or first_due > now:
            return Claims(now=now, next_due=first_due)
        sent = time.monotonic()  # the leases start after this, by any clock (decision 0032)
        claims = await self._write(worker_id, run)
        for claim in claims:
            claim.lease_sent_at = sent
        return claims

    def _claim_batch(
        self,
        tx: Tx,
        worker_id: str,
        limit: int,
        lease_seconds: float,
        limits: limits_sql.Limits,
    ) -> list[Claim]:
        """Claim up to `limit` candidates, skipping keys whose limits hold them back."""
        held = limits.held_back(tx.now)
        tools = [k[5:] for k in held if k.startswith("tool:")]
        tenants = [k[7:] for k in held if k.startswith("tenant:")]
        skip = ""
        if tools:
            skip += f" AND (s.tool IS NULL OR s.tool NOT IN ({','.join('?' * len(tools))}))"
        if tenants:
            skip += f" AND s.tenant_id NOT IN ({','.join('?' * len(tenants))})"
        rows = tx.con.execute(
            f"SELECT {CANDIDATE_COLUMNS} {STEP_WAITING} AND s.due <= ?{skip} "
            f"ORDER BY s.priority DESC, s.due LIMIT ?{tx.skip_locked_of('s, j')}",
            (tx.now, *tools, *tenants, limit),
        ).fetchall()
        claims = []
        touched: set[str] = set()
        for row in rows:
            if row[1] in touched:
                # An earlier claim of this batch changed the job (steps executed, a budget
                # that failed it, a park): read the candidate again, not the stale row.
                row = waiting_step(tx, row[0])
                if row is None:
                    continue
            touched.add(row[1])
            claim = self._claim_or_quarantine(tx, row, worker_id, lease_seconds, limits)
            if claim is not None:
                claims.append(claim)
        return claims

    async def _due_steps(self) -> tuple[float, float | None]:
        """A read before the write transaction, so idle workers never queue for the write
        lock: the database's time, and the due time of a step that is due, or else the earliest
        due time of a waiting step (None: no step waits)."""
        now = self.now_sql
        # Any due step will do (the first found, no scan); the earliest only when none is due.
        rows = await self._read(
            f"SELECT {now}, COALESCE((SELECT s.due {STEP_WAITING} AND s.due <= {now} LIMIT 1), "
            f"(SELECT min(s.due) {STEP_WAITING}))"
        )
        return float(rows[0][0]), rows[0][1]

    def _claim_or_quarantine(
        self,
        tx: Tx,
        row: tuple[Any, ...],
        worker_id: str,
        lease_seconds: float,
        limits: limits_sql.Limits,
    ) -> Claim | None:
        """Claim one candidate, through its limits. A limit that holds it back undoes this
        claim alone (a savepoint) and leaves the step ready. If its stored state is corrupt
        (found before anything of the claim is written), park the job (escalated, with a dead
        letter saying why: `quarantine_job`) so one bad row cannot stall the queue for
        everybody."""
        keys = limits.keys_for(row[7], row[2], tx.now)
        if keys and limits.held_back(tx.now).intersection(keys):
            return None
        try:
            if not keys:
                return claim_candidate(tx, row, worker_id, lease_seconds)
            return self._claim_limited(tx, row, worker_id, lease_seconds, limits, keys)
        except CorruptStateError as exc:
            job = tx.job(row[1])
            if job is not None:
                quarantine_job(tx, job, exc, step=step_head(row[:14], bare=True))
            return None

    def _claim_limited(
        self,
        tx: Tx,
        row: tuple[Any, ...],
        worker_id: str,
        lease_seconds: float,
        limits: limits_sql.Limits,
        keys: list[str],
    ) -> Claim | None:
        def admit(job: JobHead, step: StepHead) -> tuple[str, ...]:
            limits_sql.admit(tx, limits, job, step.id, keys)
            return tuple(keys)

        mark = len(tx.events)
        tx.con.execute("SAVEPOINT claim_one")
        try:
            claim = claim_candidate(tx, row, worker_id, lease_seconds, admit)
        except limits_sql.NotAdmitted:
            tx.con.execute("ROLLBACK TO claim_one")
            del tx.events[mark:]
            claim = None
        if claim is not None:
            for key in keys:
                limits.rows[key].in_use += 1
        tx.con.execute("RELEASE claim_one")
        return claim


def waiting_step(tx: Tx, step_id: int) -> tuple[Any, ...] | None:
    """One step as a claim candidate, if it is still claimable (read again within a claim)."""
    row: tuple[Any, ...] | None = tx.con.execute(
        f"SELECT {CANDIDATE_COLUMNS} {STEP_WAITING} AND s.id = ?", (step_id,)
    ).fetchone()
    return row


def _next_due(tx: Tx, limits: limits_sql.Limits) -> float | None:
    """When a claim may next take a step it left behind: the first due time still to come, or
    the moment a limit holding steps back now lets one through (the key may hold back none of
    the waiting steps: then the worker looks once for nothing, at most once per token or pause)."""
    row = tx.con.execute(f"SELECT min(s.due) {STEP_WAITING} AND s.due > ?", (tx.now,)).fetchone()
    times = [float(row[0])] if row is not None and row[0] is not None else []
    freed = limits_sql.next_free(tx, limits)
    if freed is not None:
        times.append(freed)
    return min(times, default=None)


__all__ = ["ClaimStore", "waiting_step"]
