"""A job's events in the SQL store, in order."""

from __future__ import annotations

from stalwart.domain.records import EventRecord
from stalwart.store.sql.base import SqlBase
from stalwart.store.sql.rows import EVENT_COLUMNS, event_from_row


class EventStore(SqlBase):
    """The events part of `SqlStore`."""

    async def event_list(
        self, job_id: str, *, tenant_id: str | None = None, after_id: int = 0, limit: int = 1000
    ) -> list[EventRecord]:
        """A job's events in order."""
        await self.job_get(job_id, tenant_id=tenant_id)
        rows = await self._read(
            f"SELECT {EVENT_COLUMNS} FROM events WHERE job_id = ? AND id > ? ORDER BY id LIMIT ?",
            (job_id, after_id, limit),
        )
        return [event_from_row(r) for r in rows]


__all__ = ["EventStore"]
