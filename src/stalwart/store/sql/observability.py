"""What metrics and alerts read, on both backends: the event log and the ledger tailed by id,
the current state as gauges, per-workflow outcomes over a window and its baseline, and alert
incidents. Mixed into `SqlStore`, over the backend's `_write` and `_read`.

Nothing here runs on the hot path: the exporter reads at scrape time and the alert evaluator
once per interval. See docs/decisions/0029-metrics-from-the-event-log.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

from stalwart.domain.observability import (
    JUDGED_OUTCOMES,
    AlertIncident,
    ApprovalRow,
    DeadLetterRow,
    FeedEvent,
    LedgerEntry,
    LimitGauge,
    MetricsSnapshot,
    QueueRow,
    RunningRow,
    WorkflowOutcomes,
)
from stalwart.errors import CorruptStateError, StoreError
from stalwart.store.sql import limits as limits_sql
from stalwart.store.sql.base import SqlBase
from stalwart.store.sql.rows import loads
from stalwart.store.sql.tx import Tx
from stalwart.types import dumps, new_id

T = TypeVar("T")

# Most ids one `ids=` read asks for (the exporter's second look at rows it could not see yet).
MAX_IDS = 1000

FEED_COLUMNS = (
    "e.id, e.kind, e.tenant_id, e.job_id, j.workflow, j.created, e.step_id, s.tool, s.kind, "
    "e.from_status, e.to_status, e.reason, e.data, e.at"
)
FEED_FROM = (
    "FROM events e LEFT JOIN jobs j ON j.id = e.job_id LEFT JOIN steps s ON s.id = e.step_id"
)
LEDGER_COLUMNS = (
    "l.id, l.tenant_id, j.workflow, l.provider, l.model, l.outcome, l.input_tokens, "
    "l.output_tokens, l.cached_tokens, l.cost_nanos, l.latency_ms, l.context_tokens, "
    "l.context_limit, l.created"
)
LEDGER_FROM = "FROM llm_calls l LEFT JOIN jobs j ON j.id = l.job_id"
INCIDENT_COLUMNS = "id, rule, scope, status, summary, details, opened, updated, closed, notified"
# The row that says when alert rules were last evaluated (by any process); never an incident.
TURN_ID = "alert_turn"


def _feed_event(r: Sequence[Any]) -> FeedEvent:
    try:
        data = loads(r[12], f"data of event {r[0]}")
    except CorruptStateError:
        data = None  # metrics never stop on one bad row; the job's own reads fail closed
    return FeedEvent(
        id=int(r[0]),
        kind=r[1],
        tenant_id=r[2],
        job_id=r[3],
        workflow=r[4],
        job_created=float(r[5]) if r[5] is not None else None,
        step_id=r[6],
        tool=r[7],
        step_kind=r[8],
        from_status=r[9],
        to_status=r[10],
        reason=r[11] or "",
        data=data if isinstance(data, dict) else None,
        at=float(r[13]),
    )


def _ledger_entry(r: Sequence[Any]) -> LedgerEntry:
    return LedgerEntry(
        id=int(r[0]),
        tenant_id=r[1],
        workflow=r[2],
        provider=r[3],
        model=r[4],
        outcome=r[5],
        input_tokens=int(r[6] or 0),
        output_tokens=int(r[7] or 0),
        cached_tokens=int(r[8] or 0),
        cost_nanos=int(r[9] or 0),
        latency_ms=float(r[10]) if r[10] is not None else None,
        context_tokens=r[11],
        context_limit=r[12],
        created=float(r[13]),
    )


def _incident(r: Sequence[Any]) -> AlertIncident:
    return AlertIncident(
        id=r[0],
        rule=r[1],
        scope=r[2],
        status=r[3],
        summary=r[4],
        details=loads(r[5], f"details of incident {r[0]}") or {},
        opened=float(r[6]),
        updated=float(r[7]),
        closed=float(r[8]) if r[8] is not None else None,
        notified=float(r[9]) if r[9] is not None else None,
    )


class ObservabilityStore(SqlBase):
    """The exporter's and the alert evaluator's reads, and alert incidents (mixed into
    `SqlStore`)."""

    # -- the log and the ledger, tailed -----------------------------------------------------------

    async def event_feed(
        self, after_id: int = 0, *, limit: int = 5000, ids: Sequence[int] | None = None
    ) -> list[FeedEvent]:
        """Events with an id above `after_id`, oldest first, at most `limit`; or, with `ids`,
        those of these ids that exist now (at most `MAX_IDS` of them)."""
        if ids is not None:
            wanted = sorted(set(ids))[:MAX_IDS]
            if not wanted:
                return []
            rows = await self._read(
                f"SELECT {FEED_COLUMNS} {FEED_FROM} WHERE e.id IN ({','.join('?' * len(wanted))}) "
                "ORDER BY e.id",
                wanted,
            )
        else:
            rows = await self._read(
                f"SELECT {FEED_COLUMNS} {FEED_FROM} WHERE e.id > ? ORDER BY e.id LIMIT ?",
                (after_id, limit),
            )
        return [_feed_event(r) for r in rows]

    async def llm_call_feed(
        self, after_id: int = 0, *, limit: int = 5000, ids: Sequence[int] | None = None
    ) -> list[LedgerEntry]:
        """Ledger rows with an id above `after_id`, oldest first, at most `limit`; or, with
        `ids`, those of these ids (at most `MAX_IDS`). Calls in flight come back `reserved`."""
        if ids is not None:
            wanted = sorted(set(ids))[:MAX_IDS]
            if not wanted:
                return []
            rows = await self._read(
                f"SELECT {LEDGER_COLUMNS} {LEDGER_FROM} "
                f"WHERE l.id IN ({','.join('?' * len(wanted))}) ORDER BY l.id",
                wanted,
            )
        else:
            rows = await self._read(
                f"SELECT {LEDGER_COLUMNS} {LEDGER_FROM} WHERE l.id > ? ORDER BY l.id LIMIT ?",
                (after_id, limit),
            )
        return [_ledger_entry(r) for r in rows]

    async def job_costs(self, job_ids: Sequence[str]) -> dict[str, int]:
        """The model spend of each of these jobs so far (nano-USD; 0 for a job without calls)."""
        wanted = sorted(set(job_ids))
        out = dict.fromkeys(wanted, 0)
        for start in range(0, len(wanted), MAX_IDS):
            chunk = wanted[start : start + MAX_IDS]
            rows = await self._read(
                "SELECT job_id, coalesce(sum(cost_nanos), 0) FROM llm_calls "
                f"WHERE job_id IN ({','.join('?' * len(chunk))}) GROUP BY job_id",
                chunk,
            )
            out.update({str(job_id): int(cost) for job_id, cost in rows})
        return out

    # -- the current state ------------------------------------------------------------------------

    async def metrics_snapshot(self, *, live_seconds: float = 30.0) -> MetricsSnapshot:
        """Queue depth, running steps, approvals waiting (and their SLA), open dead letters,
        limits and breakers, live workers and open alert incidents, as of the database's
        clock. Each read uses an index of the live states, so its cost follows what is live,
        not the size of the history."""
        now = await self._now()
        snap = MetricsSnapshot(now=now)
        for status, workflow, priority, tool, tenant, count, due in await self._read(
            "SELECT s.status, j.workflow, s.priority, s.tool, s.tenant_id, count(*), "
            "sum(CASE WHEN s.due <= ? THEN 1 ELSE 0 END) FROM steps s "
            "JOIN jobs j ON j.id = s.job_id WHERE s.status IN ('ready', 'retry_wait') "
            "AND j.status IN ('executing', 'waiting_approval') "
            "GROUP BY s.status, j.workflow, s.priority, s.tool, s.tenant_id",
            (now,),
        ):
            snap.queue.append(
                QueueRow(status, workflow, int(priority), tool, tenant, int(count), int(due or 0))
            )
        for status, workflow, priority, tenant, count, due in await self._read(
            "SELECT status, workflow, priority, tenant_id, count(*), "
            "sum(CASE WHEN lease_expires IS NULL OR lease_expires < ? THEN 1 ELSE 0 END) "
            "FROM jobs WHERE status IN ('planning', 'replanning') "
            "GROUP BY status, workflow, priority, tenant_id",
            (now,),
        ):
            snap.queue.append(
                QueueRow(status, workflow, int(priority), None, tenant, int(count), int(due or 0))
            )
        snap.running = [
            RunningRow(workflow, tool, int(count))
            for workflow, tool, count in await self._read(
                "SELECT j.workflow, s.tool, count(*) FROM steps s JOIN jobs j ON j.id = s.job_id "
                "WHERE s.status = 'running' GROUP BY j.workflow, s.tool"
            )
        ]
        snap.approvals = [
            ApprovalRow(
                tenant,
                workflow or "",
                kind,
                status,
                int(count),
                int(past or 0),
                float(oldest),
                float(deadline),
            )
            for tenant, workflow, kind, status, count, past, oldest, deadline in await self._read(
                "SELECT r.tenant_id, j.workflow, r.kind, r.status, count(*), "
                "sum(CASE WHEN r.sla_deadline < ? THEN 1 ELSE 0 END), min(r.created), "
                "min(r.sla_deadline) FROM reviews r LEFT JOIN jobs j ON j.id = r.job_id "
                "WHERE r.status IN ('pending', 'escalated') "
                "GROUP BY r.tenant_id, j.workflow, r.kind, r.status",
                (now,),
            )
        ]
        snap.dead_letters = [
            DeadLetterRow(tenant, workflow, int(count), float(newest))
            for tenant, workflow, count, newest in await self._read(
                "SELECT tenant_id, workflow, count(*), max(created) FROM dead_letters "
                "WHERE status = 'open' GROUP BY tenant_id, workflow"
            )
        ]
        for r in await self._read(f"SELECT {limits_sql.LIMIT_FIELDS} FROM limits ORDER BY key"):
            row = limits_sql.LimitRow(*r)
            paused = max(0.0, (row.paused_until or 0.0) - now)
            snap.limits.append(
                LimitGauge(
                    key=row.key,
                    held_back=row.held_back(now),
                    breaker=row.breaker_failures is not None or row.breaker_state != "closed",
                    breaker_state=row.breaker_state,
                    concurrency=row.concurrency,
                    in_use=int(row.in_use),
                    paused_seconds=paused,
                )
            )
        snap.workers_live = int(
            (
                await self._read(
                    "SELECT count(*) FROM workers WHERE stopped IS NULL AND heartbeat >= ?",
                    (now - live_seconds,),
                )
            )[0][0]
        )
        snap.alerts_open = {
            str(rule): int(count)
            for rule, count in await self._read(
                "SELECT rule, count(*) FROM alert_incidents WHERE status = 'open' GROUP BY rule"
            )
        }
        return snap

    async def workflow_outcomes(
        self, *, window_seconds: float, baseline_seconds: float
    ) -> list[WorkflowOutcomes]:
        """Per workflow, the jobs that reached a judged outcome (completed, failed, rejected,
        dead-lettered, escalated) in the last `window_seconds`, and in the `baseline_seconds`
        before that window, with the model spend of those jobs."""
        now = await self._now()
        window, baseline = now - window_seconds, now - window_seconds - baseline_seconds
        marks = ",".join("?" * len(JUDGED_OUTCOMES))
        rows = await self._read(
            "SELECT workflow, "
            "sum(CASE WHEN t >= ? THEN 1 ELSE 0 END), "
            "sum(CASE WHEN t >= ? AND status = 'completed' THEN 1 ELSE 0 END), "
            "sum(CASE WHEN t >= ? THEN cost ELSE 0 END), "
            "sum(CASE WHEN t < ? THEN 1 ELSE 0 END), "
            "sum(CASE WHEN t < ? AND status = 'completed' THEN 1 ELSE 0 END), "
            "sum(CASE WHEN t < ? THEN cost ELSE 0 END) "
            "FROM (SELECT workflow, status, coalesce(finished, updated) AS t, "
            "(SELECT coalesce(sum(l.cost_nanos), 0) FROM llm_calls l WHERE l.job_id = jobs.id) "
            f"AS cost FROM jobs WHERE status IN ({marks}) "
            "AND coalesce(finished, updated) >= ?) x GROUP BY workflow ORDER BY workflow",
            (window, window, window, window, window, window, *JUDGED_OUTCOMES, baseline),
        )
        return [
            WorkflowOutcomes(str(r[0]), *(int(v or 0) for v in r[1:7]))  # PG sums are numeric
            for r in rows
        ]

    # -- alert incidents --------------------------------------------------------------------------

    async def alert_open(
        self, rule: str, scope: str, summary: str, details: dict[str, Any]
    ) -> tuple[AlertIncident, bool]:
        """Open an incident of `rule` for `scope`, or refresh the one already open (its summary,
        details and `updated`). True when this call opened it: of concurrent callers in any
        number of processes exactly one does (a unique index on the open incident)."""
        payload = dumps(details)

        def run(tx: Tx) -> tuple[str, bool]:
            # Twice at most: an open incident closed (by another process) between the two
            # statements lets the second INSERT open the next one.
            for _ in range(2):
                took = tx.con.execute(
                    "INSERT INTO alert_incidents (id, rule, scope, status, summary, details, "
                    "opened, updated) VALUES (?,?,?,'open',?,?,?,?) "
                    "ON CONFLICT (rule, scope) WHERE status = 'open' DO NOTHING RETURNING id",
                    (new_id("inc"), rule, scope, summary, payload, tx.now, tx.now),
                ).fetchone()
                if took is not None:
                    return str(took[0]), True
                row = tx.con.execute(
                    "UPDATE alert_incidents SET summary = ?, details = ?, updated = ? "
                    "WHERE rule = ? AND scope = ? AND status = 'open' RETURNING id",
                    (summary, payload, tx.now, rule, scope),
                ).fetchone()
                if row is not None:
                    return str(row[0]), False
            raise StoreError(f"alert incident {rule}/{scope} could be neither opened nor found")

        incident_id, opened = await self._write("alerts", run)
        return await self._incident(incident_id), opened

    async def alert_close(self, rule: str, scope: str) -> AlertIncident | None:
        """Close the open incident of `rule` for `scope`; None if none was open."""

        def run(tx: Tx) -> str | None:
            row = tx.con.execute(
                "UPDATE alert_incidents SET status = 'closed', closed = ?, updated = ? "
                "WHERE rule = ? AND scope = ? AND status = 'open' RETURNING id",
                (tx.now, tx.now, rule, scope),
            ).fetchone()
            return str(row[0]) if row else None

        incident_id = await self._write("alerts", run)
        return await self._incident(incident_id) if incident_id else None

    async def alert_claim_unnotified(self) -> list[AlertIncident]:
        """Mark every open incident whose hooks have not been called as notified, and return
        them: the caller calls their hooks. Concurrent callers never get the same incident."""

        def run(tx: Tx) -> list[str]:
            rows = tx.con.execute(
                "UPDATE alert_incidents SET notified = ? WHERE status = 'open' "
                "AND notified IS NULL RETURNING id",
                (tx.now,),
            ).fetchall()
            return sorted(str(r[0]) for r in rows)

        if not await self._read(
            "SELECT 1 FROM alert_incidents WHERE status = 'open' AND notified IS NULL LIMIT 1"
        ):
            return []
        return [await self._incident(i) for i in await self._write("alerts", run)]

    async def alert_list(
        self,
        *,
        statuses: Sequence[str] = ("open", "closed"),
        rule: str | None = None,
        limit: int = 100,
    ) -> list[AlertIncident]:
        """Incidents, newest first."""
        where, params = [f"status IN ({','.join('?' * len(statuses))})"], list(statuses)
        if rule is not None:
            where.append("rule = ?")
            params.append(rule)
        rows = await self._read(
            f"SELECT {INCIDENT_COLUMNS} FROM alert_incidents WHERE {' AND '.join(where)} "
            "ORDER BY opened DESC, id DESC LIMIT ?",
            (*params, limit),
        )
        return [_incident(r) for r in rows]

    async def alert_turn(self, interval_seconds: float) -> bool:
        """Take the turn to evaluate alert rules: True for at most one caller (in any process)
        per `interval_seconds`, so N workers evaluate once per interval between them."""

        def run(tx: Tx) -> bool:
            tx.con.execute(
                "INSERT INTO alert_incidents (id, rule, scope, status, summary, opened, updated) "
                "VALUES (?, '', 'turn', 'turn', 'when alert rules were last evaluated', ?, 0) "
                "ON CONFLICT (id) DO NOTHING",
                (TURN_ID, tx.now),
            )
            row = tx.con.execute(
                "UPDATE alert_incidents SET updated = ? WHERE id = ? AND updated <= ? RETURNING id",
                (tx.now, TURN_ID, tx.now - interval_seconds),
            ).fetchone()
            return row is not None

        return await self._write("alerts", run)

    async def _incident(self, incident_id: str) -> AlertIncident:
        rows = await self._read(
            f"SELECT {INCIDENT_COLUMNS} FROM alert_incidents WHERE id = ?", (incident_id,)
        )
        return _incident(rows[0])
