"""What there is to do in the SQL store, as the FROM and WHERE of a query each (the templates
below), and `work_due`, which asks all of them at once."""

from __future__ import annotations

from stalwart.store.base import WorkDue
from stalwart.store.sql.base import SqlBase
from stalwart.store.sql.llm import RESERVATION_EXPIRED

# What there is to do, each as the FROM and WHERE of a query. `{now}` is the time: `?` inside a
# write transaction, the backend's clock (`now_sql`) in the cheap reads that decide whether a
# write is worth starting, and in `work_due`, which asks all of them at once.
STEP_WAITING = (
    "FROM steps s JOIN jobs j ON j.id = s.job_id WHERE s.status IN ('ready', 'retry_wait') "
    "AND j.status IN ('executing', 'waiting_approval')"
)
REPLAN_WAITING = (
    "FROM jobs WHERE status IN ('replanning', 'planning') "
    "AND (lease_expires IS NULL OR lease_expires < {now}) "
    "AND NOT EXISTS (SELECT 1 FROM steps s WHERE s.job_id = jobs.id "
    "AND s.plan_version = jobs.plan_version AND s.status = 'running')"
)
LEASE_EXPIRED = "FROM steps WHERE status = 'running' AND lease_expires < {now}"
REVIEW_OVERDUE = "FROM reviews WHERE status = 'pending' AND sla_deadline < {now}"
JOB_EXPIRED = "FROM jobs WHERE deadline IS NOT NULL AND finished IS NULL AND deadline < {now}"


class DueStore(SqlBase):
    """The due part of `SqlStore`."""

    async def work_due(self) -> WorkDue:
        """When the next step is due, and whether any housekeeping is due, in one read."""
        now = self.now_sql
        rows = await self._read(
            f"SELECT {now}, (SELECT min(s.due) {STEP_WAITING}), "
            + ", ".join(
                f"EXISTS (SELECT 1 {where.format(now=now)})"
                for where in (
                    REPLAN_WAITING,
                    LEASE_EXPIRED,
                    REVIEW_OVERDUE,
                    JOB_EXPIRED,
                    RESERVATION_EXPIRED,
                )
            )
        )
        r = rows[0]
        return WorkDue(float(r[0]), r[1], *(bool(v) for v in r[2:7]))


__all__ = ["DueStore"]
