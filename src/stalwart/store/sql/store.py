"""`SqlStore`: the `Store` protocol written once, in SQL that SQLite and PostgreSQL both run.

Each write method builds a function of one `Tx` and hands it to the backend's `_write`, which runs
it in one transaction (BEGIN IMMEDIATE on SQLite; READ COMMITTED with row locks on PostgreSQL)
and commits it with its events, or rolls all of it back. The backends differ in the few places
`Tx` names: the row-lock clauses and the clock. See
docs/decisions/0014-one-sql-store-two-backends.md.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Callable

from stalwart.domain.records import EventRecord
from stalwart.store.base import MigrationStatus
from stalwart.store.sql.access import AccessStore
from stalwart.store.sql.claims import ClaimStore
from stalwart.store.sql.dead_letters import DeadLetterStore
from stalwart.store.sql.due import DueStore
from stalwart.store.sql.jobs import JobStore
from stalwart.store.sql.leases import LeaseStore
from stalwart.store.sql.limits import LimitStore
from stalwart.store.sql.llm import LlmLedger
from stalwart.store.sql.memory import MemoryStore
from stalwart.store.sql.observability import ObservabilityStore
from stalwart.store.sql.plans import PlanStore
from stalwart.store.sql.reviews import ReviewStore
from stalwart.store.sql.rows import EVENT_COLUMNS, event_from_row
from stalwart.store.sql.steps import StepStore
from stalwart.store.sql.workers import WorkerStore


class SqlStore(
    JobStore,
    PlanStore,
    ClaimStore,
    StepStore,
    LeaseStore,
    DueStore,
    LimitStore,
    WorkerStore,
    ReviewStore,
    DeadLetterStore,
    LlmLedger,
    AccessStore,
    ObservabilityStore,
    MemoryStore,
    ABC,
):
    """The `Store` protocol in SQL both backends accept. A backend supplies how a write
    transaction runs (`_write`), how a read runs (`_read`), its migrations, and `now_sql`, the
    SQL expression for the database's clock in epoch seconds."""

    url: str
    wakeups: bool = False

    async def listen(self, wake: Callable[[], None]) -> None:
        """No push notifications here: wait to be cancelled (workers poll)."""
        await asyncio.Event().wait()

    @abstractmethod
    async def migrate(self) -> list[int]:
        """Apply pending migrations; return the versions applied now."""

    @abstractmethod
    async def migration_status(self) -> MigrationStatus:
        """Applied and pending migrations."""

    @abstractmethod
    async def close(self) -> None:
        """Release connections."""

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


__all__ = ["SqlStore"]
